"""Convert a skeleton dataset from one of the supported formats into the internal format.

    python -m feeders.prepare --format ntu --src nturgb+d_skeletons/ --out data/ntu60 \
        --workers 8 [--dtype float16] [format flags; see --format FORMAT --help]

The format's ``scan`` lists the work items; its ``read`` turns each into Records (in a process
pool, order kept); every record is padded/cropped to the source's number of bodies, validated
and appended to a ``StoreWriter``; the splits are computed from the written records at the end.

``--out`` must lie outside ``--src`` (and not contain it), and an existing ``--out`` is
replaced only when it is a dataset directory written by this suite (``feeders.store``).
Pickle sources are read through ``feeders.safe_pickle`` unless ``--trust-pickle``.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from feeders.formats import FORMATS, Source, describe, get_format
from feeders.layouts import get_layout
from feeders.store import (DTYPES, Record, StoreWriter, check_outside, check_replaceable,
                            error_message)
from progress import on_terminal

FLOAT16_MAX = float(np.finfo(np.float16).max)


def fit_bodies(data: np.ndarray, bodies: int) -> np.ndarray:
    """``(T, M, V, C)`` -> ``(T, bodies, V, C)``: zero-pad missing bodies, drop extra ones."""
    if data.shape[1] >= bodies:
        return data[:, :bodies]
    pad = np.zeros((data.shape[0], bodies - data.shape[1], *data.shape[2:]), dtype=data.dtype)
    return np.concatenate([data, pad], axis=1)


def check_record(rec: Record, item, source: Source, joints: int, dtype: str) -> None:
    """Raise ValueError naming the source item when a record does not fit the source."""
    where = f"{item}: record {rec.name!r}"
    data = rec.data
    if not isinstance(data, np.ndarray) or data.ndim != 4:
        raise ValueError(f"{where}: data must be a (T, M, V, C) array, got "
                         f"{getattr(data, 'shape', type(data).__name__)}")
    t, _, v, c = data.shape
    if t < 1:
        raise ValueError(f"{where}: no frames (T=0)")
    if v != joints:
        raise ValueError(f"{where}: {v} joints, expected {joints} (layout "
                         f"{get_layout(source.layout).name})")
    if c != source.channels:
        raise ValueError(f"{where}: {c} channels, expected {source.channels}")
    if not np.isfinite(data).all():
        bad = np.argwhere(~np.isfinite(data))[0]
        raise ValueError(f"{where}: non-finite value at (t, m, v, c) = {tuple(bad.tolist())}")
    if dtype == "float16" and np.abs(data).max() > FLOAT16_MAX:
        raise ValueError(f"{where}: values up to {np.abs(data).max():g} overflow float16; "
                         f"use --dtype float32")
    if not 0 <= int(rec.label) < len(source.class_names):
        raise ValueError(f"{where}: label {rec.label} outside [0, {len(source.class_names)})")


def _read_item(read: Callable, item) -> list[Record]:
    """Run a reader on one item; errors that do not name the item get it as a prefix."""
    try:
        return read(item)
    except Exception as e:
        message = str(e)
        if str(item) in message:
            raise
        raise ValueError(f"{item}: {type(e).__name__}: {message}") from e


def _chunksize(num_items: int, workers: int) -> int:
    return max(1, min(32, num_items // (4 * workers)))


def iter_read(source: Source, workers: int, progress: bool) -> Iterator[tuple[object, list]]:
    """Yield ``(item, records)`` in item order, reading in ``workers`` processes if allowed."""
    read = functools.partial(_read_item, source.read)
    bar = tqdm(total=len(source.items), unit="item", file=sys.stderr,
               disable=not (progress and on_terminal()))  # redirected output: no bar
    try:
        if workers > 1 and source.parallel and len(source.items) > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                chunk = _chunksize(len(source.items), workers)
                for item, recs in zip(source.items, pool.imap(read, source.items, chunk)):
                    bar.update()
                    yield item, recs
        else:
            for item in source.items:
                recs = read(item)
                bar.update()
                yield item, recs
    finally:
        bar.close()


def build_parser(fmt: str | None = None) -> argparse.ArgumentParser:
    """The command line parser; with ``fmt`` it includes that format's own flags."""
    epilog = "formats:\n" + "\n".join(f"  {name:<9} {describe(name)}" for name in FORMATS)
    parser = argparse.ArgumentParser(
        prog="python -m feeders.prepare", description=__doc__.split("\n\n")[0],
        epilog=epilog + "\n\nsee `--format FORMAT --help` for a format's own flags",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=list(FORMATS), help="source format")
    parser.add_argument("--src", required=True, type=Path, help="source file or folder")
    parser.add_argument("--out", required=True, type=Path, help="output dataset directory")
    parser.add_argument("--workers", type=int, default=1, help="reader processes (default 1)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="stored dtype")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="number of classes of the store (pyskl, agcn: default max label "
                             "+ 1, refused when far above the labels present; other formats "
                             "define theirs and only accept that number)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load pickle sources (pyskl, agcn labels) with plain pickle.load, "
                             "which can run any code the file names: only for files you trust "
                             "that the restricted loader refuses")
    if fmt is not None:
        group = parser.add_argument_group(f"{fmt} options")
        get_format(fmt).add_arguments(group)
    return parser


def run(opts: argparse.Namespace, progress: bool = False) -> dict:
    """Convert ``opts.src`` (format ``opts.format``) into ``opts.out``; returns a summary."""
    start = time.perf_counter()
    if opts.num_classes is not None and opts.num_classes < 1:
        raise ValueError(f"--num-classes must be >= 1, got {opts.num_classes}")
    check_outside(opts.out, opts.src)
    check_replaceable(opts.out)  # fail before a long conversion, again before the replace
    source = get_format(opts.format).scan(Path(opts.src), opts)
    if not source.items:
        raise ValueError(f"{opts.src}: nothing to convert (no {opts.format} items found)")
    if opts.num_classes is not None and opts.num_classes != len(source.class_names):
        raise ValueError(f"--num-classes {opts.num_classes}: the {opts.format} source defines "
                         f"{len(source.class_names)} classes")
    layout = get_layout(source.layout)
    joints = layout.num_joints
    metas, skipped = [], 0
    with StoreWriter(opts.out, layout, len(source.class_names), source.class_names,
                     source.channels, source.bodies, dtype=opts.dtype,
                     source_format=opts.format, layout_source=source.layout_source) as writer:
        for item, recs in iter_read(source, opts.workers, progress):
            skipped += not recs
            for rec in recs:
                check_record(rec, item, source, joints, opts.dtype)
                rec = rec._replace(data=fit_bodies(rec.data, source.bodies))
                writer.add(rec, source=str(item))
                metas.append(rec._replace(data=None, frame_arrays=None))
        if not metas:
            raise ValueError(f"{opts.src}: no sequences read from {len(source.items)} items "
                             f"(all skipped)")
        splits = source.make_splits(metas)
        writer.close(splits)
    seconds = time.perf_counter() - start
    return {"out": str(opts.out), "format": opts.format, "items": len(source.items),
            "skipped_items": skipped, "num_sequences": len(metas),
            "total_frames": writer.total_frames,
            "num_classes": len(source.class_names),
            "splits": {name: len(idx) for name, idx in splits.items()},
            "seconds": seconds, "sequences_per_second": len(metas) / seconds}


def prepare(format: str, src, out, **opts) -> dict:
    """Python entry point: ``prepare('ntu', src, out, workers=2, benchmark='ntu60')``.

    Keyword arguments are the command line flags with dashes as underscores.
    """
    ns = build_parser(format).parse_args(["--format", format, "--src", str(src),
                                          "--out", str(out)])
    for key, value in opts.items():
        if not hasattr(ns, key):
            raise TypeError(f"prepare(): unknown option {key!r} for format {format!r}; "
                            f"known: {sorted(vars(ns))}")
        setattr(ns, key, value)
    return run(ns)


def format_summary(summary: dict) -> str:
    splits = ", ".join(f"{k} {v}" for k, v in summary["splits"].items()) or "none"
    return (f"wrote {summary['out']}: {summary['num_sequences']} sequences, "
            f"{summary['total_frames']} frames, {summary['num_classes']} classes "
            f"from {summary['items']} {summary['format']} items "
            f"({summary['skipped_items']} skipped)\n"
            f"splits: {splits}\n"
            f"time: {summary['seconds']:.1f} s ({summary['sequences_per_second']:.1f} "
            f"sequences/s)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    fmt_parser = argparse.ArgumentParser(add_help=False)
    fmt_parser.add_argument("--format", choices=list(FORMATS))
    known, _ = fmt_parser.parse_known_args(argv)
    parser = build_parser(known.format)
    opts = parser.parse_args(argv)
    try:
        summary = run(opts, progress=True)
    except (ValueError, OSError) as e:
        parser.error(error_message(e))
    print(format_summary(summary))


if __name__ == "__main__":
    main()

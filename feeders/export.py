"""Export a dataset directory to other formats (for now the pyskl annotation pickle).

    python -m feeders.export --to pyskl --src DIR --out FILE.pkl

Each sequence becomes one pyskl annotation: ``frame_dir`` (the sequence name), ``label``,
``total_frames`` and ``keypoint`` float16 ``(M, T, V, C)``. For 2D data with a confidence
channel (layouts coco17 / openpose18 / penn13 with 3 channels) the last channel is written as
``keypoint_score`` float16 ``(M, T, V)`` and ``keypoint`` keeps ``(x, y)``. The store's named
splits become the ``split`` dict (frame_dir lists, in the store's order).

The pickle's first key is ``created_by`` (``feeders.export (pyskl)``; pyskl ignores extra
keys): an existing ``--out`` is replaced only when its first bytes carry that mark, i.e. when
it is a file this exporter wrote; any other file, a directory, or an ``--out`` inside ``--src``
is refused. Leftover ``<out>.tmp-<pid>`` files of killed exports are removed.

Bodies: a store pads every sequence to the same M with all-zero bodies. The export trims
*trailing* bodies that are zero in every frame, joint and channel, keeping at least one, so a
one-body pyskl sample in a two-body store comes back with M = 1. (A source body that is itself
all zeros and last is trimmed as well: such a body carries no data.)
"""
from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import numpy as np

from feeders.store import (OutputError, check_outside, clean_leftovers, error_message,
                            open_store)

TWO_D_LAYOUTS = ("coco17", "openpose18", "penn13")
CREATED_BY = "feeders.export (pyskl)"
_MARK_BYTES = 256  # the mark is within the first bytes of every pickle written here


def check_replaceable_file(out: Path) -> None:
    """Raise OutputError unless ``out`` is absent or a pickle this exporter wrote."""
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise OutputError(f"{out}: exists and is not a file; refusing to replace it")
    if out.is_file():
        with open(out, "rb") as f:
            head = f.read(_MARK_BYTES)
        if CREATED_BY.encode() not in head:
            raise OutputError(f"{out}: exists and was not written by feeders.export (no "
                              f"'{CREATED_BY}' mark); refusing to replace it (choose another "
                              f"--out or move it away yourself)")


def trim_padding_bodies(data: np.ndarray) -> np.ndarray:
    """``(T, M, V, C)`` -> ``(T, M', V, C)`` without trailing all-zero bodies (M' >= 1)."""
    present = np.abs(data).reshape(data.shape[0], data.shape[1], -1).max(axis=(0, 2)) > 0
    kept = int(np.flatnonzero(present)[-1]) + 1 if present.any() else 1
    return data[:, :kept]


def to_annotation(name: str, label: int, data: np.ndarray, score_channel: bool) -> dict:
    """One sequence ``(T, M, V, C)`` -> a pyskl annotation dict."""
    kp = trim_padding_bodies(np.asarray(data)).transpose(1, 0, 2, 3)  # (M, T, V, C)
    ann = {"frame_dir": str(name), "label": int(label), "total_frames": int(kp.shape[1])}
    if score_channel:
        ann["keypoint"] = np.ascontiguousarray(kp[..., :-1], dtype=np.float16)
        ann["keypoint_score"] = np.ascontiguousarray(kp[..., -1], dtype=np.float16)
    else:
        ann["keypoint"] = np.ascontiguousarray(kp, dtype=np.float16)
    return ann


def to_pyskl(store_dir, out_path, score_channel: bool | None = None) -> Path:
    """Write the dataset at ``store_dir`` as a pyskl pickle at ``out_path`` (atomically).

    ``score_channel=None`` decides from the store: 2D layout with 3 channels -> score.
    """
    out_path = Path(out_path)
    check_outside(out_path, store_dir)
    clean_leftovers(out_path)
    check_replaceable_file(out_path)
    store = open_store(store_dir)
    if score_channel is None:
        score_channel = store.layout.name in TWO_D_LAYOUTS and store.channels == 3
    if score_channel and store.channels < 2:
        raise ValueError(f"{store_dir}: {store.channels} channel(s), cannot split off a score")
    names = [str(n) for n in store.names]
    annotations = [to_annotation(names[i], store.labels[i], store.sequence(i), score_channel)
                   for i in range(len(store))]
    splits = {split: [names[i] for i in idx] for split, idx in store.splits.items()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f"{out_path.name}.tmp-{os.getpid()}")
    content = {"created_by": CREATED_BY, "split": splits, "annotations": annotations}
    try:
        with open(tmp, "wb") as f:
            try:
                pickle.dump(content, f, protocol=pickle.HIGHEST_PROTOCOL)
            except OSError as e:  # a file write does not name its file
                raise OSError(e.errno, e.strerror, str(tmp)) from e
        check_replaceable_file(out_path)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m feeders.export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--to", required=True, choices=["pyskl"], help="output format")
    parser.add_argument("--src", required=True, type=Path, help="dataset directory")
    parser.add_argument("--out", required=True, type=Path, help="output file (.pkl)")
    score = parser.add_mutually_exclusive_group()
    score.add_argument("--score", dest="score_channel", action="store_true", default=None,
                       help="write the last channel as keypoint_score (default: 2D layouts "
                            "with 3 channels)")
    score.add_argument("--no-score", dest="score_channel", action="store_false",
                       help="write every channel into keypoint")
    args = parser.parse_args(argv)
    try:
        out = to_pyskl(args.src, args.out, args.score_channel)
    except (ValueError, OSError) as e:
        parser.error(error_message(e))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Export a dataset directory to other formats (for now the pyskl annotation pickle).

    python -m feeders.export --to pyskl --src DIR --out FILE.pkl [--img-shape H W]

Each sequence becomes one pyskl annotation with pyskl's types: ``frame_dir`` (the sequence
name, str), ``label`` (int), ``total_frames`` (int) and ``keypoint`` float32 ``(M, T, V, C)``.
For 2D data with a confidence channel (a 2D layout, ``layout.dims == 2``, with 3 channels) the
last channel is written as ``keypoint_score`` float32 ``(M, T, V)`` and ``keypoint`` keeps
``(x, y)``. 2D annotations also get ``img_shape`` and ``original_shape`` ``(height, width)``
(pyskl's pose pipelines read them): ``--img-shape H W`` when given, else the store manifest's
``img_shape`` when it records one, else the extent of the sequence's coordinates
(ceil(max y) + 1, ceil(max x) + 1), which is what pyskl's own 2D files hold for frames whose
keypoints span the image (coordinates normalised to [0, 1] give (2, 2)). The store's named
splits become the ``split`` dict (frame_dir lists, in the store's order).

The pickle loads with plain ``pickle.load`` under numpy 1.x and 2.x: it uses protocol 4 and
references numpy's array constructor by its numpy-1 name ``numpy.core.multiarray._reconstruct``
(numpy 2 still resolves that name; numpy 2's own pickles name ``numpy._core``, which numpy 1
cannot import). ``dump_portable_pickle`` writes any such object for other tools.

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
import math
import os
import pickle
from pathlib import Path

import numpy as np

from feeders.store import (OutputError, check_outside, clean_leftovers, error_message,
                            open_store)
from progress import progress_bar

try:  # numpy 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct

NUMPY1_MODULE = "numpy.core.multiarray"
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


def coordinate_extent(keypoint: np.ndarray) -> tuple[int, int]:
    """(height, width) covering 2D keypoints ``(M, T, V, >=2)`` (x, y): (ceil(max y) + 1,
    ceil(max x) + 1), at least (1, 1)."""
    if keypoint.size == 0:
        return (1, 1)
    x_max, y_max = (float(np.nanmax(keypoint[..., c])) for c in (0, 1))
    return (max(1, math.ceil(y_max) + 1), max(1, math.ceil(x_max) + 1))


def to_annotation(name: str, label: int, data: np.ndarray, score_channel: bool,
                  two_d: bool = False, img_shape: tuple[int, int] | None = None) -> dict:
    """One sequence ``(T, M, V, C)`` -> a pyskl annotation dict (keypoint float32 (M, T, V, C'),
    keypoint_score float32 (M, T, V) with ``score_channel``, img_shape / original_shape
    (height, width) for 2D data: ``img_shape`` or the coordinates' extent)."""
    kp = trim_padding_bodies(np.asarray(data)).transpose(1, 0, 2, 3)  # (M, T, V, C)
    ann = {"frame_dir": str(name), "label": int(label), "total_frames": int(kp.shape[1])}
    if score_channel:
        ann["keypoint"] = np.ascontiguousarray(kp[..., :-1], dtype=np.float32)
        ann["keypoint_score"] = np.ascontiguousarray(kp[..., -1], dtype=np.float32)
    else:
        ann["keypoint"] = np.ascontiguousarray(kp, dtype=np.float32)
    if two_d:
        shape = (tuple(int(v) for v in img_shape) if img_shape
                 else coordinate_extent(ann["keypoint"]))
        ann["img_shape"] = ann["original_shape"] = shape
    return ann


class _Numpy1Pickler(pickle._Pickler):
    """The pure-Python pickler, naming numpy's array constructor as numpy 1 does."""

    def save_global(self, obj, name=None):
        if obj is _reconstruct and _reconstruct.__module__ != NUMPY1_MODULE:
            self.save(NUMPY1_MODULE)  # protocol 4: module and name strings, then STACK_GLOBAL
            self.save("_reconstruct")
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
            return
        super().save_global(obj, name)


def dump_portable_pickle(obj, file) -> None:
    """Pickle ``obj`` (dicts, lists, str, int, float, numpy arrays) to the binary ``file`` so
    that it loads under numpy 1.x and 2.x (protocol 4, arrays by ``numpy.core.multiarray``)."""
    _Numpy1Pickler(file, protocol=4).dump(obj)


def to_pyskl(store_dir, out_path, score_channel: bool | None = None,
             img_shape: tuple[int, int] | None = None, progress: bool | None = None) -> Path:
    """Write the dataset at ``store_dir`` as a pyskl pickle at ``out_path`` (atomically).

    ``score_channel=None`` decides from the store: 2D layout with 3 channels -> score.
    ``img_shape`` (height, width) of 2D data: None takes the manifest's, else each
    sequence's coordinate extent. ``progress``: a tqdm bar (None: on a terminal).
    """
    out_path = Path(out_path)
    check_outside(out_path, store_dir)
    clean_leftovers(out_path)
    check_replaceable_file(out_path)
    store = open_store(store_dir)
    if score_channel is None:
        score_channel = store.layout.dims == 2 and store.channels == 3
    if score_channel and store.channels < 2:
        raise ValueError(f"{store_dir}: {store.channels} channel(s), cannot split off a score")
    if img_shape is not None and (len(img_shape) != 2 or min(img_shape) < 1):
        raise ValueError(f"img_shape must be (height, width) >= 1, got {img_shape}")
    two_d = store.layout.dims == 2
    img_shape = img_shape or store.manifest.get("img_shape")
    names = [str(n) for n in store.names]
    annotations = [to_annotation(names[i], store.labels[i], store.sequence(i), score_channel,
                                 two_d, img_shape)
                   for i in progress_bar(range(len(store)), desc="export", unit="seq",
                                         enable=progress)]
    splits = {split: [names[i] for i in idx] for split, idx in store.splits.items()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f"{out_path.name}.tmp-{os.getpid()}")
    content = {"created_by": CREATED_BY, "split": splits, "annotations": annotations}
    try:
        with open(tmp, "wb") as f:
            try:
                dump_portable_pickle(content, f)
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
    parser.add_argument("--img-shape", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="2D data: img_shape / original_shape of every annotation (default: "
                             "the store's, else each sequence's coordinate extent)")
    args = parser.parse_args(argv)
    if args.img_shape is not None and min(args.img_shape) < 1:
        parser.error(f"--img-shape must be two sizes >= 1, got {args.img_shape}")
    try:
        out = to_pyskl(args.src, args.out, args.score_channel, args.img_shape)
    except (ValueError, OSError) as e:
        parser.error(error_message(e))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

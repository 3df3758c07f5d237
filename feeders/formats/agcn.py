"""2s-AGCN / UmURL / USDRL / AimCLR ``.npy`` + ``.pkl`` (docs/DATA.md §1.4).

A folder with, per split ``train`` and ``val``: ``<split>_data_joint.npy`` ``(N, C, T, V, M)``
(NTU: ``(N, 3, 300, 25, 2)``, zero-padded in time), ``<split>_label.pkl`` = the pickled pair
``(sample_names, labels)`` (0-based) and optionally ``<split>_num_frame.npy`` ``(N,)`` (valid
frames). Without num_frame the valid length is the number of frames up to the last non-zero
one. The data files are memory-mapped and read one sample at a time in ``read``.

Splits ``train`` / ``val`` (or ``<split-name>_train`` / ``_val``); names from the label files.
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from feeders import safe_pickle
from feeders.formats import Source
from feeders.formats.ctrgcn import split_names, splits_by_name, valid_length
from feeders.formats.pyskl import label_class_names, ntu_meta
from feeders.layouts import get_layout
from feeders.store import Record

SPLITS = ("train", "val")


class Sample(NamedTuple):
    """Sample ``row`` of ``data_path``; ``num_frames`` None when no num_frame file exists."""

    data_path: Path
    row: int
    label: int
    name: str
    num_frames: int | None

    def __str__(self) -> str:
        return f"{self.data_path}: sample {self.row} ({self.name})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", default=None,
                        help="joint layout: a built-in name or a layout JSON file (python -m "
                             "feeders.layouts NAME prints a template); default ntu25")
    parser.add_argument("--split-name", default="",
                        help="prefix of the split names, e.g. xsub -> xsub_train / xsub_val")
    parser.add_argument("--class-names", type=Path, default=None,
                        help="text file with one class name per line (default: class_000... "
                             "up to the largest label)")


def read(item: Sample) -> list[Record]:
    """One sample ``(C, T, V, M)`` of the memmap -> one Record ``(T', M, V, C)``."""
    x = np.load(item.data_path, mmap_mode="r")[item.row]  # (C, T, V, M)
    length = item.num_frames or valid_length(x.transpose(1, 0, 2, 3))
    if length == 0:
        raise ValueError(f"{item}: all zeros (no valid frame)")
    data = np.array(x[:, :length].transpose(1, 3, 2, 0), dtype=np.float32)
    if not np.isfinite(data).all():
        raise ValueError(f"{item}: contains NaN or infinite values")
    return [Record(name=item.name, label=item.label, data=data, **ntu_meta(item.name))]


def load_labels(path: Path, count: int, trusted: bool = False) -> tuple[list[str], np.ndarray]:
    """``(names, labels)`` from a label pickle (``feeders.safe_pickle``), checked against
    ``count`` samples."""
    if not path.is_file():
        raise ValueError(f"{path}: label file not found (each <split>_data_joint.npy needs "
                         f"its <split>_label.pkl)")
    content = safe_pickle.load(path, trusted)
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise ValueError(f"{path}: expected the pair (sample_names, labels), got "
                         f"{type(content).__name__}")
    names, labels = [str(n) for n in content[0]], np.asarray(content[1])
    if len(names) != count or labels.shape != (count,):
        raise ValueError(f"{path}: {len(names)} names and {labels.shape} labels, expected "
                         f"{count} (the data file's N)")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels must be integers >= 0, got {labels.dtype} values")
    if (labels < 0).any():
        raise ValueError(f"{path}: labels must be integers >= 0, got min {labels.min()}")
    return names, labels.astype(np.int64)


def load_num_frames(path: Path, count: int, max_frames: int) -> np.ndarray | None:
    """``(N,)`` valid frame counts in [1, T], or None when the file does not exist."""
    if not path.is_file():
        return None
    nf = np.load(path)
    if nf.shape != (count,) or nf.dtype.kind not in "iu":
        raise ValueError(f"{path}: expected {count} integer frame counts, got {nf.dtype} "
                         f"{nf.shape}")
    bad = np.flatnonzero((nf < 1) | (nf > max_frames))
    if bad.size:
        raise ValueError(f"{path}: sample {bad[0]} has {nf[bad[0]]} frames, expected 1.."
                         f"{max_frames}")
    return nf


def _data_shape(path: Path, joints: int) -> tuple[int, ...]:
    try:
        shape = np.load(path, mmap_mode="r").shape
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable .npy file ({e})") from None
    if len(shape) != 5 or shape[3] != joints:
        raise ValueError(f"{path}: shape {shape}, expected (N, C, T, V={joints}, M)")
    return shape


def scan(src: Path, opts) -> Source:
    src = Path(src)
    present = [s for s in SPLITS if (src / f"{s}_data_joint.npy").is_file()]
    if not present:
        raise ValueError(f"{src}: no train_data_joint.npy or val_data_joint.npy found")
    layout = get_layout(opts.layout or "ntu25")
    joints = layout.num_joints
    split_of, items, frame_shape = {}, [], None
    names_of_split = split_names(opts.split_name)
    for split in present:
        data_path = src / f"{split}_data_joint.npy"
        n, c, t, _, m = _data_shape(data_path, joints)
        if frame_shape not in (None, (m, joints, c)):
            raise ValueError(f"{data_path}: (M, V, C) = {(m, joints, c)} differs from the "
                             f"other split's {frame_shape}")
        frame_shape = (m, joints, c)
        names, labels = load_labels(src / f"{split}_label.pkl", n, opts.trust_pickle)
        num_frames = load_num_frames(src / f"{split}_num_frame.npy", n, t)
        for row, (name, label) in enumerate(zip(names, labels)):
            if name in split_of:
                raise ValueError(f"{src / f'{split}_label.pkl'}: sample name {name!r} "
                                 f"appears twice")
            split_of[name] = names_of_split[split]
            items.append(Sample(data_path, row, int(label), name,
                                None if num_frames is None else int(num_frames[row])))
    class_names = label_class_names([s.label for s in items], src, opts.class_names,
                                    opts.num_classes)
    return Source(layout=layout, layout_source="declared" if opts.layout else "format",
                  channels=frame_shape[2], bodies=frame_shape[0],
                  class_names=class_names, items=items, read=read, parallel=True,
                  make_splits=partial(splits_by_name, split_of))

"""Penn Action label files, one ``.mat`` per sequence (docs/DATA.md §1.8).

Fields read: ``x``, ``y``, ``visibility`` (T x 13, pixel coordinates and 0/1 flags), ``action``
(class name) and ``train`` (1 train, -1 test); ``bbox``, ``dimensions`` and ``nframes`` are not
used (``bbox`` is one row short in two of the released files). Layout ``penn13``, 1 body,
channels (x, y, visibility) or (x, y) with ``--no-visibility``. Class names are the sorted
action strings; splits ``train`` / ``val`` from the ``train`` flag; names are the file stems.
``--src`` is the folder of ``.mat`` files or its parent holding ``labels/``.
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.io
import scipy.io.matlab

from feeders.formats import Source, find_files
from feeders.formats.ctrgcn import splits_by_name
from feeders.layouts import get_layout
from feeders.store import Record

LAYOUT = "penn13"


class MatFile(NamedTuple):
    path: Path
    label: int
    visibility: bool

    def __str__(self) -> str:
        return str(self.path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-visibility", dest="visibility", action="store_false",
                        help="store (x, y) only instead of (x, y, visibility)")


def load_mat(path: Path, fields: list[str]) -> dict:
    """The named variables of a ``.mat`` file, each required."""
    try:
        content = scipy.io.loadmat(path, variable_names=fields)
    except (ValueError, OSError, TypeError, IndexError, scipy.io.matlab.MatReadError) as e:
        raise ValueError(f"{path}: not a readable .mat file ({type(e).__name__}: {e})") from None
    for field in fields:
        if field not in content:
            raise ValueError(f"{path}: field {field!r} missing (not a Penn Action label "
                             f"file, or truncated)")
    return content


def action_and_split(path: Path) -> tuple[str, str]:
    """(action name, 'train' or 'val') of one file, from its ``action`` and ``train`` fields."""
    content = load_mat(path, ["action", "train"])
    action, train = content["action"], np.asarray(content["train"]).reshape(-1)
    if action.dtype.kind != "U" or action.size != 1 or not str(action[0]).strip():
        raise ValueError(f"{path}: field 'action' must be one non-empty string, got "
                         f"{action.dtype} {action.shape}")
    if train.size != 1 or int(train[0]) not in (1, -1):
        raise ValueError(f"{path}: field 'train' must be 1 or -1, got {train.tolist()}")
    return str(action[0]).strip(), "train" if int(train[0]) == 1 else "val"


def joints_array(path: Path, visibility: bool) -> np.ndarray:
    """One file -> ``(T, 1, 13, C)`` float32, C = 3 (x, y, visibility) or 2."""
    joints = get_layout(LAYOUT).num_joints
    content = load_mat(path, ["x", "y", "visibility"])
    arrays = [np.asarray(content[f]) for f in ("x", "y", "visibility")]
    for field, a in zip(("x", "y", "visibility"), arrays):
        if a.ndim != 2 or a.shape[1] != joints or a.shape[0] < 1 or a.shape != arrays[0].shape:
            raise ValueError(f"{path}: field {field!r} has shape {a.shape}, expected "
                             f"(T>=1, {joints}) like 'x' {arrays[0].shape}")
    if not np.isin(arrays[2], (0, 1)).all():
        raise ValueError(f"{path}: field 'visibility' must hold 0/1 values, got "
                         f"{np.unique(arrays[2])[:5].tolist()}")
    data = np.stack(arrays if visibility else arrays[:2], axis=-1).astype(np.float32)
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: fields 'x'/'y' contain NaN or infinite values")
    return data[:, None]


def read(item: MatFile) -> list[Record]:
    return [Record(name=item.path.stem, label=item.label,
                   data=joints_array(item.path, item.visibility))]


def scan(src: Path, opts) -> Source:
    files = find_files(src, "labels", "*.mat", "Penn Action")
    found = {path: action_and_split(path) for path in files}
    class_names = sorted({action for action, _ in found.values()})
    index = {name: k for k, name in enumerate(class_names)}
    items = [MatFile(path, index[action], opts.visibility)
             for path, (action, _) in found.items()]
    split_of = {path.stem: split for path, (_, split) in found.items()}
    return Source(layout=LAYOUT, channels=3 if opts.visibility else 2, bodies=1,
                  class_names=class_names, items=items, read=read, parallel=True,
                  make_splits=partial(splits_by_name, split_of))

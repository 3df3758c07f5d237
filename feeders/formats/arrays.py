"""A folder of numpy arrays: ``NAME.npy`` ``(T, V, C)`` or ``(T, M, V, C)`` + ``labels.csv``.

The simplest path from any other tool: save one array per sequence (frames first; ``(T, V, C)``
is one body) and list them in ``labels.csv`` with the header ``name,label[,split]``::

    name,label,split
    clip_001,wave,train
    clip_002,jump,val

``name`` is the file name without ``.npy``; ``label`` is a class name or a 0-based index; the
optional ``split`` column names the split of each sequence (``train``/``val``, ``xsub_train``,
...; an empty cell puts it in none). An optional ``classes.txt`` (one class name per line)
fixes the class order; without it integer labels give ``class_000, ...`` and class names are
sorted alphabetically. Every ``.npy`` file of the folder must be listed.

Layout: ``--layout NAME | FILE.json``; without it the one built-in layout with V joints whose
coordinates fit C channels (C=2: 2D; C=3: 3D or 2D + confidence; C=4: 3D + confidence) is used,
with a warning, and several or no candidates stop the conversion.
"""
from __future__ import annotations

import argparse
import csv
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from feeders.formats import Source
from feeders.formats.pyskl import label_class_names, read_class_names
from feeders.layouts import choose_layout
from feeders.store import Record

LABELS_FILE = "labels.csv"
CLASSES_FILE = "classes.txt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", default=None,
                        help="joint layout: a built-in name or a layout JSON file (python -m "
                             "feeders.layouts NAME prints a template); default: the one "
                             "built-in layout that fits V and C, else an error")
    parser.add_argument("--max-bodies", type=int, default=None,
                        help="bodies M kept per sequence (default: the largest M of the files)")


def coordinate_dims(channels: int, where: str) -> tuple[int, ...]:
    """Coordinate dimensions that ``channels`` values per joint can hold (coordinates, then
    an optional confidence): 2 -> (2,), 3 -> (3, 2), 4 -> (3,)."""
    dims = tuple(d for d in (3, 2) if channels in (d, d + 1))
    if not dims:
        raise ValueError(f"{where}: {channels} values per joint; expected 2 (x, y), 3 (x, y, z "
                         f"or x, y, score) or 4 (x, y, z, score)")
    return dims


def read_labels_csv(path: Path, key: str) -> list[tuple[str, str, str]]:
    """Rows ``(key, label, split)`` of a CSV with the header ``key,label[,split]`` ('' when
    there is no split column); errors name the file and the line."""
    if not path.is_file():
        raise ValueError(f"{path}: labels file not found (a CSV with the header "
                         f"{key},label[,split])")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = [h.strip() for h in rows[0]] if rows else []
    if header not in ([key, "label"], [key, "label", "split"]):
        raise ValueError(f"{path}: line 1 must be the header {key},label or {key},label,split; "
                         f"got {','.join(header) or 'nothing'}")
    out, seen = [], set()
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}: line {line} has {len(row)} fields, expected "
                             f"{len(header)} ({','.join(header)})")
        name, label = row[0].strip(), row[1].strip()
        if not name or not label:
            raise ValueError(f"{path}: line {line}: empty {key if not name else 'label'}")
        if name in seen:
            raise ValueError(f"{path}: line {line}: {key} {name!r} listed twice")
        seen.add(name)
        out.append((name, label, row[2].strip() if len(row) == 3 else ""))
    if not out:
        raise ValueError(f"{path}: no rows after the header")
    return out


def resolve_labels(labels: list[str], classes_file: Path | None, where: Path,
                   num_classes: int | None = None) -> tuple[list[int], list[str]]:
    """Label cells -> (0-based labels, class names). With a classes file a cell is one of its
    names or an index into it; without, all-integer cells index ``class_000, ...`` (as many as
    ``--num-classes`` or, checked by ``label_class_names``, max label + 1) and names become
    classes sorted alphabetically."""
    if classes_file is not None:
        names = read_class_names(classes_file)
        index = {n: k for k, n in enumerate(names)}
        out = []
        for cell in labels:
            if cell in index:
                out.append(index[cell])
            elif cell.isdigit() and int(cell) < len(names):
                out.append(int(cell))
            else:
                raise ValueError(f"{where}: label {cell!r} is neither a class of {classes_file} "
                                 f"nor an index in [0, {len(names)})")
        return out, names
    if all(cell.isdigit() for cell in labels):
        ints = [int(cell) for cell in labels]
        return ints, label_class_names(ints, where, None, num_classes)
    names = sorted(set(labels))
    index = {n: k for k, n in enumerate(names)}
    return [index[cell] for cell in labels], names


def make_splits(split_of: dict[str, str], metas: list[Record]) -> dict[str, list[int]]:
    """Each written sequence goes to the split ``split_of[name]`` ('' for none)."""
    out: dict[str, list[int]] = {}
    for i, rec in enumerate(metas):
        if split_of[rec.name]:
            out.setdefault(split_of[rec.name], []).append(i)
    return out


class Item(NamedTuple):
    """One array file; ``str(item)`` is its path."""

    path: Path
    name: str
    label: int

    def __str__(self) -> str:
        return str(self.path)


def load_array(path: Path) -> np.ndarray:
    """The array of ``path`` as float32 ``(T, M, V, C)`` (a ``(T, V, C)`` file is one body)."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({e})") from None
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.dtype.kind not in "fiu":
        raise ValueError(f"{path}: expected a numeric array (T, V, C) or (T, M, V, C), got "
                         f"{x.dtype} {x.shape}")
    return x.astype(np.float32)


def read(item: Item) -> list[Record]:
    return [Record(name=item.name, label=item.label, data=load_array(item.path))]


def _shape(path: Path) -> tuple[int, ...]:
    """``(T, M, V, C)`` of an array file, from its header only."""
    try:
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({e})") from None
    if len(shape) == 3:
        shape = (shape[0], 1, *shape[1:])
    if len(shape) != 4 or 0 in shape:
        raise ValueError(f"{path}: shape {shape}, expected (T, V, C) or (T, M, V, C) with "
                         f"no empty dimension")
    return shape


def scan(src: Path, opts) -> Source:
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"{src}: folder of .npy arrays not found")
    rows = read_labels_csv(src / LABELS_FILE, "name")
    names = [n[:-4] if n.endswith(".npy") else n for n, _, _ in rows]
    unlisted = sorted(set(p.stem for p in src.glob("*.npy")) - set(names))
    if unlisted:
        raise ValueError(f"{src}: {len(unlisted)} .npy files not listed in {LABELS_FILE}, e.g. "
                         f"{unlisted[:3]}")
    classes = src / CLASSES_FILE
    labels, class_names = resolve_labels([r[1] for r in rows],
                                         classes if classes.is_file() else None,
                                         src / LABELS_FILE, opts.num_classes)
    paths = [src / f"{n}.npy" for n in names]
    for path in paths:
        if not path.is_file():
            raise ValueError(f"{src / LABELS_FILE}: lists {path.stem!r}, but {path} is missing")
    shapes = [_shape(p) for p in paths]
    for path, shape in zip(paths, shapes):
        if shape[2:] != shapes[0][2:]:
            raise ValueError(f"{path}: (V, C) = {shape[2:]}, but {paths[0].name} has "
                             f"{shapes[0][2:]}")
    joints, channels = shapes[0][2:]
    layout, layout_source = choose_layout(opts.layout, joints,
                                          coordinate_dims(channels, str(paths[0])), str(src))
    bodies = opts.max_bodies or max(s[1] for s in shapes)
    return Source(layout=layout, channels=channels, bodies=bodies, class_names=class_names,
                  items=[Item(p, n, k) for p, n, k in zip(paths, names, labels)], read=read,
                  parallel=True, make_splits=partial(make_splits, {n: r[2] for n, r in zip(names, rows)}),
                  layout_source=layout_source)

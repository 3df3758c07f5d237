"""CTR-GCN / SGN / MAMP ``.npz`` (docs/DATA.md §1.3).

Arrays: ``x_train`` ``(N, T, M*V*C)`` float32, zero-padded in time (NTU: ``(N, 300, 150)``, per
frame body 1's 25 x 3 values then body 2's), ``y_train`` ``(N, K)`` one-hot, ``x_test``,
``y_test``. The valid length of a sample is the number of frames up to its last non-zero frame;
each frame is reshaped to ``(M, V, C)`` with V from the layout and C from ``--channels``.

Splits: ``train`` (x_train) and ``val`` (x_test), or ``<split-name>_train`` / ``_val``. Names
``train_00000`` / ``test_00000`` (source array and row).

The x arrays are never loaded whole: ``np.load(mmap_mode=...)`` does not memory-map ``.npz``
members, so an uncompressed member (``np.savez``) is memory-mapped at its offset inside the zip
file, and a compressed one (``np.savez_compressed``) is decompressed row by row, front to back
(read in order, ``parallel=False``).
"""
from __future__ import annotations

import argparse
import struct
import zipfile
from functools import lru_cache, partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from feeders.formats import Source
from feeders.formats.pyskl import default_class_names, read_class_names
from feeders.layouts import get_layout
from feeders.store import Record

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header (30 bytes)
ARRAYS = (("train", "x_train", "y_train"), ("val", "x_test", "y_test"))


class Row(NamedTuple):
    """One sample of an array file: row ``row`` of array ``key`` in ``path``."""

    path: Path
    key: str
    row: int
    label: int
    name: str
    frame_shape: tuple  # (M, V, C)

    def __str__(self) -> str:
        return f"{self.path}: array {self.key!r} row {self.row}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", default=None,
                        help="joint layout: a built-in name or a layout JSON file (python -m "
                             "feeders.layouts NAME prints a template); default ntu25")
    parser.add_argument("--channels", type=int, default=3,
                        help="values per joint in each flattened frame (default 3)")
    parser.add_argument("--split-name", default="",
                        help="prefix of the split names, e.g. xsub -> xsub_train / xsub_val")
    parser.add_argument("--class-names", type=Path, default=None,
                        help="text file with one class name per line")


def valid_length(x: np.ndarray) -> int:
    """Frames up to and including the last frame with a non-zero value; ``x`` is ``(T, ...)``."""
    nonzero = np.flatnonzero(np.asarray(x).reshape(x.shape[0], -1).any(axis=1))
    return int(nonzero[-1]) + 1 if nonzero.size else 0


def split_names(prefix: str) -> dict[str, str]:
    """``train``/``val`` -> the split names written (``xsub`` -> ``xsub_train``...)."""
    return {s: f"{prefix}_{s}" if prefix else s for s in ("train", "val")}


def splits_by_name(split_of: dict[str, str], metas: list[Record]) -> dict[str, list[int]]:
    """Group written records into splits with a name -> split mapping built in ``scan``."""
    out: dict[str, list[int]] = {s: [] for s in sorted(set(split_of.values()))}
    for i, rec in enumerate(metas):
        out[split_of[rec.name]].append(i)
    return out


def _member_layout(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype, int | None]:
    """Shape, dtype and absolute data offset of ``key.npy`` in an npz (offset None if compressed)."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(f"{key}.npy")
            with zf.open(info) as member:
                version = np.lib.format.read_magic(member)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = header(member)
                header_bytes = member.tell()
    except KeyError:
        raise ValueError(f"{path}: array {key!r} missing") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: array {key!r} unreadable ({type(e).__name__}: {e})") from None
    if fortran:
        raise ValueError(f"{path}: array {key!r} is Fortran-ordered, expected C order")
    if info.compress_type != zipfile.ZIP_STORED:
        return tuple(shape), np.dtype(dtype), None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
    name_len, extra_len = fields[-2], fields[-1]
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + header_bytes
    return tuple(shape), np.dtype(dtype), start


class _NpzRows:
    """Row access ``rows[i]`` to one npz member without loading the whole array."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        self.shape, self.dtype, offset = _member_layout(path, key)
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._memmap = None
        self._stream = None
        if offset is not None:
            self._memmap = np.memmap(path, dtype=self.dtype, mode="r", offset=offset,
                                     shape=self.shape)

    def _open_stream(self):
        if self._stream is not None:
            self._stream.close()
            self._zip.close()
        self._zip = zipfile.ZipFile(self.path)
        self._stream = self._zip.open(f"{self.key}.npy")
        version = np.lib.format.read_magic(self._stream)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        header(self._stream)
        self._data_start = self._stream.tell()

    def __getitem__(self, i: int) -> np.ndarray:
        if self._memmap is not None:
            return np.array(self._memmap[i])
        target = None if self._stream is None else self._data_start + i * self.row_bytes
        if target is None or self._stream.tell() > target:  # compressed: only forward is cheap
            self._open_stream()
            target = self._data_start + i * self.row_bytes
        self._stream.seek(target)
        buf = self._stream.read(self.row_bytes)
        if len(buf) != self.row_bytes:
            raise ValueError(f"{self.path}: array {self.key!r} truncated at row {i}")
        return np.frombuffer(buf, dtype=self.dtype).reshape(self.shape[1:])


@lru_cache(maxsize=4)
def _cached_rows(path: Path, key: str, mtime_ns: int) -> _NpzRows:
    return _NpzRows(path, key)


def npz_rows(path: Path, key: str) -> _NpzRows:
    """Row access to ``key`` in ``path``, cached per process (and per file version), so a
    worker opens each member once."""
    return _cached_rows(path, key, path.stat().st_mtime_ns)


def read(item: Row) -> list[Record]:
    """One row ``(T, M*V*C)`` -> one Record ``(T', M, V, C)`` of its valid frames."""
    x = npz_rows(item.path, item.key)[item.row]
    length = valid_length(x)
    if length == 0:
        raise ValueError(f"{item}: all zeros (no valid frame)")
    data = x[:length].reshape(length, *item.frame_shape).astype(np.float32)
    if not np.isfinite(data).all():
        raise ValueError(f"{item}: contains NaN or infinite values")
    return [Record(name=item.name, label=item.label, data=data)]


def one_hot_labels(y: np.ndarray, path: Path, key: str) -> np.ndarray:
    """``(N, K)`` one-hot -> ``(N,)`` int labels, every row checked."""
    if y.ndim != 2:
        raise ValueError(f"{path}: array {key!r} has shape {y.shape}, expected one-hot (N, K)")
    bad = np.flatnonzero(~((y == 1).sum(axis=1) == 1) | ~(((y == 0) | (y == 1)).all(axis=1)))
    if bad.size:
        raise ValueError(f"{path}: array {key!r} row {bad[0]} is not one-hot "
                         f"({bad.size} bad rows)")
    return y.argmax(axis=1)


def scan(src: Path, opts) -> Source:
    src = Path(src)
    if not src.is_file():
        raise ValueError(f"{src}: CTR-GCN .npz file not found")
    layout = get_layout(opts.layout or "ntu25")
    joints = layout.num_joints
    items, split_of = [], {}
    names = split_names(opts.split_name)
    compressed, num_classes = False, None
    for split, x_key, y_key in ARRAYS:
        shape, _, offset = _member_layout(src, x_key)
        compressed |= offset is None
        if len(shape) != 3 or shape[2] % (joints * opts.channels):
            raise ValueError(f"{src}: array {x_key!r} has shape {shape}, expected (N, T, M*V*C) "
                             f"with V*C = {joints}*{opts.channels}")
        frame_shape = (shape[2] // (joints * opts.channels), joints, opts.channels)
        with np.load(src) as z:
            if y_key not in z.files:
                raise ValueError(f"{src}: array {y_key!r} missing")
            y = z[y_key]
        labels = one_hot_labels(y, src, y_key)
        if len(labels) != shape[0]:
            raise ValueError(f"{src}: {y_key!r} has {len(labels)} rows, {x_key!r} has "
                             f"{shape[0]}")
        width = y.shape[1]
        if num_classes not in (None, width):
            raise ValueError(f"{src}: y_train has {num_classes} classes, y_test {width}")
        num_classes = width
        prefix = x_key[2:]  # "train" / "test"
        for row, label in enumerate(labels):
            name = f"{prefix}_{row:05d}"
            items.append(Row(src, x_key, row, int(label), name, frame_shape))
            split_of[name] = names[split]
    class_names = (read_class_names(opts.class_names, num_classes) if opts.class_names
                   else default_class_names(num_classes))
    return Source(layout=layout, layout_source="declared" if opts.layout else "format",
                  channels=opts.channels, bodies=frame_shape[0],
                  class_names=class_names, items=items, read=read,
                  parallel=not compressed, make_splits=partial(splits_by_name, split_of))

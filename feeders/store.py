"""The internal dataset format: one directory per dataset, read through a memmap.

Directory contents (see docs/design.md, "feeders.store"):

- ``frames.npy``: all frames of all sequences concatenated, ``(total_frames, M, V, C)``
  float32 or float16, opened with ``np.load(mmap_mode='r')``;
- ``index.npz``: per-sequence ``offset`` int64, ``length`` int32, ``label`` int32, ``name`` str,
  ``subject``/``view``/``setup``/``replication`` int32 (-1 when unknown), and one int64 array of
  sequence indices per split under the key ``split/<name>``;
- ``manifest.json``: layout, classes, shapes, dtype, split sizes and sha256 checksums;
- optional per-frame arrays ``<key>.npy`` of shape ``(total_frames, ...)`` aligned with
  ``frames.npy`` (e.g. ``frame_labels`` for PKU-MMD detection). A reader attaches them to a
  ``Record`` as ``frame_arrays={key: array (T, ...)}``; they are listed in the manifest under
  ``frame_arrays`` (key -> dtype and per-frame shape) and read back with
  ``Store.frame_array(key, i)``.

A dataset is written into ``<out>.tmp-<pid>`` and renamed into place only when complete, so a
directory at ``<out>`` is always either the old dataset or the complete new one.

Outputs never destroy what the suite did not write (``check_replaceable``): an existing
``<out>`` is replaced only when it is a dataset directory written here (its ``manifest.json``
has ``created_by`` ``feeders.store ...``) holding nothing but the files its manifest lists, or
an empty directory. The replace renames the old directory aside to ``<out>.replaced-<pid>``,
renames the new one in, then deletes the old one. ``clean_leftovers`` removes the
``<out>.tmp-<pid>`` / ``<out>.replaced-<pid>`` of writers killed on this machine (their
process is gone) and puts a ``.replaced`` dataset back when a writer died between the two
renames.
Conversion checks sample names and splits (``check_names_and_splits``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from feeders.layouts import LAYOUT_SOURCES, Layout, LayoutError, get_layout, layout_from_json

FORMAT_VERSION = 1
CREATED_BY = "feeders.store (format 1)"
FRAMES_FILE = "frames.npy"
INDEX_FILE = "index.npz"
MANIFEST_FILE = "manifest.json"
META_FIELDS = ("subject", "view", "setup", "replication")
DTYPES = ("float32", "float16")
_HEADER_BYTES = 128  # fixed .npy header size, so the shape can be patched at close
_RESERVED_NAMES = {"frames", "index", "manifest"}


class StoreError(ValueError):
    """A dataset directory is missing, corrupt or inconsistent (the message names the file)."""


class OutputError(ValueError):
    """An output path the suite refuses to write (the message names it)."""


class Record(NamedTuple):
    """One sequence. ``data`` is ``(T, M, V, C)`` float32 (None in metadata-only records).

    ``frame_arrays`` optionally maps a key to a per-frame array ``(T, ...)`` stored alongside
    the frames (e.g. per-frame labels for temporal detection).
    """

    name: str
    label: int
    data: np.ndarray | None
    subject: int = -1
    view: int = -1
    setup: int = -1
    replication: int = -1
    frame_arrays: Mapping[str, np.ndarray] | None = None


def _npy_header(shape: Sequence[int], dtype: np.dtype) -> bytes:
    """A version 1.0 ``.npy`` header of exactly ``_HEADER_BYTES`` bytes for a C-order array."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
              "fortran_order": False, "shape": tuple(int(s) for s in shape)}
    magic = np.lib.format.magic(1, 0)
    text_len = _HEADER_BYTES - len(magic) - 2
    text = repr(header).ljust(text_len - 1) + "\n"
    if len(text) != text_len:
        raise ValueError(f"shape {tuple(shape)} too long for a .npy header")
    return magic + struct.pack("<H", text_len) + text.encode("latin1")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (manifests, checkpoints, exports)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- writing safely

TMP_TAG, OLD_TAG = ".tmp-", ".replaced-"  # being written / replaced by process <pid>


@contextlib.contextmanager
def _writing(path: Path):
    """Name ``path`` in an OSError raised while writing it (``write`` does not name its file)."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def error_message(e: Exception) -> str:
    """One line for a ValueError or an OSError (which then names the path it concerns)."""
    if isinstance(e, OSError) and e.filename is not None and e.filename2 is None:
        return f"{e.filename}: {e.strerror or e}"
    return str(e).replace("\n", " ")


def suite_manifest(path) -> dict | None:
    """The manifest of ``path`` when it is a dataset directory written by this suite, else None.

    Recognised by ``manifest.json`` being a JSON object with an int ``format_version``, a dict
    ``checksums`` and ``created_by`` starting with ``feeders.store``. Nothing else is checked
    (``open_store`` validates the contents).
    """
    try:
        manifest = json.loads((Path(path) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    if (isinstance(manifest, dict) and isinstance(manifest.get("format_version"), int)
            and isinstance(manifest.get("checksums"), dict)
            and str(manifest.get("created_by", "")).startswith("feeders.store")):
        return manifest
    return None


def is_dataset_dir(path) -> bool:
    """True when ``path`` is a dataset directory written by this suite (``suite_manifest``)."""
    return Path(path).is_dir() and suite_manifest(path) is not None


def check_replaceable(out) -> None:
    """Raise OutputError unless writing a dataset directory at ``out`` loses nothing.

    Allowed: no ``out``; an empty directory; a dataset directory written by this suite that
    holds only ``manifest.json`` and the files its checksums list. Refused (naming ``out``): a
    symbolic link, a file, any other directory.
    """
    out = Path(out)
    if out.is_symlink():
        raise OutputError(f"{out}: is a symbolic link; refusing to replace it (pass its target "
                          f"{os.path.realpath(out)} as the output if that is meant)")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"{out}: exists and is a file, not a dataset directory; refusing to "
                          f"replace it (choose another output or move it away yourself)")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    manifest = suite_manifest(out)
    if manifest is None:
        raise OutputError(f"{out}: exists and is not a dataset directory written by this suite "
                          f"(no {MANIFEST_FILE} with created_by 'feeders.store ...'; it holds "
                          f"{', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}); "
                          f"refusing to replace it (choose another output or move it away "
                          f"yourself)")
    unknown = [e for e in entries if e != MANIFEST_FILE and e not in manifest["checksums"]]
    if unknown:
        raise OutputError(f"{out}: dataset directory also holds files the suite did not write "
                          f"({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}); "
                          f"refusing to replace it (move them away first)")


def check_outside(out, src, out_flag: str = "--out", src_flag: str = "--src") -> None:
    """Raise OutputError when ``out`` equals, lies inside or contains ``src`` (both named)."""
    o, s = Path(out).resolve(), Path(src).resolve()
    if o == s or s in o.parents or o in s.parents:
        relation = "is" if o == s else ("is inside" if s in o.parents else "contains")
        raise OutputError(f"{out_flag} {out} {relation} {src_flag} {src}: the output must be "
                          f"outside the source and must not contain it")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (``os.kill(pid, 0)``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _leftover_pid(path: Path, out: Path, tag: str) -> int | None:
    suffix = path.name[len(out.name) + len(tag):]
    return int(suffix) if path.name.startswith(out.name + tag) and suffix.isdigit() else None


def _written_by_writer(path: Path) -> bool:
    """A temporary output of this module: a file, or a directory of plain ``.npy``/``.npz``/
    ``.json`` files only (what a killed writer leaves)."""
    if path.is_symlink():
        return False
    if path.is_file():
        return True
    return path.is_dir() and all(p.is_file() and not p.is_symlink()
                                 and p.suffix in (".npy", ".npz", ".json")
                                 for p in path.iterdir())


def clean_leftovers(out) -> list[Path]:
    """Tidy what writers of ``out`` killed on this machine left next to it; returns the paths.

    ``<out>.tmp-<pid>`` (a partial output) is removed when process ``pid`` is gone.
    ``<out>.replaced-<pid>`` (a replaced dataset) is renamed back to ``out`` when ``out`` is missing
    (the writer died between its two renames), else removed. A live process's leftovers and
    anything that does not look like a writer's output are left alone.
    """
    out = Path(out)
    if not out.parent.is_dir():
        return []
    done = []
    siblings = sorted(out.parent.iterdir())
    for tag in (OLD_TAG, TMP_TAG):  # old first: it may restore out
        for path in siblings:
            pid = _leftover_pid(path, out, tag)
            if pid is None or not path.exists() or pid_alive(pid) or not _written_by_writer(path):
                continue
            if tag == OLD_TAG and not out.exists() and is_dataset_dir(path):
                os.replace(path, out)
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            done.append(path)
    return done


def check_names_and_splits(names: Sequence[str], splits: Mapping[str, np.ndarray],
                           sources: Sequence[str | None] | None = None) -> None:
    """Raise ValueError for a sample listed twice in a split, or in both halves of a split.

    ``names``: sample names in store order; ``splits``: name -> int index array; ``sources``:
    where each sample came from (named in the messages when known). Halves: ``<p>_train``
    against ``<p>_val`` and ``<p>_test`` (and ``train`` against ``val`` / ``test``).
    """
    def describe(indices) -> str:
        shown = []
        for i in list(indices)[:5]:
            where = sources[i] if sources is not None and sources[i] else None
            shown.append(f"{names[i]!r}" + (f" (from {where})" if where else ""))
        return ", ".join(shown) + (", ..." if len(indices) > 5 else "")

    for split, idx in splits.items():
        values, counts = np.unique(idx, return_counts=True)
        if (counts > 1).any():
            twice = values[counts > 1]
            raise ValueError(f"split {split!r} lists {twice.size} sample(s) more than once: "
                             f"{describe(twice)}")
    for split, idx in splits.items():
        if not (split == "train" or split.endswith("_train")):
            continue
        for other in ("val", "test"):
            partner = split[:-len("train")] + other
            if partner in splits:
                both = np.intersect1d(idx, splits[partner])
                if both.size:
                    raise ValueError(f"{both.size} sample(s) in both split {split!r} and split "
                                     f"{partner!r} (train/test leakage): {describe(both)}")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename the complete directory ``tmp`` to ``out``, replacing an existing dataset ``out``.

    The old directory is renamed aside first and deleted only once the new one is in place;
    if the second rename fails the old one is put back.
    """
    check_replaceable(out)
    old = out.with_name(f"{out.name}{OLD_TAG}{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    moved = out.exists()
    if moved:
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if moved:
            os.replace(old, out)
        raise
    if moved:
        shutil.rmtree(old, ignore_errors=True)


def _make_tmp_dir(out: Path) -> Path:
    """``<out>.tmp-<pid>``, empty, after tidying leftovers and checking ``out`` may be replaced."""
    clean_leftovers(out)
    check_replaceable(out)
    tmp = out.with_name(f"{out.name}{TMP_TAG}{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


class _FrameFile:
    """Appends ``(T, ...)`` blocks to a ``.npy`` file whose leading dimension is set at close."""

    def __init__(self, path: Path, frame_shape: tuple[int, ...], dtype: np.dtype):
        self.path = path
        self.frame_shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)
        self.frames = 0
        self._file = open(path, "wb")
        with _writing(path):
            self._file.write(_npy_header((0, *self.frame_shape), self.dtype))

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        with _writing(self.path):
            self._file.write(block.tobytes())
        self.frames += block.shape[0]

    def close(self) -> None:
        with _writing(self.path):
            self._file.seek(0)
            self._file.write(_npy_header((self.frames, *self.frame_shape), self.dtype))
            self._file.close()

    def discard(self) -> None:
        with contextlib.suppress(OSError):  # a full disk may fail the flush of the last block
            self._file.close()


class StoreWriter:
    """Writes a dataset directory record by record (memory bounded by one record).

    Use as a context manager, or call ``close(splits)`` / ``abort()`` yourself::

        with StoreWriter(out, "ntu25", 60, names, channels=3, bodies=2) as w:
            for rec in records:
                w.add(rec)
            w.close({"xsub_train": [...], "xsub_val": [...]})

    Leaving the ``with`` block on an exception (or without ``close``) removes the temporary
    directory and leaves any existing ``out_dir`` untouched. An existing ``out_dir`` must be a
    dataset directory written by this suite (``check_replaceable``, checked at the start and
    again before the replace). Two records with the same name are refused (naming where both
    came from, ``add(rec, source=...)``), and so are splits that list a sample twice or share
    samples between ``<p>_train`` and ``<p>_val`` (``check_names_and_splits``).
    """

    def __init__(self, out_dir, layout: str | Layout, num_classes: int,
                 class_names: Sequence[str], channels: int, bodies: int,
                 dtype: str = "float32", source_format: str = "unknown",
                 layout_source: str = "format"):
        self.out_dir = Path(out_dir)
        self.layout = get_layout(layout)
        if layout_source not in LAYOUT_SOURCES:
            raise ValueError(f"StoreWriter: layout_source must be one of {LAYOUT_SOURCES}, "
                             f"got {layout_source!r}")
        self.layout_source = layout_source
        if dtype not in DTYPES:
            raise ValueError(f"StoreWriter: dtype must be one of {DTYPES}, got {dtype!r}")
        if len(class_names) != num_classes:
            raise ValueError(f"StoreWriter: {len(class_names)} class names for "
                             f"num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.class_names = [str(c) for c in class_names]
        self.channels, self.bodies = int(channels), int(bodies)
        self.joints = self.layout.num_joints
        self.dtype = dtype
        self.source_format = source_format
        self.tmp_dir = _make_tmp_dir(self.out_dir)
        self._frames = _FrameFile(self.tmp_dir / FRAMES_FILE,
                                  (self.bodies, self.joints, self.channels), np.dtype(dtype))
        self._extras: dict[str, _FrameFile] = {}
        self._index: dict[str, list] = {k: [] for k in
                                        ("offset", "length", "label", "name", *META_FIELDS)}
        self._position: dict[str, int] = {}  # name -> record index
        self._sources: list[str | None] = []  # where each record came from (for messages)
        self._closed = False

    def __len__(self) -> int:
        return len(self._index["name"])

    @property
    def total_frames(self) -> int:
        """Frames written so far."""
        return self._frames.frames

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._closed:
            self.abort()

    def add(self, rec: Record, source: str | None = None) -> None:
        """Append one record; its data must be ``(T >= 1, M, V, C)`` with finite values and
        its name must be new. ``source`` (e.g. the file it was read from) names it in errors."""
        name = str(rec.name)
        if name in self._position:
            first = self._sources[self._position[name]]
            where = f": {first} and {source}" if first or source else ""
            raise ValueError(f"two samples named {name!r}{where} (sample names must be "
                             f"unique)")
        data = np.asarray(rec.data)
        expected = (self.bodies, self.joints, self.channels)
        if data.ndim != 4 or data.shape[1:] != expected or data.shape[0] < 1:
            raise ValueError(f"record {rec.name!r}: data shape {data.shape}, expected "
                             f"(T>=1, {', '.join(map(str, expected))}) as (T, M, V, C)")
        if not np.isfinite(data).all():
            raise ValueError(f"record {rec.name!r}: data contains NaN or infinite values")
        if not 0 <= int(rec.label) < self.num_classes:
            raise ValueError(f"record {rec.name!r}: label {rec.label} outside "
                             f"[0, {self.num_classes})")
        self._add_frame_arrays(rec, data.shape[0])
        self._index["offset"].append(self._frames.frames)
        self._index["length"].append(data.shape[0])
        self._frames.append(data)
        self._index["label"].append(int(rec.label))
        self._position[name] = len(self._index["name"])
        self._sources.append(source)
        self._index["name"].append(name)
        for field in META_FIELDS:
            self._index[field].append(int(getattr(rec, field)))

    def _add_frame_arrays(self, rec: Record, length: int) -> None:
        arrays = dict(rec.frame_arrays or {})
        if len(self) > 0 and set(arrays) != set(self._extras):
            raise ValueError(f"record {rec.name!r}: frame arrays {sorted(arrays)}, but earlier "
                             f"records had {sorted(self._extras)}")
        for key, value in arrays.items():
            value = np.asarray(value)
            if key in _RESERVED_NAMES or not key.isidentifier():
                raise ValueError(f"record {rec.name!r}: invalid frame array name {key!r}")
            if value.ndim < 1 or value.shape[0] != length:
                raise ValueError(f"record {rec.name!r}: frame array {key!r} has shape "
                                 f"{value.shape}, expected {length} frames first")
            if key not in self._extras:
                self._extras[key] = _FrameFile(self.tmp_dir / f"{key}.npy",
                                               value.shape[1:], value.dtype)
            elif value.shape[1:] != self._extras[key].frame_shape:
                raise ValueError(f"record {rec.name!r}: frame array {key!r} per-frame shape "
                                 f"{value.shape[1:]}, expected {self._extras[key].frame_shape}")
            self._extras[key].append(value)

    def _split_indices(self, splits: Mapping[str, Sequence]) -> dict[str, np.ndarray]:
        """Turn split members (names or indices) into validated int64 index arrays."""
        position = self._position
        out = {}
        for split, members in splits.items():
            members = list(members)
            if members and all(isinstance(m, str) for m in members):
                missing = [m for m in members if m not in position]
                if missing:
                    raise ValueError(f"split {split!r}: unknown sequence names {missing[:5]}")
                idx = np.array([position[m] for m in members], dtype=np.int64)
            else:
                idx = np.asarray(members, dtype=np.int64).reshape(-1)
                bad = idx[(idx < 0) | (idx >= len(self))]
                if bad.size:
                    raise ValueError(f"split {split!r}: indices {bad[:5].tolist()} outside "
                                     f"[0, {len(self)})")
            out[split] = idx
        check_names_and_splits(self._index["name"], out, self._sources)
        return out

    def close(self, splits: Mapping[str, Sequence] | None = None) -> Path:
        """Write index and manifest, then move the directory into place. Returns its path."""
        try:
            if len(self) == 0:
                raise ValueError(f"{self.out_dir}: no records were written")
            split_idx = self._split_indices(splits or {})
            self._frames.close()
            for extra in self._extras.values():
                extra.close()
            self._write_index(split_idx)
            self._write_manifest(split_idx)
            self._move_into_place()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.out_dir

    def abort(self) -> None:
        """Discard everything written so far; an existing ``out_dir`` is left untouched."""
        self._frames.discard()
        for extra in self._extras.values():
            extra.discard()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self._closed = True

    def _write_index(self, split_idx: dict[str, np.ndarray]) -> None:
        ix = self._index
        arrays = {"offset": np.array(ix["offset"], dtype=np.int64),
                  "length": np.array(ix["length"], dtype=np.int32),
                  "label": np.array(ix["label"], dtype=np.int32),
                  "name": np.array(ix["name"], dtype=str)}
        for field in META_FIELDS:
            arrays[field] = np.array(ix[field], dtype=np.int32)
        for split, idx in split_idx.items():
            arrays[f"split/{split}"] = idx
        with open(self.tmp_dir / INDEX_FILE, "wb") as f, _writing(self.tmp_dir / INDEX_FILE):
            np.savez(f, **arrays)

    def _write_manifest(self, split_idx: dict[str, np.ndarray]) -> None:
        files = [FRAMES_FILE, INDEX_FILE] + [f"{k}.npy" for k in self._extras]
        manifest = {
            "format_version": FORMAT_VERSION,
            "layout": self.layout.name,
            "layout_spec": self.layout.to_json(),
            "layout_source": self.layout_source,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "channels": self.channels,
            "joints": self.joints,
            "bodies": self.bodies,
            "num_sequences": len(self),
            "total_frames": self._frames.frames,
            "dtype": self.dtype,
            "source_format": self.source_format,
            "splits": {name: int(idx.size) for name, idx in split_idx.items()},
            "frame_arrays": {k: {"dtype": e.dtype.str, "shape": list(e.frame_shape)}
                             for k, e in self._extras.items()},
            "checksums": {name: file_sha256(self.tmp_dir / name) for name in files},
            "created_by": CREATED_BY,
        }
        with open(self.tmp_dir / MANIFEST_FILE, "w") as f, _writing(self.tmp_dir / MANIFEST_FILE):
            json.dump(manifest, f, indent=1)

    def _move_into_place(self) -> None:
        _replace_dir(self.tmp_dir, self.out_dir)


def add_splits(src, out, splits: Mapping[str, Sequence[int]]) -> Path:
    """Write the dataset ``src`` again at ``out`` with extra splits; returns ``out``.

    ``splits``: split name -> sequence indices of ``src``. The frames (and per-frame arrays)
    are hard links to ``src``'s files where the filesystem allows, copies otherwise; index and
    manifest are new. Written into ``<out>.tmp-<pid>`` and renamed into place. For selection
    experiments on a part of a training split (e.g. view 1 -> view 2 of NW-UCLA xview_train).
    ``out`` must not be, contain or lie inside ``src`` and may replace only a dataset
    directory written by this suite; the splits are checked like ``StoreWriter``'s.
    """
    src, out = Path(src), Path(out)
    check_outside(out, src, "add_splits: out", "src")
    manifest = _read_manifest(src)
    with np.load(src / INDEX_FILE, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    n = manifest["num_sequences"]
    for name, members in splits.items():
        if name in manifest["splits"]:
            raise ValueError(f"{src}: split {name!r} exists already")
        idx = np.asarray(members, dtype=np.int64).reshape(-1)
        if idx.size == 0 or ((idx < 0) | (idx >= n)).any():
            raise ValueError(f"split {name!r}: expected 1 or more sequence indices in [0, {n}), "
                             f"got {idx.size} indices with min {idx.min(initial=0)} and max "
                             f"{idx.max(initial=0)}")
        arrays[f"split/{name}"] = idx
    check_names_and_splits([str(n) for n in arrays["name"]],
                           {k[len("split/"):]: v for k, v in arrays.items()
                            if k.startswith("split/")})
    tmp = _make_tmp_dir(out)
    try:
        for name in manifest["checksums"]:
            if name == INDEX_FILE:
                continue
            try:
                os.link(src / name, tmp / name)
            except OSError:
                shutil.copy2(src / name, tmp / name)
        with open(tmp / INDEX_FILE, "wb") as f, _writing(tmp / INDEX_FILE):
            np.savez(f, **arrays)
        manifest = {**manifest,
                    "splits": {k[len("split/"):]: int(v.size) for k, v in arrays.items()
                               if k.startswith("split/")},
                    "checksums": {**manifest["checksums"], INDEX_FILE: file_sha256(tmp / INDEX_FILE)}}
        with open(tmp / MANIFEST_FILE, "w") as f, _writing(tmp / MANIFEST_FILE):
            json.dump(manifest, f, indent=1)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------------------------------- reading

_MANIFEST_TYPES = {
    "format_version": int, "layout": str, "num_classes": int, "class_names": list,
    "channels": int, "joints": int, "bodies": int, "num_sequences": int, "total_frames": int,
    "dtype": str, "source_format": str, "splits": dict, "checksums": dict, "created_by": str,
}
_INDEX_KEYS = ("offset", "length", "label", "name", *META_FIELDS)


def _fail(path: Path, problem: str) -> StoreError:
    return StoreError(f"{path}: {problem}")


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise _fail(path, "missing (not a dataset directory written by feeders.prepare?)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(path, f"not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise _fail(path, "expected a JSON object")
    for field, kind in _MANIFEST_TYPES.items():
        if field not in manifest:
            raise _fail(path, f"field {field!r} missing")
        value = manifest[field]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _fail(path, f"field {field!r} should be {kind.__name__}, "
                              f"got {type(value).__name__}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise _fail(path, f"format_version {manifest['format_version']} not supported "
                          f"(expected {FORMAT_VERSION})")
    if manifest["dtype"] not in DTYPES:
        raise _fail(path, f"field 'dtype' is {manifest['dtype']!r}, expected one of {DTYPES}")
    if len(manifest["class_names"]) != manifest["num_classes"]:
        raise _fail(path, f"{len(manifest['class_names'])} class_names for "
                          f"num_classes={manifest['num_classes']}")
    layout = manifest_layout(manifest, path)
    if layout.num_joints != manifest["joints"]:
        raise _fail(path, f"joints={manifest['joints']} but layout {layout.name!r} has "
                          f"{layout.num_joints}")
    return manifest


def manifest_layout(manifest: dict, path: Path) -> Layout:
    """The manifest's layout: rebuilt from ``layout_spec`` (the whole layout, written since
    custom layouts exist) or, in older manifests, looked up by the built-in name ``layout``."""
    try:
        if "layout_spec" not in manifest:
            return get_layout(manifest["layout"])
        layout = layout_from_json(manifest["layout_spec"], f"{path}: field 'layout_spec'")
    except LayoutError as e:
        raise (StoreError(str(e)) if "layout_spec" in manifest else _fail(path, str(e))) from None
    if layout.name != manifest["layout"]:
        raise _fail(path, f"field 'layout' is {manifest['layout']!r}, but 'layout_spec' "
                          f"describes layout {layout.name!r}")
    return layout


def _frame_array_specs(path: Path, manifest: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The manifest's ``frame_arrays`` as key -> (per-frame shape, dtype), every entry checked
    (StoreError naming the manifest and the field)."""
    specs = manifest.get("frame_arrays", {})
    if not isinstance(specs, dict):
        raise _fail(path, f"field 'frame_arrays' should be an object key -> {{dtype, shape}}, "
                          f"got {type(specs).__name__}")
    out = {}
    for key, spec in specs.items():
        field = f"field 'frame_arrays' entry {key!r}"
        if not key.isidentifier() or key in _RESERVED_NAMES:
            raise _fail(path, f"{field}: invalid name (expected an identifier other than "
                              f"{sorted(_RESERVED_NAMES)})")
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape"}:
            raise _fail(path, f"{field}: expected an object with keys 'dtype' and 'shape', got "
                              f"{spec!r:.80}")
        shape = spec["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                  and d >= 0 for d in shape):
            raise _fail(path, f"{field}: 'shape' should be a list of ints >= 0, got {shape!r:.80}")
        try:
            dtype = np.dtype(spec["dtype"]) if isinstance(spec["dtype"], str) else None
        except (TypeError, ValueError):
            dtype = None
        if dtype is None or dtype.kind not in "biuf":
            raise _fail(path, f"{field}: 'dtype' should name a numeric dtype such as '<i2', "
                              f"got {spec['dtype']!r:.80}")
        out[key] = (tuple(shape), dtype)
    return out


def _open_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Memory-map a ``.npy`` file after checking header shape/dtype and the file size."""
    if not path.is_file():
        raise _fail(path, "missing")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            file_shape, fortran, file_dtype = read_header(f)
            data_start = f.tell()
    except ValueError as e:
        raise _fail(path, f"not a valid .npy file ({e})") from None
    if tuple(file_shape) != tuple(shape):
        raise _fail(path, f"shape {tuple(file_shape)} does not match the manifest {tuple(shape)}")
    if np.dtype(file_dtype) != np.dtype(dtype):
        raise _fail(path, f"dtype {file_dtype} does not match the manifest {np.dtype(dtype)}")
    if fortran:
        raise _fail(path, "Fortran-ordered array, expected C order")
    expected = data_start + int(np.prod(shape)) * np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size < expected:
        raise _fail(path, f"truncated: {size} bytes, expected {expected}")
    return np.load(path, mmap_mode="r")


def _read_index(path: Path, manifest: dict) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    if not path.is_file():
        raise _fail(path, "missing")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile/numpy raise many kinds for a corrupt archive
        raise _fail(path, f"cannot be read ({type(e).__name__}: {e})") from None
    n = manifest["num_sequences"]
    for key in _INDEX_KEYS:
        if key not in arrays:
            raise _fail(path, f"array {key!r} missing")
        if arrays[key].shape != (n,):
            raise _fail(path, f"array {key!r} has shape {arrays[key].shape}, expected ({n},)")
        if key != "name" and arrays[key].dtype.kind not in "iu":
            raise _fail(path, f"array {key!r} has dtype {arrays[key].dtype}, expected integers")
    splits = {k[len("split/"):]: v for k, v in arrays.items() if k.startswith("split/")}
    index = {k: arrays[k] for k in _INDEX_KEYS}
    _check_offsets(path, index, manifest["total_frames"])
    _check_labels(path, index["label"], manifest["num_classes"])
    _check_splits(path, splits, manifest["splits"], n)
    return index, splits


def _check_offsets(path: Path, index: dict[str, np.ndarray], total: int) -> None:
    offset, length = index["offset"].astype(np.int64), index["length"].astype(np.int64)
    if (length < 1).any():
        i = int(np.flatnonzero(length < 1)[0])
        raise _fail(path, f"sequence {i} ({index['name'][i]!r}) has length {length[i]} < 1")
    expected = np.concatenate([[0], np.cumsum(length)[:-1]])
    if not np.array_equal(offset, expected):
        i = int(np.flatnonzero(offset != expected)[0])
        raise _fail(path, f"offset of sequence {i} ({index['name'][i]!r}) is {offset[i]}, "
                          f"expected {expected[i]} (offsets must be contiguous)")
    if int(length.sum()) != total:
        raise _fail(path, f"lengths sum to {int(length.sum())} frames but the manifest "
                          f"says total_frames={total} (out of bounds)")


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise _fail(path, f"label {labels[i]} of sequence {i} outside [0, {num_classes}) "
                          f"({bad.size} labels out of range)")


def _check_splits(path: Path, splits: dict[str, np.ndarray], counts: dict, n: int) -> None:
    if set(splits) != set(counts):
        raise _fail(path, f"splits {sorted(splits)} do not match the manifest {sorted(counts)}")
    for name, idx in splits.items():
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise _fail(path, f"split {name!r} must be a 1-D integer array, got "
                              f"{idx.dtype} {idx.shape}")
        if idx.size != counts[name]:
            raise _fail(path, f"split {name!r} has {idx.size} indices, manifest says "
                              f"{counts[name]}")
        bad = idx[(idx < 0) | (idx >= n)]
        if bad.size:
            raise _fail(path, f"split {name!r} has indices {bad[:5].tolist()} outside [0, {n})")


class Store:
    """A read-only dataset directory. Use ``open_store`` to build one."""

    def __init__(self, root: Path, manifest: dict, frames: np.ndarray,
                 index: dict[str, np.ndarray], splits: dict[str, np.ndarray],
                 frame_arrays: dict[str, np.ndarray]):
        self.root = root
        self.manifest = manifest
        self.frames = frames  # (total_frames, M, V, C) memmap
        self.layout: Layout = manifest_layout(manifest, root / MANIFEST_FILE)
        self.num_classes: int = manifest["num_classes"]
        self.class_names: list[str] = manifest["class_names"]
        self.channels: int = manifest["channels"]
        self.joints: int = manifest["joints"]
        self.bodies: int = manifest["bodies"]
        self.offsets = index["offset"].astype(np.int64)
        self.lengths = index["length"].astype(np.int64)
        self.labels = index["label"].astype(np.int64)
        self.names = index["name"]
        self.subjects, self.views = index["subject"], index["view"]
        self.setups, self.replications = index["setup"], index["replication"]
        self.splits = splits
        self._frame_arrays = frame_arrays

    def __len__(self) -> int:
        return len(self.lengths)

    def __repr__(self) -> str:
        return (f"Store({str(self.root)!r}, {len(self)} sequences, layout={self.layout.name}, "
                f"C={self.channels}, V={self.joints}, M={self.bodies}, "
                f"splits={sorted(self.splits)})")

    def _span(self, i: int) -> slice:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.root}: sequence index {i} out of range [0, {len(self)})")
        start = int(self.offsets[i])
        return slice(start, start + int(self.lengths[i]))

    def sequence(self, i: int) -> np.ndarray:
        """Sequence ``i`` as a ``(T, M, V, C)`` view into the memmap (nothing is copied)."""
        return self.frames[self._span(i)]

    @property
    def frame_array_names(self) -> list[str]:
        return sorted(self._frame_arrays)

    def frame_array(self, key: str, i: int) -> np.ndarray:
        """Per-frame array ``key`` of sequence ``i``, ``(T, ...)`` (e.g. ``frame_labels``)."""
        if key not in self._frame_arrays:
            raise KeyError(f"{self.root}: no frame array {key!r}; available: "
                           f"{self.frame_array_names}")
        return self._frame_arrays[key][self._span(i)]

    def split_indices(self, name: str) -> np.ndarray:
        """Sequence indices of split ``name`` (int64)."""
        if name not in self.splits:
            raise KeyError(f"{self.root}: no split {name!r}; available splits: "
                           f"{sorted(self.splits) or 'none'}")
        return self.splits[name]


def open_store(path, verify: bool = False) -> Store:
    """Open and validate a dataset directory; ``verify=True`` also checks sha256 checksums.

    Raises ``StoreError`` naming the file and the problem.
    """
    root = Path(path)
    if not root.is_dir():
        raise _fail(root, "dataset directory does not exist")
    manifest = _read_manifest(root)
    frame_shape = (manifest["bodies"], manifest["joints"], manifest["channels"])
    frames = _open_npy(root / FRAMES_FILE, (manifest["total_frames"], *frame_shape),
                       np.dtype(manifest["dtype"]))
    index, splits = _read_index(root / INDEX_FILE, manifest)
    frame_arrays = {}
    for key, (shape, dtype) in _frame_array_specs(root / MANIFEST_FILE, manifest).items():
        frame_arrays[key] = _open_npy(root / f"{key}.npy", (manifest["total_frames"], *shape),
                                      dtype)
    if verify:
        for name, expected in manifest["checksums"].items():
            if not (root / name).is_file():
                raise _fail(root / name, "missing (listed in the manifest checksums)")
            if file_sha256(root / name) != expected:
                raise _fail(root / name, "sha256 checksum mismatch (file changed or corrupt)")
    return Store(root, manifest, frames, index, splits, frame_arrays)

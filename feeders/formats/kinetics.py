"""st-gcn Kinetics-skeleton JSON, one file per clip (docs/DATA.md §1.7).

A clip is ``{data: [{frame_index, skeleton: [{pose: [x0, y0, x1, y1, ...], score: [...]}]}],
label, label_index}`` with OpenPose 18 joints (``openpose18``), coordinates in [0, 1].
Records have 3 channels (x, y, score) and ``--bodies`` bodies (2). The sequence spans
frame_index 1..max: frames with nobody (or missing from ``data``) stay as all-zero frames.
In each frame the skeletons are ranked by their summed joint score and the best ``--bodies``
kept, as st-gcn's feeder does (OpenPose does not track people, so body slots are per frame).

Labels: the label *strings* are mapped to indices through ``--label-names`` (one class name per
line, 400 in the original ``label_name.txt``; default ``<src>/label_name.txt``, else the sorted
label strings found). Label lists ``{clip: {has_skeleton, label, label_index}}`` (default
``<src>/kinetics_{train,val}_label.json`` when present) give each clip's label and drop clips
without skeleton; their ``label_index`` is ignored. Splits ``train`` / ``val`` from the folders
``<src>/kinetics_train`` and ``<src>/kinetics_val`` (or ``--train-dir`` / ``--val-dir``); when
one of them is missing a warning says that only the other split will be written.
"""
from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from feeders.formats import Source
from feeders.formats.ctrgcn import splits_by_name
from feeders.formats.pyskl import read_class_names
from feeders.layouts import get_layout
from feeders.store import Record

LAYOUT = "openpose18"
SPLITS = ("train", "val")


class Clip(NamedTuple):
    """One clip file with its label (from the label list or the file, checked in ``read``)."""

    path: Path
    label: int
    label_name: str
    bodies: int

    def __str__(self) -> str:
        return str(self.path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bodies", type=int, default=2,
                        help="bodies kept per frame, highest summed score first (default 2)")
    for split in SPLITS:
        parser.add_argument(f"--{split}-dir", type=Path, default=None,
                            help=f"folder of {split} clips (default <src>/kinetics_{split})")
        parser.add_argument(f"--{split}-labels", type=Path, default=None,
                            help=f"{split} label list JSON (default "
                                 f"<src>/kinetics_{split}_label.json if present)")
    parser.add_argument("--label-names", type=Path, default=None,
                        help="class names, one per line, in label-index order (default "
                             "<src>/label_name.txt if present, else the sorted label strings)")


def _load_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e})") from None


def _frame_entries(content, path: Path) -> list:
    if not isinstance(content, dict) or not isinstance(content.get("data"), list):
        raise ValueError(f"{path}: expected an object with a 'data' list of frames")
    if not content["data"]:
        raise ValueError(f"{path}: field 'data' is empty (no frames)")
    return content["data"]


def skeleton_array(skeleton, path: Path, frame_index: int, joints: int) -> np.ndarray:
    """One OpenPose skeleton -> ``(V, 3)`` float32 (x, y, score)."""
    where = f"{path}: frame_index {frame_index}"
    if not isinstance(skeleton, dict) or "pose" not in skeleton or "score" not in skeleton:
        raise ValueError(f"{where}: each skeleton needs fields 'pose' and 'score'")
    try:
        pose = np.asarray(skeleton["pose"], dtype=np.float32)
        score = np.asarray(skeleton["score"], dtype=np.float32)
    except (ValueError, TypeError):
        raise ValueError(f"{where}: fields 'pose'/'score' must be lists of numbers") from None
    if pose.shape != (2 * joints,) or score.shape != (joints,):
        raise ValueError(f"{where}: 'pose' has {pose.size} values and 'score' {score.size}, "
                         f"expected {2 * joints} and {joints} ({LAYOUT})")
    out = np.concatenate([pose.reshape(joints, 2), score[:, None]], axis=1)
    if not np.isfinite(out).all():
        raise ValueError(f"{where}: 'pose'/'score' contain NaN or infinite values")
    return out


def clip_array(content, path: Path, bodies: int) -> np.ndarray:
    """A clip -> ``(T, bodies, V, 3)`` float32, T = the largest frame_index, empty frames zero."""
    joints = get_layout(LAYOUT).num_joints
    per_frame: dict[int, list[np.ndarray]] = {}
    for entry in _frame_entries(content, path):
        index = entry.get("frame_index") if isinstance(entry, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or index < 1:
            raise ValueError(f"{path}: frame entry with 'frame_index' {index!r}, expected an "
                             f"int >= 1")
        skeletons = entry.get("skeleton", [])
        if not isinstance(skeletons, list):
            raise ValueError(f"{path}: frame_index {index}: 'skeleton' must be a list")
        per_frame.setdefault(index, []).extend(
            skeleton_array(s, path, index, joints) for s in skeletons)
    data = np.zeros((max(per_frame), bodies, joints, 3), dtype=np.float32)
    for index, found in per_frame.items():
        ranked = sorted(found, key=lambda s: -float(s[:, 2].sum()))  # stable: ties keep order
        for m, skeleton in enumerate(ranked[:bodies]):
            data[index - 1, m] = skeleton
    return data


def read(item: Clip) -> list[Record]:
    """One clip file -> one Record ``(T, bodies, 18, 3)``."""
    content = _load_json(item.path)
    own = content.get("label") if isinstance(content, dict) else None
    if own is not None and own != item.label_name:
        raise ValueError(f"{item.path}: field 'label' is {own!r}, but the label list says "
                         f"{item.label_name!r}")
    return [Record(name=item.path.stem, label=item.label,
                   data=clip_array(content, item.path, item.bodies))]


def _label_strings(files: list[Path], label_list: Path | None) -> dict[Path, str]:
    """Clip file -> label string, from the label list (clips without skeleton dropped) or
    from each file's own 'label' field."""
    if label_list is None:
        labels = {}
        for path in files:
            content = _load_json(path)
            if not isinstance(content, dict) or not isinstance(content.get("label"), str):
                raise ValueError(f"{path}: field 'label' missing or not a string (pass a "
                                 f"label list with --train-labels / --val-labels)")
            labels[path] = content["label"]
        return labels
    entries = _load_json(label_list)
    if not isinstance(entries, dict):
        raise ValueError(f"{label_list}: expected an object clip -> {{has_skeleton, label}}")
    labels = {}
    for path in files:
        entry = entries.get(path.stem)
        if not isinstance(entry, dict) or not isinstance(entry.get("label"), str):
            raise ValueError(f"{label_list}: no entry with a 'label' string for clip "
                             f"{path.stem!r} ({path})")
        if entry.get("has_skeleton", True):
            labels[path] = entry["label"]
    return labels


def _split_inputs(src: Path, opts) -> dict[str, tuple[Path, Path | None]]:
    """split -> (clip folder, label list or None); defaults under ``src`` when present."""
    inputs = {}
    for split in SPLITS:
        folder = getattr(opts, f"{split}_dir")
        labels = getattr(opts, f"{split}_labels")
        if folder is None:
            folder = src / f"kinetics_{split}"
            if not folder.is_dir():
                continue
        elif not Path(folder).is_dir():
            raise ValueError(f"{folder}: {split} clip folder not found")
        if labels is None and (src / f"kinetics_{split}_label.json").is_file():
            labels = src / f"kinetics_{split}_label.json"
        inputs[split] = (Path(folder), labels)
    if not inputs:
        raise ValueError(f"{src}: no kinetics_train/ or kinetics_val/ folder (or pass "
                         f"--train-dir / --val-dir)")
    return inputs


def scan(src: Path, opts) -> Source:
    src = Path(src)
    label_of: dict[Path, str] = {}
    split_of: dict[str, str] = {}
    inputs = _split_inputs(src, opts)
    for split in SPLITS:
        if split not in inputs:
            print(f"warning: {src}: no {split} clip folder (kinetics_{split}/ or --{split}-dir); "
                  f"only the {' and '.join(inputs)} split will be written", file=sys.stderr)
    for split, (folder, label_list) in inputs.items():
        files = sorted(folder.glob("*.json"))
        if not files:
            raise ValueError(f"{folder}: no clip *.json files")
        for path, label in _label_strings(files, label_list).items():
            if path.stem in split_of:
                raise ValueError(f"{path}: clip {path.stem!r} appears in two splits")
            split_of[path.stem] = split
            label_of[path] = label
    names_file = opts.label_names
    if names_file is None and (src / "label_name.txt").is_file():
        names_file = src / "label_name.txt"
    class_names = (read_class_names(names_file) if names_file
                   else sorted(set(label_of.values())))
    index = {name: k for k, name in enumerate(class_names)}
    items = []
    for path, label in label_of.items():
        if label not in index:
            raise ValueError(f"{path}: label {label!r} is not in {names_file}")
        items.append(Clip(path, index[label], label, opts.bodies))
    return Source(layout=LAYOUT, channels=3, bodies=opts.bodies, class_names=class_names,
                  items=items, read=read, parallel=True,
                  make_splits=partial(splits_by_name, split_of))

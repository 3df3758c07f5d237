"""NW-UCLA Multiview Action3D skeletons, ``all_sqe/*.json`` as used by CTR-GCN (docs/DATA.md §1.6).

One JSON file per sequence: ``{file_name, skeletons: [T][20][3], label: 1..10}``, named
``aAA_sSS_eEE_vVV`` (action id, subject, episode/replication, view). Kinect v1 20-joint layout
(``kinect20``), 3 channels, 1 body. Label = ``label - 1``; the ten action ids 1 2 3 4 5 6 8 9
11 12 map in order to labels 1..10, which is checked. Cross-view split: views 1 and 2 train
(``xview_train``), view 3 test (``xview_val``). ``--src`` is the ``all_sqe`` folder or its parent.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from feeders.formats import Source, find_files
from feeders.layouts import get_layout
from feeders.store import Record

LAYOUT = "kinect20"
CLASS_NAMES = ["pick up with one hand", "pick up with two hands", "drop trash", "walk around",
               "sit down", "stand up", "donning", "doffing", "throw", "carry"]
ACTION_IDS = (1, 2, 3, 4, 5, 6, 8, 9, 11, 12)  # label k + 1 <-> action id ACTION_IDS[k]
XVIEW_TRAIN_VIEWS = (1, 2)
NAME_PATTERN = re.compile(r"a(\d+)_s(\d+)_e(\d+)_v(\d+)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """NW-UCLA has no format flags."""


def parse_name(name: str, path: Path) -> dict[str, int]:
    """``aAA_sSS_eEE_vVV`` -> action, subject, replication (episode), view."""
    m = NAME_PATTERN.fullmatch(name)
    if m is None:
        raise ValueError(f"{path}: file name {name!r} does not match aAA_sSS_eEE_vVV")
    action, subject, episode, view = (int(g) for g in m.groups())
    return {"action": action, "subject": subject, "replication": episode, "view": view}


def load_sequence(path: Path) -> tuple[str, int, np.ndarray]:
    """One JSON file -> (name, 0-based label, skeletons float32 ``(T, 20, 3)``), all checked."""
    try:
        content = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(content).__name__}")
    for field in ("file_name", "skeletons", "label"):
        if field not in content:
            raise ValueError(f"{path}: field {field!r} missing")
    name, label = content["file_name"], content["label"]
    if name != Path(path).stem:
        raise ValueError(f"{path}: field 'file_name' is {name!r}, expected the file stem "
                         f"{Path(path).stem!r}")
    if isinstance(label, bool) or not isinstance(label, int) or not 1 <= label <= len(CLASS_NAMES):
        raise ValueError(f"{path}: field 'label' is {label!r}, expected an int in "
                         f"1..{len(CLASS_NAMES)}")
    joints = get_layout(LAYOUT).num_joints
    try:
        skeletons = np.array(content["skeletons"], dtype=np.float32)
    except (ValueError, TypeError):
        raise ValueError(f"{path}: field 'skeletons' is ragged or not numeric, expected "
                         f"[T][{joints}][3] numbers") from None
    if skeletons.ndim != 3 or skeletons.shape[0] < 1 or skeletons.shape[1:] != (joints, 3):
        raise ValueError(f"{path}: field 'skeletons' has shape {skeletons.shape}, expected "
                         f"(T>=1, {joints}, 3)")
    if not np.isfinite(skeletons).all():
        raise ValueError(f"{path}: field 'skeletons' contains NaN or infinite values")
    return name, label - 1, skeletons


def read(path: Path) -> list[Record]:
    """One JSON file -> one Record with data ``(T, 1, 20, 3)``."""
    name, label, skeletons = load_sequence(path)
    meta = parse_name(name, path)
    if meta["action"] not in ACTION_IDS:
        raise ValueError(f"{path}: action id a{meta['action']:02d} in the name is not one of "
                         f"{ACTION_IDS}")
    if ACTION_IDS.index(meta["action"]) != label:
        raise ValueError(f"{path}: field 'label' is {label + 1}, but action id "
                         f"a{meta['action']:02d} has label {ACTION_IDS.index(meta['action']) + 1}")
    return [Record(name=name, label=label, data=skeletons[:, None], subject=meta["subject"],
                   view=meta["view"], replication=meta["replication"])]


def make_splits(metas: list[Record]) -> dict[str, list[int]]:
    """Cross-view: views 1 and 2 train, view 3 test."""
    return {"xview_train": [i for i, r in enumerate(metas) if r.view in XVIEW_TRAIN_VIEWS],
            "xview_val": [i for i, r in enumerate(metas) if r.view not in XVIEW_TRAIN_VIEWS]}


def scan(src: Path, opts) -> Source:
    files = find_files(src, "all_sqe", "*.json", "NW-UCLA")
    return Source(layout=LAYOUT, channels=3, bodies=1, class_names=list(CLASS_NAMES),
                  items=files, read=read, parallel=True, make_splits=make_splits)

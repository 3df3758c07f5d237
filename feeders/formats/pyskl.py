"""pyskl / mmaction2 annotation pickle (docs/DATA.md §1.2).

The file is one pickled dict ``{'split': {name: [frame_dir, ...]}, 'annotations': [...]}``.
Each annotation holds ``frame_dir`` (str), ``label`` (0-based int), ``total_frames`` and
``keypoint`` ``(M, T, V, C)`` (float16 in the released files); 2D files add
``keypoint_score`` ``(M, T, V)``, appended here as a third channel unless ``--drop-score``
(only for 2D keypoints; a score next to 3D keypoints is ignored). NTU-style frame_dir names
``SsssCcccPpppRrrrAaaa`` also give setup, view (camera), subject and replication.

The pickle is loaded once in ``scan``; the work items are the annotation dicts themselves, so
reading runs in the main process (``parallel=False``). Splits are copied verbatim.
"""
from __future__ import annotations

import argparse
import re
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from feeders import safe_pickle
from feeders.formats import Source
from feeders.layouts import choose_layout
from feeders.store import Record

_NTU_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", default=None,
                        help="joint layout: a built-in name or a layout JSON file "
                             "(python -m feeders.layouts NAME prints a template); default: the "
                             "one built-in layout with the file's V joints in its C-D "
                             "coordinates, with a warning, else an error listing candidates")
    parser.add_argument("--bodies", type=int, default=None,
                        help="bodies M kept per sequence (default: the largest M in the file)")
    parser.add_argument("--drop-score", action="store_true",
                        help="2D files: do not append keypoint_score as a third channel")
    parser.add_argument("--class-names", type=Path, default=None,
                        help="text file with one class name per line (default class_000, ...)")


class Item(NamedTuple):
    """One annotation of the pickle; ``str(item)`` names the file and the frame_dir."""

    src: Path
    ann: dict
    use_score: bool

    def __str__(self) -> str:
        return _where(self.src, self.ann)


def _where(src: Path, ann: dict) -> str:
    return f"{src}: annotation {ann.get('frame_dir', '?')!r}"


def read_class_names(path: Path, num_classes: int | None = None) -> list[str]:
    """Class names from a text file, one per line (blank trailing lines ignored); with
    ``num_classes`` the file must have exactly that many."""
    lines = Path(path).read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if not names or any(not n for n in names):
        raise ValueError(f"{path}: expected one non-empty class name per line")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: class names are not unique")
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f"{path}: {len(names)} class names, expected {num_classes}")
    return names


def default_class_names(num_classes: int) -> list[str]:
    return [f"class_{k:03d}" for k in range(num_classes)]


def label_class_names(labels, where, names_file: Path | None = None,
                      num_classes: int | None = None) -> list[str]:
    """Class names for a source whose class count comes from its labels (pyskl, agcn).

    The count is ``--num-classes`` when given, else the length of the ``--class-names`` file,
    else max label + 1. Without either flag, a max label + 1 above ``2 * distinct + 10``
    (``distinct`` = the number of different labels present) is refused: one stray label of
    10**6 would otherwise make a store of 1,000,001 classes. Errors name ``where``.
    """
    labels = [int(label) for label in labels]
    top, distinct = max(labels) + 1, len(set(labels))
    if num_classes is not None:
        if num_classes < top:
            raise ValueError(f"--num-classes {num_classes}: {where} has labels up to {top - 1}")
        return (read_class_names(names_file, num_classes) if names_file
                else default_class_names(num_classes))
    if names_file:
        names = read_class_names(names_file)
        if len(names) < top:
            raise ValueError(f"{names_file}: {len(names)} class names, but {where} has labels "
                             f"up to {top - 1}")
        return names
    if top > 2 * distinct + 10:
        raise ValueError(f"{where}: labels go up to {top - 1} but only {distinct} different "
                         f"labels are present, which would make {top} classes; pass "
                         f"--num-classes {top} if that is right, otherwise fix the labels")
    return default_class_names(top)


def ntu_meta(name: str) -> dict[str, int]:
    """Setup/view(camera)/subject/replication parsed from an NTU name ``SsssCcccPpppRrrrAaaa``
    (an empty dict for other names)."""
    m = _NTU_NAME.search(name)
    if m is None:
        return {}
    setup, camera, subject, replication, _ = (int(g) for g in m.groups())
    return {"setup": setup, "view": camera, "subject": subject, "replication": replication}


def load_annotations(path: Path, trusted: bool = False) -> dict:
    """The pickled annotation dict (``feeders.safe_pickle``), top-level structure checked."""
    content = safe_pickle.load(path, trusted)
    if not isinstance(content, dict) or "annotations" not in content:
        raise ValueError(f"{path}: expected a dict with keys 'split' and 'annotations', got "
                         f"{type(content).__name__}"
                         f"{' with keys ' + str(sorted(content)) if isinstance(content, dict) else ''}")
    if not isinstance(content["annotations"], list) or not content["annotations"]:
        raise ValueError(f"{path}: field 'annotations' must be a non-empty list")
    splits = content.get("split", {})
    if not isinstance(splits, dict) or not all(isinstance(v, (list, tuple)) for v in splits.values()):
        raise ValueError(f"{path}: field 'split' must map split names to lists of frame_dir")
    return content


def _keypoint(ann: dict, src: Path) -> np.ndarray:
    """The annotation's ``keypoint`` as an array ``(M, T, V, C)``, shape checked."""
    where = _where(src, ann)
    if "keypoint" not in ann:
        raise ValueError(f"{where}: field 'keypoint' missing")
    kp = np.asarray(ann["keypoint"])
    if kp.ndim != 4 or kp.dtype.kind != "f":
        raise ValueError(f"{where}: field 'keypoint' must be a float array (M, T, V, C), got "
                         f"{kp.dtype} {kp.shape}")
    return kp


def annotation_to_array(ann: dict, src: Path, use_score: bool) -> np.ndarray:
    """One annotation -> float32 ``(T, M, V, C')``; C' = C + 1 when the score is appended."""
    where = _where(src, ann)
    kp = _keypoint(ann, src)
    m, t, v, c = kp.shape
    if "total_frames" in ann and int(ann["total_frames"]) != t:
        raise ValueError(f"{where}: field 'total_frames' is {ann['total_frames']}, but "
                         f"'keypoint' has {t} frames")
    if t < 1 or m < 1:
        raise ValueError(f"{where}: field 'keypoint' has shape {kp.shape}, expected M, T >= 1")
    data = kp.astype(np.float32)
    if use_score:
        if "keypoint_score" not in ann:
            raise ValueError(f"{where}: field 'keypoint_score' missing (other annotations "
                             f"have it; use --drop-score to ignore scores)")
        score = np.asarray(ann["keypoint_score"])
        if score.shape != (m, t, v):
            raise ValueError(f"{where}: field 'keypoint_score' has shape {score.shape}, "
                             f"expected {(m, t, v)} to match 'keypoint'")
        data = np.concatenate([data, score.astype(np.float32)[..., None]], axis=-1)
    if not np.isfinite(data).all():
        raise ValueError(f"{where}: field 'keypoint' contains NaN or infinite values")
    return data.transpose(1, 0, 2, 3)


def read(item: Item) -> list[Record]:
    """One annotation -> one Record with data ``(T, M, V, C)``."""
    name = item.ann["frame_dir"]
    return [Record(name=name, label=int(item.ann["label"]),
                   data=annotation_to_array(item.ann, item.src, item.use_score),
                   **ntu_meta(name))]


def _check_annotation_fields(anns: list, src: Path) -> None:
    seen = set()
    for k, ann in enumerate(anns):
        if not isinstance(ann, dict):
            raise ValueError(f"{src}: annotations[{k}] is a {type(ann).__name__}, expected dict")
        for field in ("frame_dir", "label", "keypoint"):
            if field not in ann:
                raise ValueError(f"{src}: annotations[{k}] field {field!r} missing")
        if not isinstance(ann["frame_dir"], str):
            raise ValueError(f"{src}: annotations[{k}] field 'frame_dir' must be a str")
        if ann["frame_dir"] in seen:
            raise ValueError(f"{src}: frame_dir {ann['frame_dir']!r} appears twice")
        seen.add(ann["frame_dir"])
        label = ann["label"]
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
            raise ValueError(f"{src}: annotation {ann['frame_dir']!r} field 'label' is "
                             f"{label!r}, expected an int >= 0")


def make_splits(splits: dict[str, list[str]], src: Path, metas: list[Record]) -> dict[str, list[int]]:
    """The pickle's split lists (frame_dir names) as indices into the written records."""
    position = {rec.name: i for i, rec in enumerate(metas)}
    out = {}
    for split, names in splits.items():
        missing = [n for n in names if n not in position]
        if missing:
            raise ValueError(f"{src}: split {split!r} lists {len(missing)} frame_dir without "
                             f"an annotation, e.g. {missing[:3]}")
        out[split] = [position[n] for n in names]
    return out


def scan(src: Path, opts) -> Source:
    src = Path(src)
    if not src.is_file():
        raise ValueError(f"{src}: pyskl annotation pickle not found")
    content = load_annotations(src, opts.trust_pickle)
    anns = content["annotations"]
    _check_annotation_fields(anns, src)
    first = _keypoint(anns[0], src)
    joints, coords = first.shape[2], first.shape[3]
    for ann in anns:
        kp = _keypoint(ann, src)
        if kp.shape[2:] != (joints, coords):
            raise ValueError(f"{src}: annotation {ann['frame_dir']!r} field 'keypoint' has "
                             f"V, C = {kp.shape[2:]}, but the first annotation has "
                             f"{(joints, coords)}")
    layout, layout_source = choose_layout(opts.layout, joints, (coords,), str(src))
    use_score = coords == 2 and "keypoint_score" in anns[0] and not opts.drop_score
    class_names = label_class_names([a["label"] for a in anns], src, opts.class_names,
                                    opts.num_classes)
    bodies = opts.bodies or max(_keypoint(a, src).shape[0] for a in anns)
    return Source(layout=layout, channels=coords + int(use_score), bodies=bodies,
                  class_names=class_names, items=[Item(src, a, use_score) for a in anns],
                  read=read, parallel=False,
                  make_splits=partial(make_splits, dict(content.get("split", {})), src),
                  layout_source=layout_source)

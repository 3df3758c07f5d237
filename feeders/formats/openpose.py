"""OpenPose per-frame JSON: a folder per video of ``*_keypoints.json`` files (DATA.md §3.1).

Each file is one frame ``{"people": [{"pose_keypoints_2d": [x0, y0, c0, x1, ...]}, ...]}``
(BODY_25: 75 values -> layout ``body25``; COCO: 54 values -> ``openpose18``; any other model
needs ``--layout FILE.json``). A missing joint is ``0, 0, 0``. Frames are ordered by the frame
number in the file name (``<video>_000000000042_keypoints.json``); a frame without people, or a
number missing from the sequence, is an all-zero frame. Records are ``(T, M, V, 3)`` with
channels ``(x, y, confidence)``.

Videos and labels: ``--labels FILE.csv`` with the header ``video,label[,split]`` (``video`` is a
folder under ``--src``; the label a class name or index; the split column, if any, gives the
splits), or, without it, class folders ``SRC/<class>/<video>/*_keypoints.json`` (no splits).
``--class-names FILE`` fixes the class order (one name per line).

People: up to ``--max-bodies`` per frame are kept and tracked across frames: the people of a
frame are matched to the tracks of the earlier frames by the Hungarian algorithm on the mean
distance of the joints both detected (each track remembers the last position of every joint);
tracks not yet started take the remaining people, most confident first; extra people are
dropped. The tracks are then ordered by their total confidence (body 0 is the most visible).

Coordinates: ``--coords normalized`` (default; OpenPose ``--keypoint_scale 3``, values in
[0, 1], a value above 2 is an error) or ``--coords pixel --image-size W H`` (divided by W, H).
"""
from __future__ import annotations

import argparse
import json
import re
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from feeders.formats import Source
from feeders.formats.arrays import make_splits, read_labels_csv, resolve_labels
from feeders.layouts import LayoutError, choose_layout, get_layout
from feeders.store import Record

PATTERN = "*_keypoints.json"
# keypoints per person -> the built-in layout of that OpenPose model
MODELS = {25: "body25", 18: "openpose18"}
_FRAME_NUMBER = re.compile(r"_(\d+)_keypoints\.json$")
NORMALIZED_MAX = 2.0  # a "normalised" coordinate above this is a pixel coordinate
NO_OVERLAP = 1e6  # matching cost of a track and a person with no joint detected in both


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", type=Path, default=None,
                        help="CSV video,label[,split] (video = folder under --src); default: "
                             "class folders SRC/<class>/<video>/")
    parser.add_argument("--class-names", type=Path, default=None,
                        help="text file with one class name per line (the class order)")
    parser.add_argument("--max-bodies", type=int, default=2,
                        help="people kept and tracked per frame (default 2)")
    parser.add_argument("--coords", choices=("normalized", "pixel"), default="normalized",
                        help="coordinates in the files: normalised to [0, 1] (default) or "
                             "pixels (then --image-size is required)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("W", "H"), default=None,
                        help="frame size in pixels; pixel coordinates are divided by it")
    parser.add_argument("--layout", default=None,
                        help="joint layout: a built-in name or a layout JSON file; default "
                             "from the keypoint count (25 body25, 18 openpose18)")


class Video(NamedTuple):
    """One video folder; ``str(video)`` is its path."""

    folder: Path
    name: str
    label: int
    joints: int
    bodies: int
    scale: tuple[float, float] | None  # (W, H) dividing pixel coordinates, None if normalised

    def __str__(self) -> str:
        return str(self.folder)


def frame_files(folder: Path) -> list[tuple[int, Path]]:
    """``(frame index, file)`` of a video folder, the index from 0 (from the frame numbers in
    the names when every file has one, else the sorted order)."""
    files = sorted(folder.glob(PATTERN))
    if not files:
        raise ValueError(f"{folder}: no OpenPose {PATTERN} files")
    numbers = [_FRAME_NUMBER.search(f.name) for f in files]
    if not all(numbers):
        return list(enumerate(files))
    indexed = sorted((int(m.group(1)), f) for m, f in zip(numbers, files))
    first = indexed[0][0]
    return [(n - first, f) for n, f in indexed]


def read_people(path: Path, joints: int | None) -> np.ndarray:
    """The people of one frame file as ``(P, V, 3)`` float32 ``(x, y, confidence)``."""
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    people = content.get("people") if isinstance(content, dict) else None
    if not isinstance(people, list):
        raise ValueError(f"{path}: field 'people' missing or not a list")
    out = []
    for k, person in enumerate(people):
        values = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
        if not isinstance(values, list) or not values or len(values) % 3:
            raise ValueError(f"{path}: people[{k}] field 'pose_keypoints_2d' must be a list "
                             f"of x, y, confidence triples")
        if joints is not None and len(values) != 3 * joints:
            raise ValueError(f"{path}: people[{k}] field 'pose_keypoints_2d' has "
                             f"{len(values)} values, expected {3 * joints} ({joints} joints)")
        out.append(np.asarray(values, dtype=np.float32).reshape(-1, 3))
    v = joints or (out[0].shape[0] if out else 0)
    return np.stack(out) if out else np.zeros((0, v, 3), np.float32)


def pose_distance(track: np.ndarray, person: np.ndarray) -> float:
    """Mean x, y distance over the joints detected (confidence > 0) in both ``(V, 3)``."""
    both = (track[:, 2] > 0) & (person[:, 2] > 0)
    if not both.any():
        return NO_OVERLAP
    return float(np.linalg.norm(track[both, :2] - person[both, :2], axis=1).mean())


def track_people(frames: list[np.ndarray], bodies: int) -> np.ndarray:
    """People per frame (a list of ``(P_t, V, 3)``) -> ``(T, bodies, V, 3)`` tracked bodies.

    Matching: Hungarian on `pose_distance` between started tracks and the frame's people; the
    other people start the free tracks, most confident first. Tracks are then sorted by total
    confidence, descending (ties keep the start order).
    """
    v = next((p.shape[1] for p in frames if p.size), frames[0].shape[1])
    out = np.zeros((len(frames), bodies, v, 3), np.float32)
    last: list[np.ndarray | None] = [None] * bodies  # last position of each joint per track
    for t, people in enumerate(frames):
        if len(people) == 0:
            continue
        started = [s for s in range(bodies) if last[s] is not None]
        pairs = []
        if started:
            cost = np.array([[pose_distance(last[s], p) for p in people] for s in started])
            pairs = [(started[r], c) for r, c in zip(*linear_sum_assignment(cost))]
        taken = {c for _, c in pairs}
        rest = sorted((p for p in range(len(people)) if p not in taken),
                      key=lambda p: -float(people[p][:, 2].mean()))
        free = [s for s in range(bodies) if last[s] is None]
        for s, p in pairs + list(zip(free, rest)):
            out[t, s] = people[p]
            seen = people[p][:, 2] > 0
            last[s] = people[p].copy() if last[s] is None else np.where(seen[:, None], people[p],
                                                                         last[s])
    order = np.argsort(-out[..., 2].sum(axis=(0, 2)), kind="stable")
    return out[:, order]


def read(video: Video) -> list[Record]:
    """One video folder -> one Record ``(T, M, V, 3)``; missing frames are zeros."""
    files = frame_files(video.folder)
    frames = [np.zeros((0, video.joints, 3), np.float32)] * (files[-1][0] + 1)
    for index, path in files:
        people = read_people(path, video.joints)
        if video.scale is not None:
            people[..., 0] /= video.scale[0]
            people[..., 1] /= video.scale[1]
        elif people.size and np.abs(people[..., :2]).max() > NORMALIZED_MAX:
            raise ValueError(f"{path}: coordinates up to {np.abs(people[..., :2]).max():g} are "
                             f"not normalised to [0, 1]; for pixel coordinates pass --coords "
                             f"pixel --image-size W H")
        frames[index] = people
    return [Record(name=video.name, label=video.label, data=track_people(frames, video.bodies))]


def _videos_from_csv(src: Path, labels: Path) -> list[tuple[str, str, str]]:
    rows = read_labels_csv(labels, "video")
    for video, _, _ in rows:
        if not (src / video).is_dir():
            raise ValueError(f"{labels}: lists video {video!r}, but {src / video} is not a "
                             f"folder")
    return rows


def _videos_from_class_folders(src: Path) -> list[tuple[str, str, str]]:
    """``(video, class, '')`` for every ``SRC/<class>/<video>/`` folder."""
    rows, seen = [], {}
    for class_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        if any(class_dir.glob(PATTERN)):
            raise ValueError(f"{class_dir}: holds {PATTERN} files itself; expected class "
                             f"folders {src}/<class>/<video>/, or pass --labels FILE.csv "
                             f"(video,label[,split])")
        for video in sorted(p for p in class_dir.iterdir() if p.is_dir()):
            if video.name in seen:
                raise ValueError(f"{video}: video name {video.name!r} also in {seen[video.name]}")
            seen[video.name] = class_dir
            rows.append((f"{class_dir.name}/{video.name}", class_dir.name, ""))
    if not rows:
        raise ValueError(f"{src}: no class folders with video folders; pass --labels FILE.csv "
                         f"(video,label[,split]) or use {src}/<class>/<video>/{PATTERN}")
    return rows


def _joint_count(src: Path, folders: list[Path]) -> int:
    """Keypoints per person of the first frame file with a person."""
    for folder in folders:
        for _, path in frame_files(folder):
            people = read_people(path, None)
            if len(people):
                return people.shape[1]
    raise ValueError(f"{src}: no person in any {PATTERN} file")


def scan(src: Path, opts) -> Source:
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"{src}: folder of OpenPose video folders not found")
    if opts.max_bodies < 1:
        raise ValueError(f"--max-bodies must be >= 1, got {opts.max_bodies}")
    if (opts.coords == "pixel") != (opts.image_size is not None):
        raise ValueError("--coords pixel needs --image-size W H (and --image-size needs "
                         "--coords pixel)")
    if opts.image_size is not None and min(opts.image_size) < 1:
        raise ValueError(f"--image-size must be positive, got {opts.image_size}")
    rows = _videos_from_csv(src, opts.labels) if opts.labels else _videos_from_class_folders(src)
    labels, class_names = resolve_labels([r[1] for r in rows], opts.class_names,
                                         opts.labels or src, opts.num_classes)
    folders = [src / r[0] for r in rows]
    joints = _joint_count(src, folders)
    if opts.layout is not None:
        layout, layout_source = choose_layout(opts.layout, joints, (2,), str(src))
    elif joints in MODELS:
        layout, layout_source = get_layout(MODELS[joints]), "format"
    else:
        raise LayoutError(f"{src}: {joints} keypoints per person is not an OpenPose model this "
                          f"reader knows (BODY_25: 25, COCO: 18); declare the joints with "
                          f"--layout FILE.json (template: python -m feeders.layouts body25)")
    scale = tuple(float(s) for s in opts.image_size) if opts.image_size else None
    videos = [Video(folder, row[0], label, joints, opts.max_bodies, scale)
              for folder, row, label in zip(folders, rows, labels)]
    return Source(layout=layout, channels=3, bodies=opts.max_bodies, class_names=class_names,
                  items=videos, read=read, parallel=True,
                  make_splits=partial(make_splits, {r[0]: r[2] for r in rows}),
                  layout_source=layout_source)

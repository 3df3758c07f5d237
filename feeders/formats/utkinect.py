"""UTKinect-Action3D continuous streams with per-frame labels (untrimmed, for detection).

Source (``--src`` the ``joints`` folder): ``joints_sSS_eEE.txt`` (subject SS, take EE), one
line per frame: a frame id then 20 joints x (x, y, z), Kinect SDK v1 joint order (the
``kinect20`` layout, as NW-UCLA; tests/test_utkinect.py checks it against the anatomy:
heights, bone lengths, left/right symmetry); and the interval labels ``actionLabel_modified.txt`` (the corrected ranges, used
when present) or ``actionLabel.txt`` (``--labels FILE`` overrides): a header line ``sSS_eEE``
then ten lines ``action: start end``.

- Frames are selected by frame id, never by row number: ids are not contiguous and can repeat;
  the first row of a repeated id is kept (rows in file order).
- An interval ``start end`` covers the frames whose id is within ``[start, end]``
  (inclusive). Where two intervals share a boundary frame, the one starting later wins (so
  labels follow time order; intervals in the file need not be in time order).
- ``NaN NaN`` (a missing interval, s10_e02 carry) is skipped with a warning.

One record per stream (named ``sSS_eEE``, subject SS, replication EE) with the per-frame
labels ``frame_labels`` (0 = background, 1..10 = walk ... clapHands); 11 classes; the record
label is the stream's most frequent action. Stored frames are the kept rows, so instance
boundaries (feeders/untrimmed.py) are row positions in the stored stream. Splits: cross-subject
``xsub_train`` (odd subjects) / ``xsub_val`` (even subjects).
"""
from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from feeders.formats import Source, find_files
from feeders.store import Record

LAYOUT = "kinect20"
JOINTS = 20
CHANNELS = 3
BODIES = 1
ACTIONS = ("walk", "sitDown", "standUp", "pickUp", "carry", "throw", "push", "pull",
           "waveHands", "clapHands")
CLASS_NAMES = ["background", *ACTIONS]
LABEL_FILES = ("actionLabel_modified.txt", "actionLabel.txt")
_STREAM = re.compile(r"^s(\d+)_e(\d+)$")


class Stream(NamedTuple):
    """One work item: a joints file and its intervals [(class 1..10, first id, last id)]."""

    name: str
    path: str
    intervals: tuple

    def __str__(self) -> str:
        return self.path


def read_label_file(path: Path) -> dict[str, list[tuple[int, int, int]]]:
    """The interval file -> {stream name: [(class 1..10, first id, last id)]}; NaN intervals
    are skipped with a warning; anything else malformed is an error naming the line."""
    streams: dict[str, list] = {}
    current = None
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        if _STREAM.match(text):
            current = text
            streams[current] = []
            continue
        action, sep, rest = text.partition(":")
        values = rest.split()
        if not sep or current is None or action.strip() not in ACTIONS or len(values) != 2:
            raise ValueError(f"{path}:{number}: expected a 'sSS_eEE' header or 'action: start "
                             f"end' with action in {', '.join(ACTIONS)}, got {text[:60]!r}")
        if any(v.lower() == "nan" for v in values):
            warnings.warn(f"{path}:{number}: {current} {action.strip()} has no interval "
                          f"(NaN): skipped", stacklevel=2)
            continue
        try:
            start, end = int(values[0]), int(values[1])
        except ValueError:
            raise ValueError(f"{path}:{number}: start and end must be integers frame ids, "
                             f"got {rest.strip()!r}") from None
        if end < start:
            raise ValueError(f"{path}:{number}: interval [{start}, {end}] ends before it starts")
        streams[current].append((ACTIONS.index(action.strip()) + 1, start, end))
    return streams


def read_joints(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A joints file -> (frame ids ``(T,)`` int64, joints ``(T, 1, 20, 3)`` float32), keeping the
    first row of each repeated frame id."""
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no frames")
    for number, fields in enumerate(rows, start=1):
        if len(fields) != 1 + JOINTS * CHANNELS:
            raise ValueError(f"{path}:{number}: {len(fields)} values, expected "
                             f"{1 + JOINTS * CHANNELS} (a frame id then 20 joints x xyz)")
    try:
        values = np.array(rows, dtype=np.float64)
    except ValueError:
        raise ValueError(f"{path}: non-numeric value in the joints") from None
    ids = values[:, 0].astype(np.int64)
    _, first = np.unique(ids, return_index=True)
    keep = np.sort(first)
    return ids[keep], values[keep, 1:].reshape(-1, BODIES, JOINTS, CHANNELS).astype(np.float32)


def frame_labels(ids: np.ndarray, intervals) -> np.ndarray:
    """Per-frame labels ``(T,)`` int16 of frames with ``ids``: the interval whose [start, end]
    holds the id; on a shared frame the later-starting interval wins."""
    labels = np.zeros(len(ids), dtype=np.int16)
    for action, start, end in sorted(intervals, key=lambda iv: iv[1]):
        labels[(ids >= start) & (ids <= end)] = action
    return labels


def read(stream: Stream) -> list[Record]:
    ids, data = read_joints(Path(stream.path))
    labels = frame_labels(ids, stream.intervals)
    actions = labels[labels > 0]
    subject, take = (int(g) for g in _STREAM.match(stream.name).groups())
    return [Record(name=stream.name, label=int(np.bincount(actions).argmax()) if actions.size
                   else 0, data=data, subject=subject, replication=take,
                   frame_arrays={"frame_labels": labels})]


def make_splits(metas: list[Record]) -> dict[str, list[int]]:
    return {"xsub_train": [i for i, m in enumerate(metas) if m.subject % 2 == 1],
            "xsub_val": [i for i, m in enumerate(metas) if m.subject % 2 == 0]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", type=Path, default=None,
                        help="UTKinect interval file (default: SRC/actionLabel_modified.txt, "
                             "else SRC/actionLabel.txt)")


def label_file(src: Path, opts) -> Path:
    if getattr(opts, "labels", None):
        if not Path(opts.labels).is_file():
            raise ValueError(f"--labels {opts.labels}: file not found")
        return Path(opts.labels)
    for name in LABEL_FILES:
        if (src / name).is_file():
            return src / name
    raise ValueError(f"{src}: no label file ({' or '.join(LABEL_FILES)})")


def scan(src: Path, opts) -> Source:
    src = Path(src)
    files = find_files(src, "joints", "joints_s*_e*.txt", "UTKinect joints")
    labels_path = label_file(files[0].parent, opts)   # the label files sit beside the joints
    intervals = read_label_file(labels_path)
    items = []
    for path in files:
        name = path.stem[len("joints_"):]
        if not _STREAM.match(name):
            raise ValueError(f"{path}: expected a name joints_sSS_eEE.txt")
        if name not in intervals:
            raise ValueError(f"{path}: stream {name} has no intervals in {labels_path}")
        items.append(Stream(name, str(path), tuple(intervals[name])))
    return Source(layout=LAYOUT, channels=CHANNELS, bodies=BODIES, class_names=CLASS_NAMES,
                  items=items, read=read, parallel=False, make_splits=make_splits)

"""PKU-MMD phase I/II skeletons + labels + splits, as clips (recognition) or whole videos (detection).

Source layout (the official release, ``--src`` a folder):

- ``skeleton/`` (or ``PKU_Skeleton_Renew/``): one ``<video>.txt`` per video, one line per frame
  with 150 numbers = 2 bodies x 25 joints x (x, y, z); body 2 is all zeros when absent;
- ``label/`` (or ``Train_Label_PKU_final/``; ``--labels DIR`` overrides): one ``<video>.txt`` per
  video, lines ``class,start,end,confidence`` with class 1-based (1..51);
- ``split/`` (``--split-file FILE`` overrides, repeatable): ``cross-subject*.txt`` and
  ``cross-view*.txt``, each a ``Training videos:`` line followed by comma-separated video ids,
  then a ``Validation videos:`` (officially spelt ``Validataion``) line and its ids.

The dataset does not document its frame-index convention, so ``--label-frames`` states it:
``0-exclusive`` (the default, the convention of the common public PKU-MMD preprocessing
scripts): 0-based with ``end`` exclusive, the clip is ``frames[start:end]`` and an interval
must satisfy ``0 <= start < end <= T``; ``1-inclusive``: 1-based with ``end`` included, the
clip is ``frames[start - 1:end]`` (``1 <= start <= end <= T``). Either way the store holds
0-based, end-exclusive intervals, so detection proposals (0-based, end exclusive) compare
with label files of the default convention as they are.

Tasks (``--task``):

- ``recognition``: one record per labelled interval, named ``<video>_<k>`` (k = 0-based line
  number among the video's intervals), label = class - 1, 51 classes;
- ``detection``: one record per whole video with a per-frame array ``frame_labels`` (int16,
  0 = background, 1..51 = action; later label lines win where intervals overlap) stored in
  ``frame_labels.npy`` beside ``frames.npy`` (``Store.frame_array('frame_labels', i)``);
  52 classes (``background`` + the 51 actions) and the record label is the video's most
  frequent action (0 when it has none).

Splits: ``xsub_train``/``xsub_val`` and ``xview_train``/``xview_val`` from the split files;
a video listed in no split file is written but belongs to no split.
"""

from __future__ import annotations

import argparse
import functools
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from feeders.formats import Source
from feeders.layouts import get_layout
from feeders.store import Record

LAYOUT = "ntu25"
BODIES = 2
CHANNELS = 3
SKELETON_DIRS = ("skeleton", "PKU_Skeleton_Renew")
LABEL_DIRS = ("label", "Train_Label_PKU_final")
SPLIT_DIR = "split"
SPLIT_KINDS = {"subject": "xsub", "view": "xview"}
VIEWS = {"L": 1, "M": 2, "R": 3}
CLASS_NAMES = [  # ids 1..51 of the PKU-MMD action list (Actions.xlsx)
    "bow", "brushing hair", "brushing teeth", "check time (from watch)", "cheer up",
    "clapping", "cross hands in front (say stop)", "drink water", "drop", "eat meal/snack",
    "falling", "giving something to other person", "hand waving", "handshaking",
    "hopping (one foot jumping)", "hugging other person", "jump up", "kicking other person",
    "kicking something", "make a phone call/answer phone", "pat on back of other person",
    "pickup", "playing with phone/tablet", "point finger at the other person",
    "pointing to something with finger", "punching/slapping other person",
    "pushing other person", "put on a hat/cap", "put something inside pocket", "reading",
    "rub two hands together", "salute", "sitting down", "standing up", "take off a hat/cap",
    "take off glasses", "take off jacket", "take out something from pocket", "taking a selfie",
    "tear up paper", "throw", "touch back (backache)", "touch chest (stomachache/heart pain)",
    "touch head (headache)", "touch neck (neckache)", "typing on a keyboard",
    "use a fan (with hand or paper)/feeling warm", "wear jacket", "wear on glasses",
    "wipe face", "writing",
]


class Video(NamedTuple):
    """One work item: a video's skeleton file, its label file and the task."""

    name: str
    skeleton: str
    labels: str
    task: str
    label_frames: str = "0-exclusive"

    def __str__(self) -> str:
        return self.skeleton


class Interval(NamedTuple):
    action: int  # 1-based class id
    start: int
    end: int  # exclusive


def read_skeleton(path: Path) -> np.ndarray:
    """A skeleton ``.txt`` file -> ``(T, 2, 25, 3)`` float32 (one line per frame)."""
    per_frame = BODIES * get_layout(LAYOUT).num_joints * CHANNELS
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty skeleton file (no frames)")
    try:
        values = np.array(" ".join(lines).split(), dtype=np.float32)
    except ValueError:
        values = None
    if values is None or values.size != per_frame * len(lines):
        _raise_bad_line(path, per_frame)
    return values.reshape(len(lines), BODIES, -1, CHANNELS)


def _raise_bad_line(path: Path, per_frame: int) -> None:
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            [float(f) for f in fields]
        except ValueError:
            raise ValueError(f"{path}:{number}: non-numeric value in {line[:60]!r}") from None
        if len(fields) != per_frame:
            raise ValueError(f"{path}:{number}: {len(fields)} values, expected {per_frame} "
                             f"({BODIES} bodies x 25 joints x xyz)")
    raise AssertionError("unreachable: a bad line was expected")


def _parse_label_line(line: str) -> tuple[int, int, int] | None:
    """``class,start,end[,confidence]`` -> (class, start, end), None when malformed."""
    fields = [f.strip() for f in line.split(",")]
    if len(fields) not in (3, 4):
        return None
    try:
        if len(fields) == 4:
            float(fields[3])
        return int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        return None


LABEL_FRAMES = ("0-exclusive", "1-inclusive")


def read_labels(path: Path, num_frames: int, label_frames: str = "0-exclusive") -> list[Interval]:
    """A label file -> 0-based end-exclusive intervals, checked against the class range and
    the video length; ``label_frames`` is the file's convention (``LABEL_FRAMES``)."""
    if label_frames not in LABEL_FRAMES:
        raise ValueError(f"label_frames must be one of {LABEL_FRAMES}, got {label_frames!r}")
    intervals = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parsed = _parse_label_line(line)
        if parsed is None:
            raise ValueError(f"{path}:{number}: expected 'class,start,end,confidence' "
                             f"(integers, then a number), got {line.strip()[:60]!r}")
        action, start, end = parsed
        if label_frames == "1-inclusive":
            if start < 1:
                raise ValueError(f"{path}:{number}: start {start} < 1, but --label-frames "
                                 f"1-inclusive counts frames from 1")
            start -= 1
        if not 1 <= action <= len(CLASS_NAMES):
            raise ValueError(f"{path}:{number}: class {action} outside 1..{len(CLASS_NAMES)}")
        if not 0 <= start < end <= num_frames:
            raise ValueError(f"{path}:{number}: interval [{start}, {end}) not within the "
                             f"video's {num_frames} frames (need 0 <= start < end <= T; "
                             f"0-based, end exclusive, read as --label-frames {label_frames})")
        intervals.append(Interval(action, start, end))
    return intervals


def frame_labels(intervals: list[Interval], num_frames: int) -> np.ndarray:
    """Per-frame class ids ``(T,)`` int16: 0 background, 1..51 the interval's action."""
    labels = np.zeros(num_frames, dtype=np.int16)
    for iv in intervals:
        labels[iv.start:iv.end] = iv.action
    return labels


def video_view(name: str) -> int:
    """Camera view of a video id such as ``0002-L`` (L=1, M=2, R=3), -1 when unknown."""
    match = re.search(r"-([LMR])$", name)
    return VIEWS[match.group(1)] if match else -1


def read(video: Video) -> list[Record]:
    """One video -> its labelled clips (recognition) or itself with frame labels (detection)."""
    data = read_skeleton(Path(video.skeleton))
    intervals = read_labels(Path(video.labels), len(data), video.label_frames)
    view = video_view(video.name)
    if video.task == "recognition":
        return [Record(name=f"{video.name}_{k}", label=iv.action - 1,
                       data=data[iv.start:iv.end], view=view)
                for k, iv in enumerate(intervals)]
    per_frame = frame_labels(intervals, len(data))
    actions = per_frame[per_frame > 0]
    label = int(np.bincount(actions).argmax()) if actions.size else 0
    return [Record(name=video.name, label=label, data=data, view=view,
                   frame_arrays={"frame_labels": per_frame})]


def read_split_file(path: Path) -> tuple[list[str], list[str]]:
    """A split file -> (training video ids, validation video ids)."""
    sections: dict[str, list[str]] = {"train": [], "val": []}
    current = None
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        head, _, rest = line.partition(":")
        key = head.strip().lower()
        if key.startswith("train"):
            current, line = "train", rest
        elif key.startswith(("valid", "test")):
            current, line = "val", rest
        ids = [t for t in re.split(r"[,\s]+", line) if t]
        if ids and current is None:
            raise ValueError(f"{path}:{number}: video ids before a 'Training videos:' line")
        if current is not None:
            sections[current] += ids
    if not sections["train"] or not sections["val"]:
        raise ValueError(f"{path}: expected 'Training videos:' and 'Validation videos:' "
                         f"sections with video ids")
    return sections["train"], sections["val"]


def split_kind(path: Path) -> str:
    """``cross-subject*.txt`` -> ``xsub``, ``cross-view*.txt`` -> ``xview``."""
    for word, kind in SPLIT_KINDS.items():
        if word in Path(path).name.lower():
            return kind
    raise ValueError(f"{path}: cannot tell the split from the file name "
                     f"(expected 'subject' or 'view' in it)")


def make_splits(metas: list[Record], split_sets: dict[str, tuple[set, set]],
                task: str) -> dict[str, list[int]]:
    video = [m.name.rsplit("_", 1)[0] if task == "recognition" else m.name for m in metas]
    splits = {}
    for kind, (train, val) in split_sets.items():
        splits[f"{kind}_train"] = [i for i, v in enumerate(video) if v in train]
        splits[f"{kind}_val"] = [i for i, v in enumerate(video) if v in val]
    return splits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=["recognition", "detection"], default="recognition",
                        help="recognition: labelled intervals as clips; detection: whole "
                             "videos with per-frame labels (0 = background)")
    parser.add_argument("--label-frames", choices=LABEL_FRAMES, default="0-exclusive",
                        help="frame-index convention of the label files (undocumented by the "
                             "dataset): 0-exclusive = frames[start:end], 1-inclusive = "
                             "frames[start - 1:end]")
    parser.add_argument("--labels", type=Path, default=None,
                        help="label folder (default: SRC/label or SRC/Train_Label_PKU_final)")
    parser.add_argument("--split-file", type=Path, action="append", default=None,
                        help="cross-subject / cross-view split file, repeatable "
                             "(default: every .txt in SRC/split)")


def _find_dir(src: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (src / name).is_dir():
            return src / name
    raise ValueError(f"{src}: no {what} folder (expected one of {', '.join(names)})")


def _split_files(src: Path, opts) -> list[Path]:
    if opts.split_file:
        files = [Path(f) for f in opts.split_file]
    elif (src / SPLIT_DIR).is_dir():
        files = sorted((src / SPLIT_DIR).glob("*.txt"))
    else:
        files = []
    for f in files:
        if not f.is_file():
            raise ValueError(f"--split-file {f}: file not found")
    return files


def scan(src: Path, opts) -> Source:
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"{src}: expected a PKU-MMD folder with {SKELETON_DIRS[0]}/ and "
                         f"{LABEL_DIRS[0]}/")
    skeleton_dir = _find_dir(src, SKELETON_DIRS, "skeleton")
    label_dir = Path(opts.labels) if opts.labels else _find_dir(src, LABEL_DIRS, "label")
    if not label_dir.is_dir():
        raise ValueError(f"--labels {label_dir}: folder not found")
    skeletons = sorted(skeleton_dir.glob("*.txt"))
    if not skeletons:
        raise ValueError(f"{skeleton_dir}: no skeleton .txt files found")
    videos = []
    for path in skeletons:
        labels = label_dir / path.name
        if not labels.is_file():
            raise ValueError(f"{path}: no label file {labels}")
        videos.append(Video(path.stem, str(path), str(labels), opts.task,
                            getattr(opts, "label_frames", "0-exclusive")))
    split_sets = {}
    for f in _split_files(src, opts):
        train, val = read_split_file(f)
        split_sets[split_kind(f)] = (set(train), set(val))
    class_names = CLASS_NAMES if opts.task == "recognition" else ["background", *CLASS_NAMES]
    return Source(layout=LAYOUT, channels=CHANNELS, bodies=BODIES, class_names=class_names,
                  items=videos, read=read, parallel=True,
                  make_splits=functools.partial(make_splits, split_sets=split_sets,
                                                task=opts.task))

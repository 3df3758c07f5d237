"""NTU RGB+D 60/120 raw Kinect v2 `.skeleton` files (one file per sample, denoised, 2 bodies).

File layout (docs/DATA.md §1): line 1 the frame count; per frame the body count, then per body
one info line (bodyID, a 17-digit integer, kept as a string, and 9 more values), the joint count
and one line of 12 values per joint (x, y, z first). Processing follows the CTR-GCN/SGN family:

1. drop bodies present in <= 11 frames (``MIN_BODY_FRAMES``);
2. "spread" denoising: a frame of a body is noisy when its x-range > 0.8 x its y-range; drop the
   body when >= 69.754 % of its frames are noisy (``SPREAD_RATIO``, ``NOISY_FRAME_RATIO``);
3. keep the ``bodies`` (2) bodies with the most motion (sum over joints and coordinates of the
   variance over time), most moving first;
4. remove frames where none of the kept bodies is present.

Denoising only applies while more than one body is left, and a step that would remove every
body is skipped (the sample keeps the bodies it had before that step).
Files without any body are skipped. Labels are action - 1.
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
MIN_BODY_FRAMES = 11
SPREAD_RATIO = 0.8
NOISY_FRAME_RATIO = 0.69754
NAME_PATTERN = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")

NTU60_XSUB_TRAIN = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
NTU120_XSUB_TRAIN = NTU60_XSUB_TRAIN + (
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86,
    89, 91, 92, 93, 94, 95, 97, 98, 100, 103)
NTU60_XVIEW_TRAIN = (2, 3)  # cameras

CLASS_NAMES = [
    "drink water", "eat meal/snack", "brushing teeth", "brushing hair", "drop", "pickup",
    "throw", "sitting down", "standing up (from sitting position)", "clapping", "reading",
    "writing", "tear up paper", "wear jacket", "take off jacket", "wear a shoe",
    "take off a shoe", "wear on glasses", "take off glasses", "put on a hat/cap",
    "take off a hat/cap", "cheer up", "hand waving", "kicking something", "reach into pocket",
    "hopping (one foot jumping)", "jump up", "make a phone call/answer phone",
    "playing with phone/tablet", "typing on a keyboard", "pointing to something with finger",
    "taking a selfie", "check time (from watch)", "rub two hands together", "nod head/bow",
    "shake head", "wipe face", "salute", "put the palms together",
    "cross hands in front (say stop)", "sneeze/cough", "staggering", "falling",
    "touch head (headache)", "touch chest (stomachache/heart pain)", "touch back (backache)",
    "touch neck (neckache)", "nausea or vomiting condition",
    "use a fan (with hand or paper)/feeling warm", "punching/slapping other person",
    "kicking other person", "pushing other person", "pat on back of other person",
    "point finger at the other person", "hugging other person",
    "giving something to other person", "touch other person's pocket", "handshaking",
    "walking towards each other", "walking apart from each other",
    # NTU-120 additions (A061-A120)
    "put on headphone", "take off headphone", "shoot at the basket", "bounce ball",
    "tennis bat swing", "juggling table tennis balls", "hush (quite)", "flick hair",
    "thumb up", "thumb down", "make ok sign", "make victory sign", "staple book",
    "counting money", "cutting nails", "cutting paper (using scissors)", "snapping fingers",
    "open bottle", "sniff (smell)", "squat down", "toss a coin", "fold paper", "ball up paper",
    "play magic cube", "apply cream on face", "apply cream on hand back", "put on bag",
    "take off bag", "put something into a bag", "take something out of a bag", "open a box",
    "move heavy objects", "shake fist", "throw up cap/hat", "hands up (both hands)",
    "cross arms", "arm circles", "arm swings", "running on the spot", "butt kicks (kick backward)",
    "cross toe touch", "side kick", "yawn", "stretch oneself", "blow nose",
    "hit other person with something", "wield knife towards other person",
    "knock over other person (hit with body)", "grab other person's stuff",
    "shoot at other person with a gun", "step on foot", "high-five", "cheers and drink",
    "carry something with other person", "take a photo of other person",
    "follow other person", "whisper in other person's ear", "exchange things with other person",
    "support somebody with hand", "finger-guessing game (playing rock-paper-scissors)",
]


class SampleId(NamedTuple):
    setup: int
    camera: int
    subject: int
    replication: int
    action: int


class Body(NamedTuple):
    """One tracked body: the frames it appears in ``(T_b,)`` and its xyz ``(T_b, V, 3)``."""

    body_id: str
    frames: np.ndarray
    xyz: np.ndarray


def parse_name(path: Path) -> SampleId:
    """``SsssCcccPpppRrrrAaaa`` -> setup, camera, subject, replication, action (all 1-based)."""
    match = NAME_PATTERN.search(Path(path).stem)
    if match is None:
        raise ValueError(f"{path}: file name does not match SsssCcccPpppRrrrAaaa")
    return SampleId(*(int(g) for g in match.groups()))


class _Lines:
    """Line cursor over a text file whose errors name the file and the 1-based line."""

    def __init__(self, path: Path):
        self.path = path
        self.lines = Path(path).read_text().splitlines()
        self.pos = 0

    def error(self, problem: str, line: int | None = None) -> ValueError:
        line = self.pos if line is None else line
        return ValueError(f"{self.path}:{line}: {problem}")

    def next(self, what: str) -> str:
        if self.pos >= len(self.lines):
            raise self.error(f"file truncated: expected {what}, reached the end of the file",
                             len(self.lines))
        self.pos += 1
        return self.lines[self.pos - 1].strip()

    def next_int(self, what: str) -> int:
        text = self.next(what)
        try:
            return int(text)
        except ValueError:
            raise self.error(f"expected {what} (an integer), got {text[:40]!r}") from None

    def next_block(self, rows: int, cols: int, what: str) -> np.ndarray:
        """The next ``rows`` lines as a float ``(rows, cols)`` array."""
        start = self.pos
        if start + rows > len(self.lines):
            raise self.error(f"file truncated: expected {rows} lines of {what}, only "
                             f"{len(self.lines) - start} left", len(self.lines))
        block = self.lines[start:start + rows]
        self.pos += rows
        try:
            values = np.array(" ".join(block).split(), dtype=np.float64)
        except ValueError:
            values = None
        if values is None or values.size != rows * cols:
            for k, line in enumerate(block):
                fields = line.split()
                try:
                    [float(f) for f in fields]
                except ValueError:
                    fields = None
                if fields is None or len(fields) != cols:
                    raise self.error(f"expected {cols} numbers for {what}, got {line[:60]!r}",
                                     start + k + 1)
        return values.reshape(rows, cols)


def read_skeleton_file(path: Path, num_joints: int) -> tuple[int, list[Body]]:
    """Parse a raw ``.skeleton`` file -> (frame count, bodies in order of first appearance)."""
    lines = _Lines(path)
    num_frames = lines.next_int("the frame count")
    frames: dict[str, list[int]] = {}
    coords: dict[str, list[np.ndarray]] = {}
    for t in range(num_frames):
        num_bodies = lines.next_int(f"the body count of frame {t + 1}")
        for _ in range(num_bodies):
            info = lines.next(f"a body info line in frame {t + 1}").split()
            if not info:
                raise lines.error("empty body info line, expected the bodyID and 9 values")
            body_id = info[0]
            joints = lines.next_int("the joint count")
            if joints != num_joints:
                raise lines.error(f"joint count {joints}, expected {num_joints}")
            block = lines.next_block(joints, 12, "a joint (x y z depthX depthY colorX colorY "
                                                 "orientationWXYZ trackingState)")
            frames.setdefault(body_id, []).append(t)
            coords.setdefault(body_id, []).append(block[:, :3])
    if any(line.strip() for line in lines.lines[lines.pos:]):
        raise lines.error(f"unexpected content after the {num_frames} frames announced on "
                          f"line 1", lines.pos + 1)
    bodies = [Body(b, np.array(frames[b]), np.stack(coords[b]).astype(np.float32))
              for b in frames]
    return num_frames, bodies


def noisy_frame_ratio(body: Body) -> float:
    """Fraction of frames whose x-range exceeds ``SPREAD_RATIO`` x the y-range."""
    spread = body.xyz.max(axis=1) - body.xyz.min(axis=1)  # (T_b, 3)
    return float(np.mean(spread[:, 0] > SPREAD_RATIO * spread[:, 1]))


def motion(body: Body) -> float:
    """Sum over joints and coordinates of the variance over time."""
    return float(body.xyz.var(axis=0).sum())


def select_bodies(bodies: list[Body], max_bodies: int) -> list[Body]:
    """Denoise (length, then spread) and keep the ``max_bodies`` most moving, most first."""
    if len(bodies) > 1:
        bodies = [b for b in bodies if len(b.frames) > MIN_BODY_FRAMES] or bodies
    if len(bodies) > 1:
        bodies = [b for b in bodies if noisy_frame_ratio(b) < NOISY_FRAME_RATIO] or bodies
    return sorted(bodies, key=motion, reverse=True)[:max_bodies]


def to_array(bodies: list[Body], num_frames: int, max_bodies: int) -> np.ndarray:
    """Body slots -> ``(T, M, V, 3)`` float32 with frames where no body is present removed."""
    num_joints = bodies[0].xyz.shape[1]
    data = np.zeros((num_frames, max_bodies, num_joints, 3), dtype=np.float32)
    present = np.zeros(num_frames, dtype=bool)
    for slot, body in enumerate(bodies):
        data[body.frames, slot] = body.xyz
        present[body.frames] = True
    return data[present]


def read(path: str) -> list[Record]:
    """One ``.skeleton`` file -> [Record] (or [] when it holds no body)."""
    path = Path(path)
    sample = parse_name(path)
    num_frames, bodies = read_skeleton_file(path, get_layout(LAYOUT).num_joints)
    if not bodies:
        return []
    data = to_array(select_bodies(bodies, BODIES), num_frames, BODIES)
    return [Record(name=path.stem, label=sample.action - 1, data=data,
                   subject=sample.subject, view=sample.camera, setup=sample.setup,
                   replication=sample.replication)]


def make_splits(metas: list[Record], benchmark: str) -> dict[str, list[int]]:
    """NTU-60: xsub (subjects) and xview (cameras 2, 3 train); NTU-120: xsub and xset (even
    setups train)."""
    if benchmark == "ntu60":
        rules = {"xsub": lambda r: r.subject in NTU60_XSUB_TRAIN,
                 "xview": lambda r: r.view in NTU60_XVIEW_TRAIN}
    else:
        rules = {"xsub": lambda r: r.subject in NTU120_XSUB_TRAIN,
                 "xset": lambda r: r.setup % 2 == 0}
    splits = {}
    for name, is_train in rules.items():
        flags = [is_train(r) for r in metas]
        splits[f"{name}_train"] = [i for i, f in enumerate(flags) if f]
        splits[f"{name}_val"] = [i for i, f in enumerate(flags) if not f]
    return splits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", choices=["auto", "ntu60", "ntu120"], default="auto",
                        help="class set and splits; auto: ntu120 if any action > 60")
    parser.add_argument("--ignore", type=Path, default=None,
                        help="text file of sample names to skip, one per line (e.g. the "
                             "official list of samples with missing skeletons)")


def _read_ignore_list(path: Path | None) -> set[str]:
    if path is None:
        return set()
    if not Path(path).is_file():
        raise ValueError(f"--ignore {path}: file not found")
    return {Path(line.strip()).stem for line in Path(path).read_text().splitlines()
            if line.strip()}


def scan(src: Path, opts) -> Source:
    """Find ``*.skeleton`` files under ``src`` (a folder, searched recursively, or one file)."""
    src = Path(src)
    files = [src] if src.is_file() else sorted(src.rglob("*.skeleton"), key=lambda p: p.name)
    if not files:
        raise ValueError(f"{src}: no .skeleton files found")
    ignored = _read_ignore_list(opts.ignore)
    files = [f for f in files if f.stem not in ignored]
    if not files:
        raise ValueError(f"{src}: every .skeleton file is in the --ignore list {opts.ignore}")
    actions = [parse_name(f).action for f in files]
    benchmark = opts.benchmark
    if benchmark == "auto":
        benchmark = "ntu120" if max(actions) > 60 else "ntu60"
    num_classes = 60 if benchmark == "ntu60" else 120
    for f, a in zip(files, actions):
        if not 1 <= a <= num_classes:
            raise ValueError(f"{f}: action A{a:03d} outside 1..{num_classes} ({benchmark})")
    return Source(layout=LAYOUT, channels=3, bodies=BODIES,
                  class_names=CLASS_NAMES[:num_classes], items=[str(f) for f in files],
                  read=read, parallel=True,
                  make_splits=functools.partial(make_splits, benchmark=benchmark))

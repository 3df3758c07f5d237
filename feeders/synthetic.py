"""Embedded default dataset: synthetic skeleton actions from a small kinematic body model.

Every sequence is produced by forward kinematics over the NTU RGB+D 25-joint parent tree:
a subject has fixed bone lengths (height and limb proportions), an action class drives
joint-angle trajectories (plus idle sway), and a virtual Kinect-like camera at a random yaw
(+-45 deg), distance, height and tilt records the joints with noise and occasional dropouts.

Output arrays are ``(T, M, V, C)`` float32 with T in 40..150 frames, M = 2 bodies (an absent
body is all zeros), V = 25 joints in NTU order, C = 3 (x, y up, z depth; metres).
Sequence ``i`` of seed ``s`` depends only on ``np.random.default_rng([s, i])`` (and the
subject tables of seed ``s``), so any range of indices can be generated in any process.
Subjects 1..40; the cross-subject split puts odd subjects in ``xsub_train`` and even ones in
``xsub_val``.

    python -m feeders.synthetic --out DIR [--num-sequences 4000] [--seed 0] [--workers 2]
    python -m feeders.synthetic --untrimmed --out DIR [--num-streams 40] [--seed 0]

``--untrimmed`` writes whole streams for temporal detection (``generate_stream``): one subject
performs several one-person actions in a row with idle and transition frames between them,
per-frame labels in the ``frame_labels`` array (0 = background).

Body frame convention (used by all angle code below): x = the subject's left, y = up,
z = the subject's forward. A bone's local rotation is ``Ry(ay) @ Rz(az) @ Rx(ax)`` relative to
its parent bone's frame.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from feeders.store import Record, StoreWriter, check_replaceable, error_message
from progress import progress_bar

LAYOUT = "ntu25"
NUM_JOINTS = 25
NUM_BODIES = 2
CHANNELS = 3
NUM_SUBJECTS = 40
MIN_LEN, MAX_LEN = 40, 150
FPS = 30.0
DEFAULT_NUM_SEQUENCES = 4000
_SUBJECT_TAG = 0x5B1EC7  # keeps subject streams apart from sequence streams [seed, i]

# Nuisance variation (tuned so that raw-coordinate 1-NN lands well below a learned model).
CAMERA_YAW = 45.0        # camera azimuth around the actor, +- degrees
CAMERA_TILT = 15.0       # camera pitch, +- degrees
BODY_YAW = 30.0          # a single actor's own orientation, +- degrees
IDLE_SHARE = 0.35        # up to this fraction of frames idle before and after the action
BYSTANDER = 0.4          # probability of a bystander in one-person classes
POSTURE_JITTER = 15.0    # per-sequence change of the resting arm posture, degrees

CLASS_NAMES = (
    "wave one hand",
    "clap",
    "squat",
    "front kick",
    "bow",
    "punch",
    "raise both arms",
    "jump up",
    "side-step walk",
    "turn around / look back",
    "handshake",
    "push other person",
)
TWO_PERSON = frozenset({10, 11})

# NTU joint indices (0-based).
(SPINE_BASE, SPINE_MID, NECK, HEAD, L_SHOULDER, L_ELBOW, L_WRIST, L_HAND, R_SHOULDER, R_ELBOW,
 R_WRIST, R_HAND, L_HIP, L_KNEE, L_ANKLE, L_FOOT, R_HIP, R_KNEE, R_ANKLE, R_FOOT,
 SPINE_SHOULDER, L_TIP, L_THUMB, R_TIP, R_THUMB) = range(25)

# Kinematic tree: parent of each joint (root is its own parent). Hand tip and thumb hang off the
# hand so that they move rigidly with it.
PARENTS = (0, 0, 20, 2, 20, 4, 5, 6, 20, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18, 1, 7, 7, 11, 11)
FK_ORDER = (0, 1, 20, 2, 3, 4, 5, 6, 7, 21, 22, 8, 9, 10, 11, 23, 24, 12, 13, 14, 15, 16, 17, 18, 19)
MIRROR = (0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 16, 17, 18, 19, 12, 13, 14, 15, 20, 23, 24, 21, 22)
FEET = (L_ANKLE, L_FOOT, R_ANKLE, R_FOOT)

# Rest pose of a 1.75 m adult: offset of each joint from its parent in the parent bone frame (m).
_REST = np.zeros((NUM_JOINTS, 3))
for _j, _off in {
    SPINE_MID: (0, 0.27, 0), SPINE_SHOULDER: (0, 0.25, 0), NECK: (0, 0.07, 0),
    HEAD: (0, 0.15, 0.04), L_SHOULDER: (0.18, -0.03, 0), L_ELBOW: (0, -0.28, 0),
    L_WRIST: (0, -0.25, 0), L_HAND: (0, -0.07, 0), L_TIP: (0, -0.08, 0.0),
    L_THUMB: (-0.03, -0.03, 0.04), L_HIP: (0.09, -0.04, 0), L_KNEE: (0, -0.43, 0),
    L_ANKLE: (0, -0.41, 0), L_FOOT: (0, -0.06, 0.12),
}.items():
    _REST[_j] = _off
    _REST[MIRROR[_j]] = (-_off[0], _off[1], _off[2])

# Body segments whose length a subject scales together: name -> bones (child joints), left side.
_SEGMENTS = {
    "torso": (SPINE_MID, SPINE_SHOULDER), "head": (NECK, HEAD), "clavicle": (L_SHOULDER,),
    "upper_arm": (L_ELBOW,), "forearm": (L_WRIST,), "hand": (L_HAND, L_TIP, L_THUMB),
    "pelvis": (L_HIP,), "thigh": (L_KNEE,), "shin": (L_ANKLE,), "foot": (L_FOOT,),
}

# Degrees of freedom: name -> (bone = child joint on the left/midline, axis, sign). Signs make a
# positive value mean: flex forward / abduct / turn medially (limbs), bend forward / to the left,
# twist or look to the left (midline). Right-side limbs mirror axes y and z.
_DOFS = {
    "spine_flex": (SPINE_MID, 0, 1), "spine_bend": (SPINE_MID, 2, -1),
    "spine_twist": (SPINE_MID, 1, 1), "chest_flex": (SPINE_SHOULDER, 0, 1),
    "chest_twist": (SPINE_SHOULDER, 1, 1), "neck_flex": (NECK, 0, 1),
    "head_flex": (HEAD, 0, 1), "head_yaw": (HEAD, 1, 1),
    "shoulder_flex": (L_ELBOW, 0, -1), "shoulder_abd": (L_ELBOW, 2, 1),
    "shoulder_horiz": (L_ELBOW, 1, -1), "elbow_flex": (L_WRIST, 0, -1),
    "elbow_side": (L_WRIST, 2, 1), "wrist_flex": (L_HAND, 0, -1),
    "hip_flex": (L_KNEE, 0, -1), "hip_abd": (L_KNEE, 2, 1),
    "knee_flex": (L_ANKLE, 0, 1), "ankle_flex": (L_FOOT, 0, -1),
    "root_yaw": (SPINE_BASE, 1, 1),
}
_LIMB_DOFS = frozenset(n for n in _DOFS if n.split("_")[0] in
                       ("shoulder", "elbow", "wrist", "hip", "knee", "ankle"))


# ----------------------------------------------------------------------------- kinematics

def rotation_matrices(angles: np.ndarray) -> np.ndarray:
    """Local bone rotations ``Ry(ay) @ Rz(az) @ Rx(ax)``.

    angles: ``(..., 3)`` radians ``(ax, ay, az)`` -> ``(..., 3, 3)``.
    """
    c, s = np.cos(angles), np.sin(angles)
    one, zero = np.ones_like(c[..., 0]), np.zeros_like(c[..., 0])
    rx = np.stack([one, zero, zero, zero, c[..., 0], -s[..., 0], zero, s[..., 0], c[..., 0]], -1)
    ry = np.stack([c[..., 1], zero, s[..., 1], zero, one, zero, -s[..., 1], zero, c[..., 1]], -1)
    rz = np.stack([c[..., 2], -s[..., 2], zero, s[..., 2], c[..., 2], zero, zero, zero, one], -1)
    shape = angles.shape[:-1] + (3, 3)
    return ry.reshape(shape) @ rz.reshape(shape) @ rx.reshape(shape)


def forward_kinematics(offsets: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Joint positions of one body with its root at the origin.

    offsets: ``(V, 3)`` joint offsets from the parent in the parent bone frame;
    angles: ``(T, V, 3)`` radians, local rotation of each bone (entry 0 = root orientation).
    Returns ``(T, V, 3)``. Bone lengths equal ``|offsets|`` in every frame.
    """
    local = rotation_matrices(angles)
    frames = angles.shape[0]
    rot = np.empty((frames, NUM_JOINTS, 3, 3))
    pos = np.zeros((frames, NUM_JOINTS, 3))
    rot[:, 0] = local[:, 0]
    for j in FK_ORDER[1:]:
        p = PARENTS[j]
        rot[:, j] = rot[:, p] @ local[:, j]
        pos[:, j] = pos[:, p] + rot[:, j] @ offsets[j]
    return pos


# ----------------------------------------------------------------------------- subjects

class Subject(NamedTuple):
    """A performer: bone offsets ``(V, 3)`` and personal style."""
    offsets: np.ndarray
    dominant: str          # "l" or "r"
    tempo: float           # multiplies action frequencies
    vigour: float          # multiplies action amplitudes
    posture: dict          # DOF name -> resting angle in degrees


def random_subject(rng: np.random.Generator) -> Subject:
    """Draw body proportions and style for one person."""
    height = rng.uniform(0.82, 1.12)
    scale = np.full(NUM_JOINTS, height)
    for bones in _SEGMENTS.values():
        factor = rng.normal(1.0, 0.07)
        for j in bones:
            for k in ((j,) if MIRROR[j] == j else (j, MIRROR[j])):   # slight left/right asymmetry
                scale[k] *= factor * rng.normal(1.0, 0.015)
    posture = {
        "shoulder_abd": rng.uniform(2, 15), "elbow_flex": rng.uniform(5, 30),
        "spine_flex": rng.uniform(-5, 10), "head_flex": rng.uniform(-10, 15),
        "hip_abd": rng.uniform(0, 8), "shoulder_flex": rng.uniform(-5, 10),
    }
    return Subject(
        offsets=_REST * scale[:, None],
        dominant="r" if rng.random() < 0.85 else "l",
        tempo=rng.uniform(0.75, 1.3),
        vigour=rng.uniform(0.75, 1.25),
        posture=posture,
    )


def subject_table(seed: int, num_subjects: int = NUM_SUBJECTS) -> list[Subject]:
    """Subjects 1..num_subjects of a seed (index 0 holds subject 1)."""
    return [random_subject(np.random.default_rng([seed, sid, _SUBJECT_TAG]))
            for sid in range(1, num_subjects + 1)]


# ----------------------------------------------------------------------------- motion

def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _plateau(u: np.ndarray, rise: float) -> np.ndarray:
    """0 -> 1 -> 0 over action progress u in [0, 1], ramps of width ``rise``."""
    return _smoothstep(u / rise) * _smoothstep((1.0 - u) / rise)


def _bump(u: np.ndarray, center: float, width: float) -> np.ndarray:
    """Raised-cosine bump of full width ``width`` centred at ``center``."""
    d = np.clip((u - center) / width, -0.5, 0.5)
    return 0.5 + 0.5 * np.cos(2.0 * np.pi * d)


def _smooth_noise(rng: np.random.Generator, seconds: np.ndarray, size: int) -> np.ndarray:
    """``(T, size)`` smooth zero-mean wiggle of unit scale (three slow random sinusoids)."""
    freq = rng.uniform(0.1, 0.8, (3, size))
    phase = rng.uniform(0, 2 * np.pi, (3, size))
    amp = rng.uniform(0.3, 1.0, (3, size))
    return (amp * np.sin(2 * np.pi * freq * seconds[:, None, None] + phase)).sum(1) / 1.5


class Body:
    """Angle trajectories (degrees) and root translation of one person over T frames."""

    def __init__(self, subject: Subject, frames: int):
        self.subject = subject
        self.angles = np.zeros((frames, NUM_JOINTS, 3))
        self.shift = np.zeros((frames, 3))   # root translation in the body's own frame (m)
        self.lift = np.zeros(frames)         # height above ground contact (m)

    def add(self, dof: str, values, side: str = "l") -> None:
        """Add ``values`` (degrees, scalar or ``(T,)``) to a DOF; ``side`` picks the limb."""
        bone, axis, sign = _DOFS[dof]
        if side == "r" and dof in _LIMB_DOFS:
            bone = MIRROR[bone]
            sign = sign if axis == 0 else -sign
        self.angles[:, bone, axis] += sign * np.asarray(values)

    def add_both(self, dof: str, values) -> None:
        self.add(dof, values, "l")
        self.add(dof, values, "r")

    def idle(self, rng: np.random.Generator, seconds: np.ndarray, sway: float) -> None:
        """Resting posture plus slow sway of ``sway`` degrees on the main DOFs."""
        for dof, value in self.subject.posture.items():
            if dof in _LIMB_DOFS:
                self.add_both(dof, value)
            else:
                self.add(dof, value)
        for side in "lr":   # how the arms hang differs from one take to the next
            self.add("shoulder_flex", rng.uniform(-1, 1) * POSTURE_JITTER, side)
            self.add("shoulder_abd", rng.uniform(0, 1) * POSTURE_JITTER, side)
            self.add("elbow_flex", rng.uniform(0, 2) * POSTURE_JITTER, side)
        names = ("spine_flex", "spine_bend", "spine_twist", "head_flex", "head_yaw")
        wiggle = _smooth_noise(rng, seconds, len(names) + 6) * sway
        for k, dof in enumerate(names):
            self.add(dof, wiggle[:, k])
        for k, (dof, side) in enumerate([(d, s) for d in ("shoulder_flex", "shoulder_abd",
                                                            "elbow_flex") for s in "lr"]):
            self.add(dof, wiggle[:, len(names) + k], side)
        self.shift[:, [0, 2]] += _smooth_noise(rng, seconds, 2) * 0.01 * sway

    def positions(self) -> np.ndarray:
        """``(T, V, 3)`` joints in the body frame, feet on the ground (y = 0)."""
        pos = forward_kinematics(self.subject.offsets, np.deg2rad(self.angles))
        ground = -pos[:, FEET, 1].min(axis=1)
        yaw = np.deg2rad(self.angles[:, 0, 1])
        c, s = np.cos(yaw), np.sin(yaw)
        shift = np.stack([c * self.shift[:, 0] + s * self.shift[:, 2], ground + self.lift,
                          -s * self.shift[:, 0] + c * self.shift[:, 2]], -1)
        return pos + shift[:, None, :]


class _Clip(NamedTuple):
    """Timing of one sequence: ``seconds (T,)`` and action progress ``u (T,)`` in [0, 1]."""
    seconds: np.ndarray
    u: np.ndarray
    duration: float   # seconds the action window lasts


def _clip_timing(rng: np.random.Generator, frames: int) -> _Clip:
    seconds = np.arange(frames) / FPS
    start = rng.uniform(0.0, IDLE_SHARE) * frames
    stop = frames - rng.uniform(0.0, IDLE_SHARE) * frames
    u = np.clip((np.arange(frames) - start) / (stop - start), 0.0, 1.0)
    u = u ** rng.uniform(0.6, 1.6)      # uneven speed within the action
    return _Clip(seconds, u, (stop - start) / FPS)


def _cycles(rng, clip: _Clip, subject: Subject, low: float, high: float) -> np.ndarray:
    """Oscillation phase (radians) over the window at a random rate in [low, high] Hz."""
    rate = rng.uniform(low, high) * subject.tempo
    return 2 * np.pi * rate * clip.u * clip.duration + rng.uniform(0, 2 * np.pi)


def _count(rng, clip: _Clip, subject: Subject, per_second: float, most: int) -> int:
    """How many repetitions fit the window at a subject's tempo (1..most)."""
    n = int(clip.duration * per_second * subject.tempo * rng.uniform(0.7, 1.3))
    return int(np.clip(n, 1, most))


def _other(side: str) -> str:
    return "l" if side == "r" else "r"


# Each action drives body 0 (the actor) and, for two-person classes, body 1. ``a`` scales amplitudes.

def _wave(rng, clip, bodies, a):
    b = bodies[0]
    side = b.subject.dominant if rng.random() < 0.85 else _other(b.subject.dominant)
    env = _plateau(clip.u, rng.uniform(0.15, 0.3))
    b.add("shoulder_abd", env * a * rng.uniform(70, 115), side)
    b.add("shoulder_flex", env * rng.uniform(0, 35), side)
    swing = np.sin(_cycles(rng, clip, b.subject, 1.2, 2.6))
    b.add("elbow_side", env * (rng.uniform(60, 110) + a * rng.uniform(15, 35) * swing), side)


def _clap(rng, clip, bodies, a):
    b = bodies[0]
    env = _plateau(clip.u, rng.uniform(0.1, 0.25))
    b.add_both("shoulder_flex", env * rng.uniform(45, 85))
    b.add_both("elbow_flex", env * rng.uniform(20, 60))
    opening = 0.5 - 0.5 * np.cos(_cycles(rng, clip, b.subject, 1.5, 3.0))
    b.add_both("shoulder_horiz", env * (rng.uniform(25, 35) - a * rng.uniform(15, 40) * opening))


def _squat(rng, clip, bodies, a):
    b = bodies[0]
    reps = _count(rng, clip, b.subject, 0.5, 3)
    depth = 0.5 - 0.5 * np.cos(2 * np.pi * reps * clip.u)
    knee = depth * a * rng.uniform(70, 120)
    hip = knee * rng.uniform(0.7, 0.95)
    b.add_both("knee_flex", knee)
    b.add_both("hip_flex", hip)
    b.add_both("ankle_flex", knee - hip)
    b.add("spine_flex", depth * rng.uniform(10, 35))
    if rng.random() < 0.6:
        b.add_both("shoulder_flex", depth * rng.uniform(50, 90))


def _front_kick(rng, clip, bodies, a):
    b = bodies[0]
    side = b.subject.dominant if rng.random() < 0.7 else _other(b.subject.dominant)
    guard = _plateau(clip.u, 0.2)
    b.add_both("shoulder_flex", guard * rng.uniform(20, 45))
    b.add_both("elbow_flex", guard * rng.uniform(70, 110))
    kicks = _count(rng, clip, b.subject, 0.6, 2)
    for k in range(kicks):
        center = (k + 0.5) / kicks
        width = rng.uniform(0.5, 0.8) / kicks
        lift = _bump(clip.u, center, width)
        snap = _bump(clip.u, center, width * 0.4)
        b.add("hip_flex", lift * a * rng.uniform(60, 100), side)
        b.add("knee_flex", lift * rng.uniform(70, 100) * (1 - snap), side)
        b.add("spine_flex", -lift * rng.uniform(5, 15))


def _bow(rng, clip, bodies, a):
    b = bodies[0]
    env = _plateau(clip.u, rng.uniform(0.2, 0.4))
    spine, chest = env * a * rng.uniform(20, 40), env * a * rng.uniform(10, 30)
    b.add("spine_flex", spine)
    b.add("chest_flex", chest)
    b.add("neck_flex", env * rng.uniform(0, 20))
    b.add_both("shoulder_flex", (spine + chest) * rng.uniform(0.5, 1.0))


def _punch(rng, clip, bodies, a):
    b = bodies[0]
    guard_elbow = rng.uniform(90, 130)
    guard = _plateau(clip.u, 0.15)
    b.add_both("shoulder_flex", guard * rng.uniform(25, 50))
    b.add_both("elbow_flex", guard * guard_elbow)
    b.add_both("shoulder_horiz", guard * rng.uniform(5, 20))
    punches = _count(rng, clip, b.subject, 1.5, 6)
    side = "r" if rng.random() < 0.5 else "l"
    for k in range(punches):
        hit = _bump(clip.u, (k + 0.5) / punches, rng.uniform(0.6, 0.9) / punches)
        b.add("shoulder_flex", hit * a * rng.uniform(40, 60), side)
        b.add("elbow_flex", -hit * guard_elbow * rng.uniform(0.8, 1.0), side)
        b.add("spine_twist", hit * rng.uniform(5, 20) * (1 if side == "r" else -1))
        side = _other(side)


def _raise_arms(rng, clip, bodies, a):
    b = bodies[0]
    env = _plateau(clip.u, rng.uniform(0.2, 0.4))
    dof = "shoulder_flex" if rng.random() < 0.5 else "shoulder_abd"
    b.add_both(dof, env * min(180.0, a * rng.uniform(140, 175)))
    b.add_both("elbow_flex", env * rng.uniform(-5, 20))
    b.add("head_flex", -env * rng.uniform(0, 15))


def _jump(rng, clip, bodies, a):
    b = bodies[0]
    jumps = _count(rng, clip, b.subject, 0.7, 3)
    for k in range(jumps):
        center = (k + 0.5) / jumps
        height = a * rng.uniform(0.08, 0.3)
        half = np.sqrt(2 * height / 9.81) / clip.duration    # half flight time, in u units
        flight = np.clip(1 - ((clip.u - center) / half) ** 2, 0, None)
        b.lift += height * flight
        crouch = _bump(clip.u, center - 1.8 * half, 3 * half) + _bump(clip.u, center + 1.8 * half,
                                                                       3 * half)
        knee = crouch * rng.uniform(40, 80)
        hip = knee * rng.uniform(0.7, 0.95)
        b.add_both("knee_flex", knee)
        b.add_both("hip_flex", hip)
        b.add_both("ankle_flex", knee - hip - 25 * (flight > 0))
        b.add_both("shoulder_flex", 70 * (flight > 0) * flight - 30 * crouch)


def _side_step(rng, clip, bodies, a):
    b = bodies[0]
    direction = 1.0 if rng.random() < 0.5 else -1.0
    lead = "l" if direction > 0 else "r"
    steps = _count(rng, clip, b.subject, 0.8, 5)
    length = a * rng.uniform(0.15, 0.35)
    for k in range(steps):
        start = k / steps
        b.shift[:, 0] += direction * length * _smoothstep((clip.u - start) * steps)
        b.add("hip_abd", _bump(clip.u, start + 0.25 / steps, 0.5 / steps) * rng.uniform(10, 25), lead)
        b.add("knee_flex", _bump(clip.u, start + 0.25 / steps, 0.5 / steps) * rng.uniform(10, 30),
              lead)
        b.add("hip_abd", _bump(clip.u, start + 0.75 / steps, 0.5 / steps) * rng.uniform(5, 15),
              _other(lead))


def _turn(rng, clip, bodies, a):
    b = bodies[0]
    way = 1.0 if rng.random() < 0.5 else -1.0
    if rng.random() < 0.35:   # turn all the way round and stay
        turn = _smoothstep(clip.u * rng.uniform(1.1, 1.5))
        b.add("root_yaw", way * turn * rng.uniform(140, 200))
        steps = np.sin(2 * np.pi * 2 * clip.u) * np.sin(np.pi * clip.u)
        b.add("knee_flex", np.clip(steps, 0, None) * 25, "l")
        b.add("knee_flex", np.clip(-steps, 0, None) * 25, "r")
        b.add("head_yaw", way * _bump(clip.u, 0.3, 0.5) * 25)
    else:                      # look back over the shoulder and return
        env = _plateau(clip.u, rng.uniform(0.2, 0.4))
        b.add("spine_twist", way * env * a * rng.uniform(15, 30))
        b.add("chest_twist", way * env * a * rng.uniform(10, 25))
        b.add("head_yaw", way * env * rng.uniform(40, 75))
        b.add("root_yaw", way * env * rng.uniform(0, 50))


def _handshake(rng, clip, bodies, a):
    delay = rng.uniform(-0.08, 0.08)
    shake = np.sin(_cycles(rng, clip, bodies[0].subject, 2.0, 3.5))
    for b, lag in ((bodies[0], 0.0), (bodies[1], delay)):
        env = _plateau(np.clip(clip.u - lag, 0, 1), rng.uniform(0.2, 0.3))
        b.add("shoulder_flex", env * (rng.uniform(35, 55) + a * rng.uniform(4, 10) * shake), "r")
        b.add("elbow_flex", env * rng.uniform(20, 45), "r")
        b.add("shoulder_horiz", env * rng.uniform(10, 25), "r")
        b.add("spine_flex", env * rng.uniform(0, 10))


def _push(rng, clip, bodies, a):
    pusher, pushed = bodies
    contact = rng.uniform(0.4, 0.6)
    env = _plateau(clip.u, rng.uniform(0.15, 0.25))
    thrust = _smoothstep((clip.u - contact + 0.1) / 0.15) * env
    pusher.add_both("shoulder_flex", env * rng.uniform(55, 85))
    pusher.add_both("elbow_flex", env * rng.uniform(70, 100) * (1 - thrust * rng.uniform(0.8, 1.0)))
    pusher.add("spine_flex", thrust * rng.uniform(5, 20))
    pusher.shift[:, 2] += thrust * rng.uniform(0.1, 0.3)
    recoil = _smoothstep((clip.u - contact) / rng.uniform(0.15, 0.3))
    pushed.shift[:, 2] -= recoil * a * rng.uniform(0.2, 0.5)
    flinch = _bump(clip.u, contact + 0.1, 0.3)
    pushed.add("spine_flex", -flinch * rng.uniform(5, 20))
    pushed.add_both("shoulder_flex", flinch * rng.uniform(15, 40))


_ACTIONS = (_wave, _clap, _squat, _front_kick, _bow, _punch, _raise_arms, _jump, _side_step,
            _turn, _handshake, _push)


# ----------------------------------------------------------------------------- camera

def _yaw_matrix(degrees: float) -> np.ndarray:
    return rotation_matrices(np.deg2rad(np.array([0.0, degrees, 0.0])))


def _place_bodies(rng, label: int, bodies: list[Body]) -> list[np.ndarray]:
    """World positions ``(T, V, 3)`` per body; body 0 near the origin, camera on +z."""
    actor = bodies[0].positions()
    if len(bodies) == 1:
        return [actor @ _yaw_matrix(rng.uniform(-BODY_YAW, BODY_YAW)).T]
    other = bodies[1].positions()
    if label in TWO_PERSON:   # face each other across x, actor left or right at random
        gap = {10: rng.uniform(0.85, 1.1), 11: rng.uniform(0.65, 0.85)}[label]
        way = 1.0 if rng.random() < 0.5 else -1.0
        actor = actor @ _yaw_matrix(90 * way).T + np.array([-way * gap / 2, 0, 0])
        other = other @ _yaw_matrix(-90 * way).T + np.array([way * gap / 2, 0, 0])
        return [actor, other]
    # a bystander off to one side
    spot = np.array([rng.choice([-1, 1]) * rng.uniform(1.0, 2.0), 0, rng.uniform(-1.0, 0.5)])
    return [actor @ _yaw_matrix(rng.uniform(-BODY_YAW, BODY_YAW)).T,
            other @ _yaw_matrix(rng.uniform(-90, 90)).T + spot]


def _camera(rng, world: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Project world points into a Kinect-like camera frame (x, y up, z depth)."""
    yaw = rng.uniform(-CAMERA_YAW, CAMERA_YAW)
    tilt = rng.uniform(-CAMERA_TILT, CAMERA_TILT)
    rot = rotation_matrices(np.deg2rad(np.array([tilt, 180.0 + yaw, 0.0])))
    shift = np.array([rng.uniform(-0.4, 0.4), -rng.uniform(0.6, 1.3), rng.uniform(2.3, 4.0)])
    return [p @ rot.T + shift for p in world], yaw


def _sensor_noise(rng, data: np.ndarray) -> None:
    """Gaussian jitter (noisier hands) and occasional dropped joints, in place on (T, M, V, C)."""
    sigma = np.full(NUM_JOINTS, rng.uniform(0.004, 0.02))
    sigma[[L_HAND, L_TIP, L_THUMB, R_HAND, R_TIP, R_THUMB]] *= 2.0
    present = np.any(data != 0, axis=(2, 3))                     # (T, M)
    data += rng.normal(size=data.shape) * sigma[None, None, :, None] * present[:, :, None, None]
    if rng.random() < 0.15:
        frames = data.shape[0]
        for _ in range(rng.integers(1, 4)):
            start = rng.integers(0, frames)
            data[start:start + rng.integers(2, 12), 0, rng.integers(0, NUM_JOINTS)] = 0.0


# ----------------------------------------------------------------------------- sequences

class Sequence(NamedTuple):
    name: str
    label: int
    data: np.ndarray   # (T, M, V, C) float32
    subject: int       # 1-based
    view: int          # camera yaw bin: 1 (< -15 deg), 2, 3 (> 15 deg)


def sequence_subject(index: int, num_subjects: int = NUM_SUBJECTS) -> int:
    """1-based subject of sequence ``index``: every (class, subject) pair in turn."""
    return (index // len(CLASS_NAMES)) % num_subjects + 1


def generate_sequence(seed: int, index: int, subjects: list[Subject]) -> Sequence:
    """Sequence ``index``: class ``index % num_classes``, randomness from ``default_rng([seed, index])``.

    ``subjects`` is ``subject_table(seed, n)``.
    """
    rng = np.random.default_rng([seed, index])
    label = index % len(CLASS_NAMES)
    sid = sequence_subject(index, len(subjects))
    frames = int(rng.integers(MIN_LEN, MAX_LEN + 1))
    clip = _clip_timing(rng, frames)

    bodies = [Body(subjects[sid - 1], frames)]
    if label in TWO_PERSON:   # the partner is another subject of the same split half
        partner = int(rng.choice([s for s in range(sid % 2 or 2, len(subjects) + 1, 2) if s != sid]))
        bodies.append(Body(subjects[partner - 1], frames))
    elif rng.random() < BYSTANDER:  # an anonymous bystander
        bodies.append(Body(random_subject(rng), frames))
    for b in bodies:
        b.idle(rng, clip.seconds, rng.uniform(1.0, 5.0))
    _ACTIONS[label](rng, clip, bodies, bodies[0].subject.vigour * rng.uniform(0.75, 1.25))

    world = _place_bodies(rng, label, bodies)
    cam, yaw = _camera(rng, world)
    data = np.zeros((frames, NUM_BODIES, NUM_JOINTS, CHANNELS))
    for m, p in enumerate(cam):
        data[:, m] = p
    _sensor_noise(rng, data)
    view = 1 if yaw < -15 else (3 if yaw > 15 else 2)
    name = f"syn{index:07d}_P{sid:03d}_A{label + 1:03d}"
    return Sequence(name, label, data.astype(np.float32), sid, view)


# ----------------------------------------------------------------------------- untrimmed streams

UNTRIMMED_ACTIONS = tuple(c for c in range(len(CLASS_NAMES)) if c not in TWO_PERSON)
UNTRIMMED_CLASS_NAMES = ("background", *(CLASS_NAMES[c] for c in UNTRIMMED_ACTIONS))
UNTRIMMED_SUBJECTS = 10
DEFAULT_NUM_STREAMS = 40
ACTIONS_PER_STREAM = (4, 7)    # inclusive range of actions in one stream
GAP_FRAMES = (15, 60)          # idle / transition frames before, between and after actions
TRANSITION = 0.5               # probability that the person turns and steps during a gap
_STREAM_TAG = 0x57AEA1         # keeps stream draws apart from the trimmed sequences'


def _stream_plan(rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """[(action class, start, stop)] of one stream plus its total length, in frames."""
    count = int(rng.integers(ACTIONS_PER_STREAM[0], ACTIONS_PER_STREAM[1] + 1))
    plan, t = [], int(rng.integers(*GAP_FRAMES))
    for _ in range(count):
        length = int(rng.integers(MIN_LEN, MAX_LEN + 1))
        plan.append((int(rng.choice(UNTRIMMED_ACTIONS)), t, t + length))
        t += length + int(rng.integers(*GAP_FRAMES))
    return plan, t


def generate_stream(seed: int, index: int, subjects: list[Subject]) -> Sequence:
    """Untrimmed stream ``index``: one subject performs 4..7 one-person actions in a row, with
    15..59 idle frames before, between and after them (during a gap the person may also turn
    and step: transition frames); one camera for the whole stream.

    Returns a ``Sequence`` whose ``label`` is the per-frame labels ``(T,)`` int16 (0 =
    background, 1..10 = ``UNTRIMMED_CLASS_NAMES``); randomness from
    ``default_rng([seed, index, _STREAM_TAG])`` and the subject table.
    """
    rng = np.random.default_rng([seed, index, _STREAM_TAG])
    sid = index % len(subjects) + 1
    plan, frames = _stream_plan(rng)
    body = Body(subjects[sid - 1], frames)
    seconds = np.arange(frames) / FPS
    body.idle(rng, seconds, rng.uniform(1.0, 5.0))
    labels = np.zeros(frames, dtype=np.int16)
    gap_start = 0
    for action, start, stop in plan:
        if rng.random() < TRANSITION and start - gap_start > 2:   # turn and step in the gap
            ramp = _smoothstep((np.arange(frames) - gap_start) / (start - gap_start))
            body.add("root_yaw", ramp * rng.uniform(-40, 40))
            body.shift[:, 0] += ramp * rng.uniform(-0.3, 0.3)
        u = np.clip((np.arange(frames) - start) / (stop - start), 0.0, 1.0)
        clip = _Clip(seconds, u ** rng.uniform(0.6, 1.6), (stop - start) / FPS)
        _ACTIONS[action](rng, clip, [body], body.subject.vigour * rng.uniform(0.75, 1.25))
        labels[start:stop] = UNTRIMMED_ACTIONS.index(action) + 1
        gap_start = stop
    world = _place_bodies(rng, 0, [body])
    cam, yaw = _camera(rng, world)
    data = np.zeros((frames, NUM_BODIES, NUM_JOINTS, CHANNELS))
    data[:, 0] = cam[0]
    _sensor_noise(rng, data)
    view = 1 if yaw < -15 else (3 if yaw > 15 else 2)
    name = f"stream{index:05d}_P{sid:03d}"
    return Sequence(name, labels, data.astype(np.float32), sid, view)


def write_untrimmed(out_dir, num_streams: int = DEFAULT_NUM_STREAMS, seed: int = 0,
                    num_subjects: int = UNTRIMMED_SUBJECTS) -> Path:
    """A dataset directory of untrimmed streams with per-frame labels (``frame_labels``) and
    xsub splits (odd subjects train, even ones val); the record label is the stream's most
    frequent action."""
    if num_streams < 1:
        raise ValueError(f"num_streams must be >= 1, got {num_streams}")
    if num_subjects < 2:
        raise ValueError(f"num_subjects must be >= 2 (one per split half), got {num_subjects}")
    subjects = subject_table(seed, num_subjects)
    train, val = [], []
    with StoreWriter(out_dir, LAYOUT, len(UNTRIMMED_CLASS_NAMES), list(UNTRIMMED_CLASS_NAMES),
                     channels=CHANNELS, bodies=NUM_BODIES,
                     source_format="synthetic-untrimmed") as writer:
        for i in range(num_streams):
            seq = generate_stream(seed, i, subjects)
            actions = seq.label[seq.label > 0]
            (train if seq.subject % 2 == 1 else val).append(len(writer))
            writer.add(Record(seq.name, int(np.bincount(actions).argmax()), seq.data,
                              subject=seq.subject, view=seq.view,
                              frame_arrays={"frame_labels": seq.label}))
        return writer.close({"xsub_train": train, "xsub_val": val})


# ----------------------------------------------------------------------------- writing a store

def _generate_block(job: tuple[int, int, int, int]) -> list[Record]:
    """Worker: sequences ``start..stop-1`` of a seed as ``Record``s."""
    seed, start, stop, num_subjects = job
    subjects = subject_table(seed, num_subjects)
    out = []
    for i in range(start, stop):
        seq = generate_sequence(seed, i, subjects)
        out.append(Record(seq.name, seq.label, seq.data, subject=seq.subject, view=seq.view))
    return out


def write_synthetic(out_dir, num_sequences: int = DEFAULT_NUM_SEQUENCES, seed: int = 0,
                    workers: int = 1, num_subjects: int = NUM_SUBJECTS,
                    block: int = 64, progress: bool | None = None) -> Path:
    """Generate a dataset directory (``feeders.store`` format) with xsub splits.

    Sequences are made in blocks of ``block`` by ``workers`` processes and written in index
    order; at most ``2 * workers`` blocks are in memory at a time. ``progress``: a bar of the
    sequences written (None: on a terminal).
    """
    if num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    if num_subjects < 4:
        raise ValueError(f"num_subjects must be >= 4 (two per split half), got {num_subjects}")
    check_replaceable(out_dir)  # before the workers start
    jobs = [(seed, s, min(s + block, num_sequences), num_subjects)
            for s in range(0, num_sequences, block)]
    train, val = [], []
    with StoreWriter(out_dir, LAYOUT, len(CLASS_NAMES), CLASS_NAMES, channels=CHANNELS,
                     bodies=NUM_BODIES, source_format="synthetic") as writer:
        bar = progress_bar(None, desc="synthetic", total=num_sequences, unit="seq",
                           enable=progress)

        def write(records):
            for rec in records:
                (train if rec.subject % 2 == 1 else val).append(len(writer))
                writer.add(rec)
            if bar is not None:
                bar.update(len(records))

        if workers <= 1:
            for job in jobs:
                write(_generate_block(job))
        else:
            wave = 2 * workers
            with mp.get_context("spawn").Pool(workers) as pool:
                for w in range(0, len(jobs), wave):
                    for records in pool.imap(_generate_block, jobs[w:w + wave]):
                        write(records)
        if bar is not None:
            bar.close()
        return writer.close({"xsub_train": train, "xsub_val": val})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m feeders.synthetic",
        description="Write the embedded synthetic skeleton dataset (NTU 25-joint layout, "
                    f"{len(CLASS_NAMES)} classes, xsub_train/xsub_val splits).")
    parser.add_argument("--out", required=True, type=Path,
                        help="output dataset directory (an existing one is replaced only when "
                             "it is a dataset directory written by this suite)")
    parser.add_argument("--num-sequences", type=int, default=DEFAULT_NUM_SEQUENCES,
                        help="sequences to generate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="generating processes (default: %(default)s)")
    parser.add_argument("--untrimmed", action="store_true",
                        help="write untrimmed streams instead: 4-7 one-person actions in a row "
                             "with idle and transition frames, per-frame labels in "
                             "frame_labels (0 = background, 1..10), --num-streams streams of "
                             f"{UNTRIMMED_SUBJECTS} subjects")
    parser.add_argument("--num-streams", type=int, default=DEFAULT_NUM_STREAMS,
                        help="with --untrimmed: number of streams")
    args = parser.parse_args(argv)
    if args.num_sequences < 1 or args.workers < 1 or args.num_streams < 1:
        parser.error("--num-sequences, --num-streams and --workers must be >= 1")
    start = time.perf_counter()
    try:
        if args.untrimmed:
            path = write_untrimmed(args.out, args.num_streams, args.seed)
            print(f"wrote {args.num_streams} untrimmed streams to {path} in "
                  f"{time.perf_counter() - start:.1f} s")
            return
        path = write_synthetic(args.out, args.num_sequences, args.seed, args.workers)
    except (ValueError, OSError) as e:
        parser.error(error_message(e))
    elapsed = time.perf_counter() - start
    print(f"wrote {args.num_sequences} sequences to {path} in {elapsed:.1f} s "
          f"({args.num_sequences / elapsed:.0f} sequences/s)")


if __name__ == "__main__":
    main()

"""Skeleton layouts: joint names, the bone (parent) tree and the ST-GCN graph partitions.

One `Layout` describes one joint convention. Everything graph-shaped in the suite is derived
from it: bones for the `b` stream (`parents`), the adjacency of the GCN encoders
(`adjacency`, `partitions`), the centre joint used to normalise sequences (`center`).

Partition strategies follow ST-GCN (Yan et al., AAAI 2018), with `normalize_digraph`
(each column divided by its sum):
- ``uniform``: one matrix, neighbours and self together (K = 1);
- ``distance``: one matrix per hop distance 0..max_hop (K = max_hop + 1);
- ``spatial``: root / centripetal / centrifugal, by the hop distance of each neighbour to the
  layout's ``graph_center`` compared with the joint's own (K = 2 * max_hop + 1);
- ``symmetric``: the distance partitions plus one matrix linking each joint to its mirrored
  joint on the other side of the body (K = max_hop + 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("uniform", "distance", "spatial", "symmetric")


@dataclass(frozen=True)
class Layout:
    """A joint convention.

    name: registry name. joints: joint names, in storage order. parents: 0-based parent of each
    joint (the root is its own parent; `x[v] - x[parents[v]]` is the bone of joint v).
    center: joint subtracted when normalising a sequence (the body centre).
    graph_center: joint the ST-GCN ``spatial`` partition measures distances to.
    mirror: the left/right counterpart of each joint (a midline joint maps to itself).
    dims: coordinate dimensions of the convention (3 for depth-camera skeletons, 2 for pose
    estimators); channels beyond `dims` (a confidence score) are not coordinates.
    """

    name: str
    joints: tuple[str, ...]
    parents: tuple[int, ...]
    center: int
    graph_center: int
    mirror: tuple[int, ...]
    dims: int = 3

    def __post_init__(self):
        v = len(self.joints)
        for field in ("parents", "mirror"):
            values = getattr(self, field)
            if len(values) != v or not all(0 <= p < v for p in values):
                raise ValueError(f"layout {self.name}: {field} must give one index in [0, {v}) per joint")
        if any(self.mirror[self.mirror[j]] != j for j in range(v)):
            raise ValueError(f"layout {self.name}: mirror must be an involution")
        if not (0 <= self.center < v and 0 <= self.graph_center < v):
            raise ValueError(f"layout {self.name}: center joints must be in [0, {v})")

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    def edges(self) -> list[tuple[int, int]]:
        """(child, parent) bone pairs, self loops excluded."""
        return [(c, p) for c, p in enumerate(self.parents) if c != p]

    def adjacency(self) -> np.ndarray:
        """Symmetric 0/1 adjacency `(V, V)` of the bone tree, without self loops."""
        a = np.zeros((self.num_joints, self.num_joints), dtype=np.float32)
        for c, p in self.edges():
            a[c, p] = a[p, c] = 1.0
        return a

    def hop_distance(self, max_hop: int = 1) -> np.ndarray:
        """Hop distance `(V, V)` between joints; `inf` beyond `max_hop`."""
        v = self.num_joints
        a = self.adjacency() + np.eye(v, dtype=np.float32)
        dist = np.full((v, v), np.inf)
        reach = [np.linalg.matrix_power(a, d) > 0 for d in range(max_hop + 1)]
        for d in range(max_hop, -1, -1):
            dist[reach[d]] = d
        return dist

    def partitions(self, strategy: str = "spatial", max_hop: int = 1) -> np.ndarray:
        """Stacked, column-normalised partition matrices `(K, V, V)` (float32).

        Entry `[k, j, i]` weights the message from joint j to joint i (ST-GCN convention:
        features `(C, V)` are multiplied as `x @ A[k]`).
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown partition strategy {strategy!r}; expected one of {STRATEGIES}")
        hop = self.hop_distance(max_hop)
        norm = normalize_digraph((hop <= max_hop).astype(np.float64))
        if strategy == "uniform":
            parts = [norm]
        elif strategy in ("distance", "symmetric"):
            parts = [norm * (hop == d) for d in range(max_hop + 1)]
            if strategy == "symmetric":
                mirror = np.zeros_like(norm)
                for j, m in enumerate(self.mirror):
                    if m != j:
                        mirror[m, j] = 1.0
                parts.append(normalize_digraph(mirror))
        else:  # spatial
            # distances to the centre are measured over the whole tree, not cut at max_hop
            # (cutting them makes most joints "equally far" (inf) and collapses the partition).
            to_center = self.hop_distance(self.num_joints)[:, self.graph_center]
            parts = []
            for d in range(max_hop + 1):
                ring = norm * (hop == d)
                # neighbour j of joint i: same distance to the centre (root), closer
                # (centripetal) or further (centrifugal).
                same = to_center[:, None] == to_center[None, :]
                closer = to_center[:, None] < to_center[None, :]
                root, close, far = ring * same, ring * closer, ring * ~(same | closer)
                parts += [root] if d == 0 else [root + close, far]
        return np.stack(parts).astype(np.float32)


def normalize_digraph(a: np.ndarray) -> np.ndarray:
    """Divide each column of `a` `(V, V)` by its sum (zero columns stay zero)."""
    col = a.sum(axis=0)
    inv = np.where(col > 0, 1.0 / np.where(col > 0, col, 1.0), 0.0)
    return a * inv[None, :]


def _layout(name, joints, parents, center, graph_center, pairs, dims=3):
    """Build a Layout from 0-based parents and the list of (left, right) mirror pairs."""
    mirror = list(range(len(joints)))
    for left, right in pairs:
        mirror[left], mirror[right] = right, left
    return Layout(name, tuple(joints), tuple(parents), center, graph_center, tuple(mirror), dims)


# NTU RGB+D (Kinect v2): the 25 bone pairs of docs/METHOD.md §1, written 1-based as (child, parent).
_NTU_PAIRS_1BASED = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21),
                     (10, 9), (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1),
                     (18, 17), (19, 18), (20, 19), (21, 21), (22, 23), (23, 8), (24, 25), (25, 12)]

NTU25 = _layout(
    "ntu25",
    ["spine_base", "spine_mid", "neck", "head", "left_shoulder", "left_elbow", "left_wrist",
     "left_hand", "right_shoulder", "right_elbow", "right_wrist", "right_hand", "left_hip",
     "left_knee", "left_ankle", "left_foot", "right_hip", "right_knee", "right_ankle",
     "right_foot", "spine_shoulder", "left_hand_tip", "left_thumb", "right_hand_tip",
     "right_thumb"],
    [p - 1 for _, p in sorted(_NTU_PAIRS_1BASED)],
    center=1, graph_center=20,
    pairs=[(4, 8), (5, 9), (6, 10), (7, 11), (21, 23), (22, 24), (12, 16), (13, 17), (14, 18),
           (15, 19)],
)

# Kinect v1 (NW-UCLA): 20 joints, rooted at the shoulder centre like NTU's spine shoulder.
KINECT20 = _layout(
    "kinect20",
    ["hip_center", "spine", "shoulder_center", "head", "left_shoulder", "left_elbow",
     "left_wrist", "left_hand", "right_shoulder", "right_elbow", "right_wrist", "right_hand",
     "left_hip", "left_knee", "left_ankle", "left_foot", "right_hip", "right_knee",
     "right_ankle", "right_foot"],
    [1, 2, 2, 2, 2, 4, 5, 6, 2, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18],
    center=1, graph_center=2,
    pairs=[(4, 8), (5, 9), (6, 10), (7, 11), (12, 16), (13, 17), (14, 18), (15, 19)],
)

# OpenPose 18 (st-gcn Kinetics-skeleton), rooted at the neck.
OPENPOSE18 = _layout(
    "openpose18",
    ["nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
     "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
     "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear"],
    [1, 1, 1, 2, 3, 1, 5, 6, 2, 8, 9, 5, 11, 12, 0, 0, 14, 15],
    center=1, graph_center=1,
    pairs=[(5, 2), (6, 3), (7, 4), (11, 8), (12, 9), (13, 10), (15, 14), (17, 16)],
    dims=2,
)

# COCO 17 keypoints (HRNet 2D in pyskl), rooted at the nose.
COCO17 = _layout(
    "coco17",
    ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
     "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
     "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"],
    [0, 0, 0, 1, 2, 0, 0, 5, 6, 7, 8, 5, 6, 11, 12, 13, 14],
    center=0, graph_center=0,
    pairs=[(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)],
    dims=2,
)

# Penn Action: 13 joints, no torso joint, rooted at the head.
PENN13 = _layout(
    "penn13",
    ["head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
     "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
     "right_ankle"],
    [0, 0, 0, 1, 2, 3, 4, 1, 2, 7, 8, 9, 10],
    center=0, graph_center=0,
    pairs=[(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)],
    dims=2,
)

LAYOUTS: dict[str, Layout] = {l.name: l for l in (NTU25, KINECT20, OPENPOSE18, COCO17, PENN13)}


def get_layout(layout: str | Layout) -> Layout:
    """Look a layout up by name (a Layout passes through)."""
    if isinstance(layout, Layout):
        return layout
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[layout]

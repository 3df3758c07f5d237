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

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STRATEGIES = ("uniform", "distance", "spatial", "symmetric")


# how a dataset's layout was chosen (manifest field ``layout_source``): given by the user,
# inferred from the joint count, or fixed by the source format
LAYOUT_SOURCES = ("declared", "inferred", "format")


class LayoutError(ValueError):
    """A layout cannot be read, is invalid, or cannot be chosen for the data (the message names
    the file or source and the field)."""


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

    def to_json(self) -> dict:
        """The layout as the JSON object read by `layout_from_json` (centres and mirror pairs
        by joint name, parents 0-based)."""
        pairs = [[self.joints[j], self.joints[m]] for j, m in enumerate(self.mirror) if j < m]
        return {"name": self.name, "dims": self.dims, "joints": list(self.joints),
                "parents": list(self.parents), "center": self.joints[self.center],
                "graph_center": self.joints[self.graph_center], "mirror": pairs}

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

# OpenPose BODY_25 (DATA.md §3.1): OpenPose's render pairs as a tree rooted at the neck.
BODY25 = _layout(
    "body25",
    ["nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
     "left_elbow", "left_wrist", "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip",
     "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear",
     "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe",
     "right_heel"],
    [1, 1, 1, 2, 3, 1, 5, 6, 1, 8, 9, 10, 8, 12, 13, 0, 0, 15, 16, 14, 19, 14, 11, 22, 11],
    center=1, graph_center=1,
    pairs=[(5, 2), (6, 3), (7, 4), (12, 9), (13, 10), (14, 11), (16, 15), (18, 17), (19, 22),
           (20, 23), (21, 24)],
    dims=2,
)

# Human3.6M 17 joints in the order 3D pose lifting models output (VideoPose3D, MotionBERT),
# rooted at the hip (pelvis) joint the lifted poses are relative to.
H36M17 = _layout(
    "h36m17",
    ["hip", "right_hip", "right_knee", "right_foot", "left_hip", "left_knee", "left_foot",
     "spine", "thorax", "neck_nose", "head", "left_shoulder", "left_elbow", "left_wrist",
     "right_shoulder", "right_elbow", "right_wrist"],
    [0, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15],
    center=0, graph_center=8,
    pairs=[(4, 1), (5, 2), (6, 3), (11, 14), (12, 15), (13, 16)],
)

LAYOUTS: dict[str, Layout] = {l.name: l for l in (NTU25, KINECT20, OPENPOSE18, COCO17, PENN13,
                                                  BODY25, H36M17)}

# ----------------------------------------------------------------------------- JSON layouts

_JSON_FIELDS = ("name", "dims", "joints", "parents", "parents_1based", "center", "graph_center",
                "mirror")


def _joint_index(value, joints: list[str], where: str) -> int:
    """A joint given by name or 0-based index -> its index (LayoutError naming `where`)."""
    if isinstance(value, str):
        if value not in joints:
            raise LayoutError(f"{where}: unknown joint name {value!r}")
        return joints.index(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(joints):
        raise LayoutError(f"{where}: expected a joint name or an index in [0, {len(joints)}), "
                          f"got {value!r}")
    return value


def _check_tree(parents: list[int], joints: list[str], where: str) -> None:
    """One root (its own parent) that every joint reaches by following parents."""
    roots = [joints[v] for v, p in enumerate(parents) if v == p]
    if len(roots) != 1:
        raise LayoutError(f"{where}: field 'parents' has {len(roots)} roots {roots} (a joint "
                          f"that is its own parent); a tree has exactly one")
    for v in range(len(parents)):
        path = [v]
        while parents[path[-1]] != path[-1]:
            path.append(parents[path[-1]])
            if path[-1] in path[:-1]:
                cycle = " -> ".join(joints[j] for j in path[path.index(path[-1]):])
                raise LayoutError(f"{where}: field 'parents' has a cycle {cycle} (never "
                                  f"reaches the root {roots[0]!r})")


def layout_from_json(obj, where: str = "layout") -> Layout:
    """Build and validate a Layout from its JSON object (docs/design.md, "feeders.layouts").

    ``{"name", "joints": [names in storage order], "parents": [0-based parent per joint, the
    root its own parent] (or "parents_1based"), "center": joint name or index, "graph_center"
    (optional, default: center), "mirror": [[left, right], ...] by name or index, "dims": 2|3}``.
    Errors are LayoutError naming ``where`` (the file) and the field.
    """
    if not isinstance(obj, dict):
        raise LayoutError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(_JSON_FIELDS))
    if unknown:
        raise LayoutError(f"{where}: unknown field(s) {unknown}; expected {list(_JSON_FIELDS)}")
    for field in ("name", "dims", "joints", "center"):
        if field not in obj:
            raise LayoutError(f"{where}: field {field!r} missing")
    name, dims, joints = obj["name"], obj["dims"], obj["joints"]
    if not isinstance(name, str) or not name:
        raise LayoutError(f"{where}: field 'name' must be a non-empty string")
    if dims not in (2, 3) or isinstance(dims, bool):
        raise LayoutError(f"{where}: field 'dims' must be 2 or 3, got {dims!r}")
    if (not isinstance(joints, list) or not joints
            or not all(isinstance(j, str) and j for j in joints)):
        raise LayoutError(f"{where}: field 'joints' must be a non-empty list of joint names")
    if len(set(joints)) != len(joints):
        twice = sorted({j for j in joints if joints.count(j) > 1})
        raise LayoutError(f"{where}: field 'joints' names {twice} more than once")
    v = len(joints)
    if ("parents" in obj) == ("parents_1based" in obj):
        raise LayoutError(f"{where}: give exactly one of the fields 'parents' (0-based) and "
                          f"'parents_1based'")
    field = "parents" if "parents" in obj else "parents_1based"
    base = 0 if field == "parents" else 1
    raw = obj[field]
    if not isinstance(raw, list) or len(raw) != v:
        raise LayoutError(f"{where}: field {field!r} must be a list of {v} parents (one per "
                          f"joint), got {len(raw) if isinstance(raw, list) else type(raw).__name__}")
    for k, p in enumerate(raw):
        if isinstance(p, bool) or not isinstance(p, int) or not base <= p < v + base:
            raise LayoutError(f"{where}: field {field!r} entry {k} ({joints[k]}) is {p!r}, "
                              f"expected an index in [{base}, {v + base})")
    parents = [p - base for p in raw]
    _check_tree(parents, joints, where)
    center = _joint_index(obj["center"], joints, f"{where}: field 'center'")
    graph_center = _joint_index(obj.get("graph_center", center), joints,
                                f"{where}: field 'graph_center'")
    pairs = obj.get("mirror", [])
    if not isinstance(pairs, list):
        raise LayoutError(f"{where}: field 'mirror' must be a list of [left, right] pairs")
    seen: set[int] = set()
    index_pairs = []
    for k, pair in enumerate(pairs):
        at = f"{where}: field 'mirror' pair {k}"
        if not isinstance(pair, list) or len(pair) != 2:
            raise LayoutError(f"{at}: expected [left, right], got {pair!r}")
        left, right = (_joint_index(j, joints, at) for j in pair)
        if left == right or left in seen or right in seen:
            raise LayoutError(f"{at} {pair!r} is not a left/right pairing (a joint paired with "
                              f"itself or in two pairs)")
        seen |= {left, right}
        index_pairs.append((left, right))
    return _layout(name, joints, parents, center, graph_center, index_pairs, dims)


def load_layout(path) -> Layout:
    """Read and validate a layout JSON file (LayoutError naming the file)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except OSError as e:
        raise LayoutError(f"{path}: cannot read layout file ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LayoutError(f"{path}: not valid JSON ({e})") from None
    return layout_from_json(obj, str(path))


def get_layout(layout: str | Path | Layout) -> Layout:
    """A layout by built-in name or by the path of a JSON file (a Path, or a string ending in
    ``.json`` or containing ``/``); a Layout passes through."""
    if isinstance(layout, Layout):
        return layout
    if isinstance(layout, Path) or str(layout).endswith(".json") or "/" in str(layout):
        return load_layout(layout)
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; expected one of {sorted(LAYOUTS)} or a "
                          f"layout JSON file (template: python -m feeders.layouts ntu25)")
    return LAYOUTS[layout]


def _describe(layout: Layout) -> str:
    return f"{layout.name} ({layout.num_joints} joints, {layout.dims}D)"


def choose_layout(declared, joints: int, dims: tuple[int, ...], where: str) -> tuple[Layout, str]:
    """The layout of a source with `joints` joints whose channels can hold `dims`-D coordinates
    (e.g. ``(2,)`` for x, y + score, ``(3, 2)`` for 3 channels: x, y, z or x, y + score).

    Declared (a name, a JSON path or a Layout): checked against the data, returns
    ``(layout, "declared")``. Otherwise the built-in layout with that joint count and
    coordinate dimension is used only when it is the only one, with a warning on stderr, and
    ``(layout, "inferred")`` is returned; no candidate or several raise LayoutError listing them.
    """
    if declared is not None:
        layout = get_layout(declared)
        if layout.num_joints != joints:
            raise LayoutError(f"{where}: the data has {joints} joints, but layout {layout.name} "
                              f"has {layout.num_joints}")
        if layout.dims not in dims:
            raise LayoutError(f"{where}: layout {layout.name} is {layout.dims}D, but the data's "
                              f"channels hold {' or '.join(f'{d}D' for d in dims)} coordinates")
        return layout, "declared"
    candidates = [l for l in LAYOUTS.values() if l.num_joints == joints and l.dims in dims]
    data = f"{joints} joints in {' or '.join(f'{d}D' for d in dims)}"
    if len(candidates) != 1:
        found = (f"candidates: {', '.join(map(_describe, candidates))}" if candidates else
                 f"no built-in layout fits (built-in: {', '.join(map(_describe, LAYOUTS.values()))})")
        raise LayoutError(f"{where}: cannot choose a layout for {data}; {found}; declare it with "
                          f"--layout NAME or --layout FILE.json (template: python -m "
                          f"feeders.layouts ntu25 > mine.json)")
    layout = candidates[0]
    print(f"warning: {where}: no layout declared; {data} read as built-in layout "
          f"{_describe(layout)}. If your joints are in another order, declare them: "
          f"python -m feeders.layouts {layout.name} > mine.json, edit it, pass --layout mine.json",
          file=sys.stderr)
    return layout, "inferred"


def layout_json_text(layout: Layout) -> str:
    """`layout.to_json()` as JSON text with one field per line (a template to edit)."""
    fields = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in layout.to_json().items()]
    return "{\n" + ",\n".join(fields) + "\n}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m feeders.layouts",
        description="Print a built-in layout as JSON, a template for your own --layout FILE.json.")
    parser.add_argument("name", choices=sorted(LAYOUTS), help="built-in layout")
    args = parser.parse_args(argv)
    print(layout_json_text(LAYOUTS[args.name]))


if __name__ == "__main__":
    main()

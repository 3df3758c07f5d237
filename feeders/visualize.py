"""Draw one sequence of a dataset with its bone tree, to check a conversion at a glance.

    python -m feeders.visualize DATASET (--index N | --name NAME) --out FILE.gif|FILE.png
        [--plane xy|xz|zy] [--numbers] [--frames K] [--fps 10]

A GIF shows the frames over time, a PNG a grid of K frames evenly spaced over the sequence.
Every body has its own colour; a joint is drawn when it is present (a coordinate is non-zero
and, with a confidence channel, its confidence is > 0), a bone when both of its joints are.
3D data is projected onto ``--plane`` (its two axes, in that order); 2D data (image
coordinates, y down) is drawn with y pointing down. ``--numbers`` writes each joint's index in
storage order (the index of ``joints`` in the layout JSON), so a wrong joint order shows.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.animation import FuncAnimation, PillowWriter  # noqa: E402

from feeders.store import Store, open_store  # noqa: E402

PLANES = {"xy": (0, 1), "xz": (0, 2), "zy": (2, 1)}
SUFFIXES = (".gif", ".png")
COLOURS = plt.get_cmap("tab10").colors


def present_joints(seq: np.ndarray, dims: int) -> np.ndarray:
    """``(T, M, V)`` bool: joints with a non-zero coordinate (and, when ``seq`` ``(T, M, V, C)``
    has a channel after the ``dims`` coordinates, a confidence > 0)."""
    present = np.abs(seq[..., :dims]).max(axis=-1) > 0
    if seq.shape[-1] > dims:
        present &= seq[..., dims] > 0
    return present


def frame_indices(length: int, count: int) -> np.ndarray:
    """``count`` frame indices evenly spaced over ``[0, length)`` (all frames if fewer)."""
    return np.unique(np.linspace(0, length - 1, min(count, length)).round().astype(int))


def draw_frame(ax, points: np.ndarray, present: np.ndarray, parents, numbers: bool) -> None:
    """One frame: ``points`` ``(M, V, 2)`` projected joints, ``present`` ``(M, V)``."""
    for m in range(points.shape[0]):
        colour = COLOURS[m % len(COLOURS)]
        for child, parent in enumerate(parents):
            if child != parent and present[m, child] and present[m, parent]:
                ax.plot(*points[m, [child, parent]].T, color=colour, lw=1.5)
        seen = present[m]
        ax.scatter(*points[m, seen].T, color=colour, s=10, zorder=3)
        if numbers:
            for v in np.flatnonzero(seen):
                ax.annotate(str(v), points[m, v], fontsize=6, xytext=(2, 2),
                            textcoords="offset points")


def _axes_setup(ax, lims, flip_y: bool, title: str) -> None:
    ax.set_xlim(*lims[0])
    ax.set_ylim(*(lims[1][::-1] if flip_y else lims[1]))
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def render(store: Store, index: int, out: Path, plane: str = "xy", numbers: bool = False,
           frames: int | None = None, fps: int = 10) -> Path:
    """Draw sequence ``index`` of ``store`` into ``out`` (.gif or .png, written atomically)."""
    layout = store.layout
    dims = min(layout.dims, store.channels)
    axes = PLANES[plane]
    if max(axes) >= dims:
        raise ValueError(f"{store.root}: --plane {plane} needs 3D coordinates, but layout "
                         f"{layout.name} has {dims}D; use --plane xy")
    seq = np.asarray(store.sequence(index), dtype=np.float32)  # (T, M, V, C)
    present = present_joints(seq, dims)
    points = seq[..., list(axes)]  # (T, M, V, 2)
    if present.any():
        lo, hi = points[present].min(axis=0), points[present].max(axis=0)
    else:
        lo, hi = np.zeros(2), np.ones(2)
    pad = 0.05 * max(float((hi - lo).max()), 1e-6)
    lims = [(lo[k] - pad, hi[k] + pad) for k in range(2)]
    flip_y = layout.dims == 2  # image coordinates: y points down
    name = f"{store.names[index]} ({store.class_names[store.labels[index]]})"
    suffix = out.suffix.lower()
    picks = frame_indices(len(seq), frames or (8 if suffix == ".png" else 100))
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{suffix}")
    try:
        if suffix == ".png":
            cols = min(4, len(picks))
            rows = -(-len(picks) // cols)
            fig, grid = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
            for ax in grid.flat[len(picks):]:
                ax.axis("off")
            for ax, t in zip(grid.flat, picks):
                draw_frame(ax, points[t], present[t], layout.parents, numbers)
                _axes_setup(ax, lims, flip_y, f"frame {t + 1}/{len(seq)}")
            fig.suptitle(f"{name}, layout {layout.name}", fontsize=9)
            fig.tight_layout()
            fig.savefig(tmp, dpi=80)
        else:
            fig, ax = plt.subplots(figsize=(4, 4))

            def update(k):
                ax.clear()
                t = picks[k]
                draw_frame(ax, points[t], present[t], layout.parents, numbers)
                _axes_setup(ax, lims, flip_y, f"{name}\nframe {t + 1}/{len(seq)}")

            FuncAnimation(fig, update, frames=len(picks)).save(tmp, writer=PillowWriter(fps=fps),
                                                               dpi=80)
        plt.close(fig)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def find_sequence(store: Store, index: int | None, name: str | None) -> int:
    """The sequence index from ``--index`` or ``--name``; ValueError naming the dataset."""
    if name is not None:
        hits = np.flatnonzero(store.names == name)
        if not hits.size:
            raise ValueError(f"--name {name!r}: no such sequence in {store.root} (names like "
                             f"{', '.join(map(str, store.names[:3]))})")
        return int(hits[0])
    if not 0 <= index < len(store):
        raise ValueError(f"--index {index}: {store.root} has {len(store)} sequences "
                         f"(0..{len(store) - 1})")
    return index


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m feeders.visualize",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("dataset", type=Path, help="dataset directory (feeders.prepare output)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--index", type=int, help="sequence index")
    which.add_argument("--name", help="sequence name")
    parser.add_argument("--out", type=Path, required=True, help="output FILE.gif or FILE.png")
    parser.add_argument("--plane", choices=sorted(PLANES), default="xy",
                        help="projection plane of 3D data (default xy)")
    parser.add_argument("--numbers", action="store_true", help="number the joints")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames drawn, evenly spaced (default: 8 in a PNG, up to 100 in "
                             "a GIF)")
    parser.add_argument("--fps", type=int, default=10, help="GIF frames per second")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out.suffix.lower() not in SUFFIXES:
        parser.error(f"--out {args.out}: expected a .gif or .png file")
    if (args.frames is not None and args.frames < 1) or args.fps < 1:
        parser.error("--frames and --fps must be >= 1")
    try:
        store = open_store(args.dataset)
        index = find_sequence(store, args.index, args.name)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        out = render(store, index, args.out, args.plane, args.numbers, args.frames, args.fps)
    except ValueError as e:  # StoreError included
        parser.error(str(e))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

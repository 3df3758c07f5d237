"""Pictures of a run, written next to its results (matplotlib; t-SNE from scikit-learn).

    python -m evaluation.plots confusion RUN_DIR [--tag linear] [--counts]
        -> RUN_DIR/<tag>_confusion.png from <tag>_confusion.csv (action_recognition.py)
    python -m evaluation.plots tsne RUN_DIR --data DIR [--split xsub_val] [--checkpoint last.pt]
        [--max-points 2000]
        -> RUN_DIR/tsne_<split>.png: the frozen encoder's global features, coloured by class
    python -m evaluation.plots curves RUN_DIR [--tb RUN_DIR/tb]
        -> RUN_DIR/curves.png: the training scalars of the TensorBoard event files (or of
           RUN_DIR/log.txt when there are none), one panel per quantity

Confusion matrix: rows are true classes, columns predicted ones, both labelled with the class
names; the colour is the row-normalised rate, the cells show the rate in % (or the counts with
--counts) when there are at most 40 classes. action_recognition.py writes the same picture
(`confusion_figure`) after every evaluation. Images are written atomically.
"""
from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path

import numpy as np

import engine

ANNOTATE_MAX = 40  # classes up to which every cell is written in


# ----------------------------------------------------------------------------- figures
def _figure(width: float, height: float):
    """A matplotlib Figure with the Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> Path:
    """Write a figure as PNG, atomically."""
    path = Path(path)
    engine.atomic_write_bytes_via(path, lambda tmp: fig.savefig(tmp, format="png",
                                                                 bbox_inches="tight"))
    return path


def confusion_figure(cm: np.ndarray, class_names, counts: bool = False, title: str = ""):
    """A labelled confusion matrix: cm (K, K) int counts, row = true class, column = predicted.

    Colour: the row-normalised rate; cell text (K <= 40): the rate in % or, with ``counts``, the
    count; axes labelled with the class names; the title gives the overall accuracy."""
    cm = np.asarray(cm)
    k = cm.shape[0]
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(5.0, 0.32 * k + 2.5)
    fig = _figure(size + 1.2, size)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="rate (row-normalised)")
    font = 8.0 if k <= ANNOTATE_MAX else 7.0  # a cell is 0.32 inch (23 pt) high at any K
    ax.set_xticks(range(k), [str(n) for n in class_names], rotation=90, fontsize=font)
    ax.set_yticks(range(k), [str(n) for n in class_names], fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= ANNOTATE_MAX:
        for i in range(k):
            for j in range(k):
                if cm[i, j] == 0:
                    continue
                text = str(int(cm[i, j])) if counts else f"{100 * rates[i, j]:.0f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=font * 0.9,
                        color="white" if rates[i, j] > 0.5 else "black")
    accuracy = 100.0 * np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title + ': ' if title else ''}top-1 {accuracy:.1f} % of {int(cm.sum())} "
                 f"samples ({'counts' if counts else 'cells: % of the true class'})")
    return fig


def read_confusion_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    """The ``<tag>_confusion.csv`` of action_recognition.py -> (counts (K, K), class names)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (action_recognition.py writes it)")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    names = rows[0][1:]
    try:
        cm = np.array([[int(v) for v in row[1:]] for row in rows[1:]], dtype=np.int64)
    except ValueError as err:
        raise ValueError(f"{path}: expected integer counts: {err}") from None
    if cm.shape != (len(names), len(names)):
        raise ValueError(f"{path}: expected a {len(names)} x {len(names)} matrix, got {cm.shape}")
    return cm, names


def tsne_figure(points: np.ndarray, labels: np.ndarray, class_names, title: str = ""):
    """Scatter of 2-D points (N, 2) coloured by class, with a legend of the class names."""
    classes = np.unique(labels)
    fig = _figure(9.0 if len(classes) <= 30 else 8.0, 8.0)
    ax = fig.add_subplot(1, 1, 1)
    from matplotlib import colormaps

    cmap = colormaps["tab20" if len(classes) <= 20 else "hsv"]
    for n, c in enumerate(classes):
        sel = labels == c
        color = cmap(n % 20 if len(classes) <= 20 else n / len(classes))
        ax.scatter(points[sel, 0], points[sel, 1], s=8, color=color,
                   label=str(class_names[c]) if c < len(class_names) else str(c))
    if len(classes) <= 30:
        ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    return fig


def tsne_embed(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) t-SNE (cosine distance, PCA init, seeded)."""
    from sklearn.manifold import TSNE

    n = features.shape[0]
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {n}")
    perplexity = float(min(30.0, (n - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", metric="cosine",
                random_state=seed).fit_transform(features.astype(np.float32))


def subsample(labels: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Sorted positions of at most ``max_points`` samples, drawn with a seeded generator."""
    if len(labels) <= max_points:
        return np.arange(len(labels))
    return np.sort(np.random.default_rng(seed).choice(len(labels), max_points, replace=False))


# ----------------------------------------------------------------------------- curves
def read_tensorboard(tb_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar of the event files under ``tb_dir``: tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list] = {}
    for events in sorted(Path(tb_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: (np.array([s for s, _ in sorted(v)]), np.array([x for _, x in sorted(v)]))
            for tag, v in out.items()}


_EPOCH = re.compile(r"\bepoch (\d+)/\d+  (.*?)  elapsed ")


def read_log(log_txt: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The epoch lines of an engine log.txt: name -> (epochs, values)."""
    out: dict[str, list] = {}
    for line in Path(log_txt).read_text().splitlines():
        match = _EPOCH.search(line)
        if not match:
            continue
        for item in match[2].split("  "):
            name, _, value = item.rpartition(" ")
            try:
                out.setdefault(f"epoch/{name}", []).append((int(match[1]), float(value)))
            except ValueError:
                continue
    return {k: (np.array([s for s, _ in v]), np.array([x for _, x in v])) for k, v in out.items()}


def curves_figure(scalars: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "",
                  xlabel: str = "step"):
    """One panel per scalar (sorted by tag), its steps on x."""
    tags = sorted(scalars)
    cols = min(3, len(tags))
    rows = math.ceil(len(tags) / cols)
    fig = _figure(4.2 * cols, 2.8 * rows)
    for n, tag in enumerate(tags):
        ax = fig.add_subplot(rows, cols, n + 1)
        steps, values = scalars[tag]
        ax.plot(steps, values, linewidth=1.2, marker="o" if len(steps) < 30 else None,
                markersize=3)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("epoch" if tag.startswith(("eval/", "epoch/")) else xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.98 if title else 1))  # keep the title above the panels
    return fig


# ----------------------------------------------------------------------------- commands
def plot_confusion(run_dir: Path, tag: str = "linear", counts: bool = False) -> Path:
    cm, names = read_confusion_csv(Path(run_dir) / f"{tag}_confusion.csv")
    fig = confusion_figure(cm, names, counts, title=f"{Path(run_dir).name} {tag}")
    return save_figure(fig, Path(run_dir) / f"{tag}_confusion.png")


def plot_tsne(run_dir: Path, data: Path, split: str | None = None, checkpoint: str = "last",
              max_points: int = 2000, seed: int = 0, batch_size: int = 256) -> Path:
    """Features of ``split`` (default: the checkpoint's eval split) by the run's frozen encoder
    (through the run's feature cache, <run>/features), t-SNE, scatter."""
    import torch

    from evaluation.features import (build_eval_encoder, cached_extract, checkpoint_config,
                                     read_checkpoint, resolve_encoder_config,
                                     resolve_pretrained)
    from feeders.store import open_store

    run_dir = Path(run_dir)
    path = resolve_pretrained(checkpoint, run_dir)
    if path is None:
        raise ValueError("--checkpoint: a checkpoint is needed (a path, last or an epoch)")
    ckpt = read_checkpoint(path)
    store = open_store(data)
    saved = checkpoint_config(ckpt)
    split = (split or saved.get("eval_split")
             or engine.eval_split_for(saved.get("split", "xsub_train")))
    unset = argparse.Namespace(**dict.fromkeys(("backbone", "preset", "stream", "clip_len",
                                                "spatial_channels", "normalize")))
    cfg = resolve_encoder_config(unset, ckpt, path, store)
    encoder = build_eval_encoder(cfg, store, seed, ckpt, path)
    info = engine.DistInfo(0, 1, 0, torch.device("cpu"))
    feats, labels = cached_extract(encoder, store, split, cache_dir=run_dir / "features",
                                   info=info, dtype=None, stream=cfg["stream"],
                                   clip_len=cfg["clip_len"], normalize=cfg["normalize"],
                                   spatial_channels=cfg["spatial_channels"],
                                   batch_size=batch_size)
    labels = labels.numpy()
    keep = subsample(labels, max_points, seed)
    feats = feats.numpy()[keep]
    points = tsne_embed(feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12),
                        seed)
    fig = tsne_figure(points, labels[keep], store.manifest["class_names"],
                      title=f"t-SNE of {run_dir.name} ({path.name}) on {split}: "
                            f"{len(keep)} of {len(labels)} sequences")
    return save_figure(fig, run_dir / f"tsne_{split}.png")


def plot_curves(run_dir: Path, tb_dir: Path | None = None) -> Path:
    run_dir = Path(run_dir)
    tb_dir = Path(tb_dir) if tb_dir else run_dir / "tb"
    scalars = read_tensorboard(tb_dir) if tb_dir.is_dir() else {}
    xlabel = "step"
    if not scalars and (run_dir / "log.txt").is_file():
        scalars, xlabel = read_log(run_dir / "log.txt"), "epoch"
    if not scalars:
        raise FileNotFoundError(f"no TensorBoard scalars under {tb_dir} and no epoch lines in "
                                f"{run_dir / 'log.txt'}")
    return save_figure(curves_figure(scalars, title=run_dir.name, xlabel=xlabel),
                       run_dir / "curves.png")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation.plots",
                                     description="Pictures of a run: confusion matrix, t-SNE "
                                                 "of the embeddings, training curves.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="confusion | tsne | curves")
    p = sub.add_parser("confusion", help="labelled confusion matrix of <tag>_confusion.csv")
    p.add_argument("run_dir", type=Path, help="run directory")
    p.add_argument("--tag", default="linear",
                   help="result tag: linear, finetune, linear_0.1, ... (default: %(default)s)")
    p.add_argument("--counts", action="store_true", help="write counts in the cells, not rates")
    p = sub.add_parser("tsne", help="t-SNE of the frozen encoder's features, coloured by class")
    p.add_argument("run_dir", type=Path, help="run directory")
    p.add_argument("--data", type=Path, required=True, help="dataset directory")
    p.add_argument("--split", default=None,
                   help="split to embed (default: the checkpoint's evaluation split)")
    p.add_argument("--checkpoint", default="last",
                   help="path, last or an epoch number (default: %(default)s)")
    p.add_argument("--max-points", type=int, default=2000,
                   help="seeded random subset of at most this many sequences "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="subset and t-SNE seed (default: %(default)s)")
    p = sub.add_parser("curves", help="training curves from TensorBoard events (or log.txt)")
    p.add_argument("run_dir", type=Path, help="run directory")
    p.add_argument("--tb", type=Path, default=None, help="event directory (default: RUN_DIR/tb)")
    return parser


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    if args.command == "confusion":
        out = plot_confusion(args.run_dir, args.tag, args.counts)
    elif args.command == "tsne":
        if args.max_points < 3:
            raise ValueError(f"--max-points must be >= 3, got {args.max_points}")
        out = plot_tsne(args.run_dir, args.data, args.split, args.checkpoint, args.max_points,
                        args.seed)
    else:
        out = plot_curves(args.run_dir, args.tb)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    engine.run_cli(main, "python -m evaluation.plots")

"""Multi-stream score fusion.

Per-sample test scores are stored by ``action_recognition.py`` in a sidecar ``.npz`` next to
its results JSON (the JSON's ``scores_file`` field names it): arrays ``names`` (N,) str,
``labels`` (N,) int64 and ``scores`` (N, classes) float32 logits.

    python -m evaluation.fusion A.json B.json C.json D.json --weights 2,2,1,1 \\
        [--output RUN_DIR/fusion_finetune.json]

accepts results JSONs or ``.npz`` score files, refuses files whose sample names (or their
order), labels or class counts differ or whose scores are not finite (NaN or inf: the error
names the first samples), and prints every stream's top-1 and the fused top-1.
Fusion adds ``weight * softmax(logits)`` per stream (``--logits``: adds raw logits instead).
Default weights are equal (1:1:1 for three streams); pyskl's 4-stream convention is
joint:bone:joint-motion:bone-motion = 2:2:1:1. ``--output`` writes the summary (every
stream's top-1, their ``stream`` fields when read from results JSONs, the fused top-1 and top-5);
named ``fusion_<tag>.json`` inside a run directory, ``evaluation.report`` shows it as a row.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from evaluation.checks import require_finite


class ScoreFile(NamedTuple):
    path: str
    names: np.ndarray    # (N,) str
    labels: np.ndarray   # (N,) int64
    scores: np.ndarray   # (N, classes) float32 logits
    stream: str | None = None  # the results JSON's `stream` field (None for a bare .npz)


def save_scores(path: str | Path, names, labels, scores) -> None:
    """Atomically write a score file ``path`` (.npz); shapes (N,), (N,), (N, classes)."""
    path = Path(path)
    names = np.asarray(names).astype(str)
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2 or not len(names) == len(labels) == scores.shape[0]:
        raise ValueError(f"{path}: need names (N,), labels (N,), scores (N, C); got "
                         f"{names.shape}, {labels.shape}, {scores.shape}")
    require_finite(scores, f"scores for {path}", names)

    def write(f) -> None:
        np.savez(f, names=names, labels=labels, scores=scores)
    atomic_write(path, write)


def atomic_write(path: Path, write) -> None:
    """``write(file object)`` into ``.<name>.tmp<PID>`` next to ``path``, then rename it into
    place (engine.temp_path's naming, so the run directory's cleanup knows a killed writer's
    leftover); an OSError (full disk, read-only directory) becomes a ValueError naming path."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as err:
        raise ValueError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        tmp.unlink(missing_ok=True)


def load_scores(path: str | Path) -> ScoreFile:
    """Read a score ``.npz`` or a results ``.json`` whose ``scores_file`` names one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such score file")
    npz_path, stream = path, None
    if path.suffix == ".json":
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if "scores_file" not in meta:
            raise ValueError(f"{path}: results JSON has no 'scores_file' field "
                             "(per-sample scores are needed for fusion)")
        npz_path = path.parent / meta["scores_file"]
        stream = meta.get("stream")
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"{npz_path}: cannot read score file ({err})") from None
    missing = {"names", "labels", "scores"} - set(arrays)
    if missing:
        raise ValueError(f"{npz_path}: missing arrays {sorted(missing)}")
    out = ScoreFile(str(path), arrays["names"].astype(str), arrays["labels"].astype(np.int64),
                    arrays["scores"].astype(np.float32), stream)
    if out.scores.ndim != 2 or not len(out.names) == len(out.labels) == out.scores.shape[0]:
        raise ValueError(f"{npz_path}: inconsistent shapes names {out.names.shape}, "
                         f"labels {out.labels.shape}, scores {out.scores.shape}")
    require_finite(out.scores, f"{npz_path}: scores", out.names)
    return out


def check_aligned(files: list[ScoreFile]) -> None:
    """Raise ValueError unless all files list the same samples, in the same order, with the
    same labels and class count."""
    ref = files[0]
    for other in files[1:]:
        pair = f"{ref.path} and {other.path}"
        if len(other.names) != len(ref.names):
            raise ValueError(f"{pair} hold different numbers of samples "
                             f"({len(ref.names)} vs {len(other.names)})")
        differ = np.flatnonzero(other.names != ref.names)
        if differ.size:
            i = differ[0]
            what = ("the same samples in a different order"
                    if set(other.names) == set(ref.names) else "different samples")
            raise ValueError(f"{pair} hold {what}: first mismatch at position {i} "
                             f"({str(ref.names[i])!r} vs {str(other.names[i])!r})")
        if not np.array_equal(other.labels, ref.labels):
            raise ValueError(f"{pair} disagree on the labels of the same samples")
        if other.scores.shape[1] != ref.scores.shape[1]:
            raise ValueError(f"{pair} have different class counts "
                             f"({ref.scores.shape[1]} vs {other.scores.shape[1]})")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fuse(files: list[ScoreFile], weights: list[float] | None = None,
         use_softmax: bool = True) -> np.ndarray:
    """Weighted sum of per-stream scores -> (N, C). Equal weights by default."""
    check_aligned(files)
    weights = [1.0] * len(files) if weights is None else list(weights)
    if len(weights) != len(files):
        raise ValueError(f"{len(weights)} weights given for {len(files)} score files")
    total = np.zeros_like(files[0].scores, dtype=np.float64)
    for w, f in zip(weights, files):
        total += w * (softmax(f.scores) if use_softmax else f.scores)
    require_finite(total, f"fused scores (weights {weights})", files[0].names)
    return total


def topk(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Top-k accuracy in % of scores (N, C) against labels (N,): the label among the k highest
    scores (ties: the lower class first); k is capped at C."""
    k = min(k, scores.shape[1])
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return 100.0 * float((best == labels[:, None]).any(axis=1).mean())


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    return topk(scores, labels, 1)


def parse_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise ValueError(f"--weights must be comma-separated numbers, got {text!r}") from None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.fusion",
        description="Fuse per-sample scores of several streams (results .json or score .npz). "
                    "Default: equal weights on softmax scores; pyskl's 4-stream convention is "
                    "j:b:jm:bm = 2:2:1:1.")
    parser.add_argument("files", nargs="+", help="results JSON or score .npz files")
    parser.add_argument("--weights", default=None, help="comma-separated, e.g. 2,2,1,1")
    parser.add_argument("--logits", action="store_true",
                        help="add raw logits instead of softmax probabilities")
    parser.add_argument("--output", default=None,
                        help="write the summary as JSON here; name it <run dir>/fusion_<tag>"
                             ".json (e.g. fusion_finetune.json) for evaluation.report to show it")
    args = parser.parse_args(argv)
    try:
        files = [load_scores(p) for p in args.files]
        weights = parse_weights(args.weights)
        fused = fuse(files, weights, use_softmax=not args.logits)
    except ValueError as err:
        parser.error(str(err))
    labels = files[0].labels
    summary = {"streams": {f.path: top1(f.scores, labels) for f in files},
               "stream_names": [f.stream for f in files],
               "weights": weights or [1.0] * len(files),
               "mode": "logits" if args.logits else "softmax",
               "num_samples": int(len(labels)),
               "fused_top1": top1(fused, labels), "fused_top5": topk(fused, labels, 5)}
    for path, acc in summary["streams"].items():
        print(f"{acc:6.2f}  {path}")
    print(f"{summary['fused_top1']:6.2f}  fused (weights {summary['weights']}, {summary['mode']})")
    if args.output:
        text = json.dumps(summary, indent=2) + "\n"
        try:
            atomic_write(Path(args.output), lambda f: f.write(text.encode()))
        except ValueError as err:
            parser.error(str(err))
    return summary


if __name__ == "__main__":
    main()

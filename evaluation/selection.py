"""Proposal settings chosen on the training streams: the cross-validation folds and the grid
search over --threshold x --smooth shared by action_detection.py and the learning-free floor
(evaluation.detection_floor), so that both are judged with proposal settings chosen the same
way, on the training split only.

A fold holds about a fraction F of the training streams; each fold is predicted by a model
(a head, or the floor's gallery) built from the other streams, and the (threshold, smoothing)
pair with the best mAP_a at IoU 0.5 over all the out-of-fold predictions is kept (ties: the
lower threshold, then the narrower smoothing).
"""
from __future__ import annotations

import numpy as np

from evaluation.detection import evaluate_streams
from feeders.untrimmed import stream_labels

THRESHOLD_GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SMOOTH_GRID = (1, 5, 9, 15, 25)   # moving-average widths (frames) tried with --select-threshold


def selection_folds(streams: np.ndarray, fraction: float) -> list[np.ndarray]:
    """The training streams ``(S,)`` in folds of about ``fraction`` of them each (at least one
    stream, at least two folds): fold f holds streams f, f + k, f + 2k, ... of k folds."""
    if len(streams) < 2:
        raise ValueError(f"--select-threshold needs at least 2 training streams, got "
                         f"{len(streams)}")
    count = max(1, int(round(fraction * len(streams))))
    folds = max(2, int(round(len(streams) / count)))
    return [streams[f::folds] for f in range(min(folds, len(streams)))]


def choose_settings(probs: dict[int, np.ndarray], store, min_length: int,
                    nms_iou: float | None) -> dict:
    """The best (threshold, smoothing) of THRESHOLD_GRID x SMOOTH_GRID for the out-of-fold
    per-frame probabilities ``probs`` (store index -> (T, K + 1)) against the streams'
    per-frame labels. Returns {"threshold", "smooth", "grid_mAP_a@0.5": {smooth:
    {threshold: %}}, "best_mAP_a@0.5"}."""
    names = {s: str(store.names[s]) for s in probs}
    by_name = {names[s]: p for s, p in probs.items()}
    labels = {names[s]: stream_labels(store, s) for s in probs}
    grid = {}
    for w in SMOOTH_GRID:
        grid[str(w)] = {}
        for t in THRESHOLD_GRID:
            metrics, _ = evaluate_streams(by_name, labels, store.num_classes - 1, threshold=t,
                                          min_length=min_length, smooth=w, nms_iou=nms_iou)
            grid[str(w)][f"{t:g}"] = metrics["mAP_a"]["0.5"]
    best_t, best_w = max(((t, w) for w in SMOOTH_GRID for t in THRESHOLD_GRID),
                         key=lambda tw: (grid[str(tw[1])][f"{tw[0]:g}"], -tw[0], -tw[1]))
    return {"threshold": best_t, "smooth": best_w, "grid_mAP_a@0.5": grid,
            "best_mAP_a@0.5": grid[str(best_w)][f"{best_t:g}"]}

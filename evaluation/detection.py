"""Temporal action detection and segmentation: metrics, proposals and window stitching (numpy).

Conventions: a stream has T frames; per-frame labels are ints ``(T,)`` with 0 = background and
1..K the actions; an instance or a proposal covers frames ``[start, end)`` (0-based, ``end``
exclusive) of the stored stream. Ground-truth instances are the maximal runs of one non-zero
label in the per-frame labels (``instances_from_labels``).

Detection metric, exactly as the official PKU-MMD evaluator (``evaluate.py`` of the dataset,
docs DATA.md section 3.1):

- overlap = ``(min(e_p, e_g) - max(s_p, s_g)) / (max(e_p, e_g) - min(s_p, s_g))`` (no +1; with
  exclusive ends this is the intersection over union of the frame sets), only between a
  proposal and a ground truth of the same label in the same video;
- each proposal is assigned to the ground truth it overlaps most if that overlap is >= theta
  (ties: the later ground truth); a ground truth counts once however many proposals it gets;
- AP: proposals sorted by confidence (ascending, stable), then removed from the least
  confident one: at each removed matched proposal, precision and recall are recomputed,
  precision is made monotone (the running max) and ``score += precision * (old_recall -
  recall)``; with no proposal or no ground truth AP is 0;
- mAP_a: mean AP over the action classes 1..K, each class over all videos (a class with no
  ground truth in the test set scores 0, as in the official code); mAP_v: mean AP over the
  videos, all classes of a video together; F1 and AP over all proposals at theta 0.5; 2D-AP:
  mean AP over theta = 0.05, 0.10, ..., 1.00.

Segmentation (MS-TCN's definitions, background (0) segments left out as MS-TCN's bg_class):
per-frame accuracy (every frame, background included); segmental edit score = 100 * (1 -
Levenshtein(segments_pred, segments_gt) / max(len)) over the sequences of segment labels
(100 when both are empty); F1@k: a predicted segment is a true positive when the ground-truth
segment of its label that it overlaps most has IoU >= k/100 and is not matched yet.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from feeders.untrimmed import instances_from_labels, segments, window_starts  # noqa: F401

THETAS = (0.1, 0.3, 0.5, 0.7)
THETAS_2D = tuple(round(0.05 * (i + 1), 2) for i in range(20))
SEGMENT_F1 = (10, 25, 50)


# ----------------------------------------------------------------------------- the PKU-MMD metric
def overlap(prop: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Official overlap of one proposal (start, end) with ground truths ``(n, 2)`` -> ``(n,)``."""
    s_p, e_p = float(prop[0]), float(prop[1])
    s_g, e_g = gt[:, 0].astype(np.float64), gt[:, 1].astype(np.float64)
    return (np.minimum(e_p, e_g) - np.maximum(s_p, s_g)) / (np.maximum(e_p, e_g) -
                                                             np.minimum(s_p, s_g))


def match(props: np.ndarray, gts: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Assign proposals to ground truths as the official ``match``.

    props: ``(P, 5)`` rows (label, start, end, confidence, video); gts: ``(G, 4)`` rows
    (label, start, end, video). Returns (assigned ground truth per proposal ``(P,)``, -1 when
    none; number of proposals on each ground truth ``(G,)``).
    """
    assigned = np.full(len(props), -1, dtype=np.int64)
    counts = np.zeros(len(gts), dtype=np.int64)
    for i, p in enumerate(props):
        same = np.flatnonzero((gts[:, 0] == p[0]) & (gts[:, 3] == p[4]))
        if same.size == 0:
            continue
        ov = overlap(p[1:3], gts[same, 1:3])
        ok = ov >= theta
        if not ok.any():
            continue
        best = ov[ok].max()
        assigned[i] = same[np.flatnonzero(ok & (ov == best))[-1]]   # ties: the later one
        counts[assigned[i]] += 1
    return assigned, counts


def _precision_recall(positive: int, proposals: int, ground: int) -> tuple[float, float]:
    if proposals == 0 or ground == 0:
        return 0.0, 0.0
    return positive / proposals, positive / ground


def f1_score(props: np.ndarray, gts: np.ndarray, theta: float) -> float:
    """Official F1 (0..1) of all proposals against all ground truths."""
    _, counts = match(props, gts, theta)
    precision, recall = _precision_recall(int((counts > 0).sum()), len(props), len(gts))
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def average_precision(props: np.ndarray, gts: np.ndarray, theta: float) -> float:
    """Official AP (0..1); props ``(P, 5)`` and gts ``(G, 4)`` as in ``match``."""
    props = props[np.argsort(props[:, 3], kind="stable")] if len(props) else props
    assigned, counts = match(props, gts, theta)
    counts = counts.copy()
    positive = int((counts > 0).sum())
    remaining, ground = len(props), len(gts)
    best_precision, old_recall = _precision_recall(positive, remaining, ground)
    score = 0.0
    for g in assigned:
        remaining -= 1
        if g == -1:
            continue
        counts[g] -= 1
        if counts[g] == 0:
            positive -= 1
        precision, recall = _precision_recall(positive, remaining, ground)
        best_precision = max(best_precision, precision)
        score += best_precision * (old_recall - recall)
        old_recall = recall
    return score


def _as_tables(proposals: dict, ground_truth: dict) -> tuple[np.ndarray, np.ndarray, list]:
    """Dicts video -> rows into flat tables with a video column (the video's position)."""
    videos = sorted(ground_truth)
    unknown = sorted(set(proposals) - set(videos))
    if unknown:
        raise ValueError(f"proposals for videos without ground truth: {unknown[:5]}")
    props, gts = [], []
    for v, name in enumerate(videos):
        p = np.asarray(proposals.get(name, np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
        g = np.asarray(ground_truth[name], dtype=np.float64).reshape(-1, 3)
        props.append(np.column_stack([p, np.full(len(p), v)]))
        gts.append(np.column_stack([g, np.full(len(g), v)]))
    return np.concatenate(props), np.concatenate(gts), videos


def detection_metrics(proposals: dict, ground_truth: dict, num_actions: int,
                      thetas=THETAS) -> dict:
    """The PKU-MMD metrics in %.

    proposals: video name -> ``(P, 4)`` rows (label, start, end, confidence); ground_truth:
    video name -> ``(G, 3)`` rows (label, start, end), every test video (possibly with no row);
    num_actions: K (classes 1..K). Returns ``mAP_a`` and ``mAP_v`` (dicts keyed by the threshold
    as a string, e.g. "0.5"), ``F1@0.5``, ``AP@0.5`` and ``2D-AP``.
    """
    props, gts, videos = _as_tables(proposals, ground_truth)
    everything = props[np.argsort(props[:, 0], kind="stable")]   # the official all_props order

    def m_ap_a(theta):
        return np.mean([average_precision(props[props[:, 0] == c], gts[gts[:, 0] == c], theta)
                        for c in range(1, num_actions + 1)])

    def m_ap_v(theta):
        return np.mean([average_precision(props[props[:, 4] == v], gts[gts[:, 3] == v], theta)
                        for v in range(len(videos))])

    return {
        "mAP_a": {f"{t:g}": 100 * float(m_ap_a(t)) for t in thetas},
        "mAP_v": {f"{t:g}": 100 * float(m_ap_v(t)) for t in thetas},
        "F1@0.5": 100 * f1_score(everything, gts, 0.5),
        "AP@0.5": 100 * average_precision(everything, gts, 0.5),
        "2D-AP": 100 * float(np.mean([average_precision(everything, gts, t)
                                      for t in THETAS_2D])),
        "num_videos": len(videos), "num_instances": int(len(gts)),
        "num_proposals": int(len(props)),
    }


# ----------------------------------------------------------------------------- segmentation
def frame_accuracy(pred: list[np.ndarray], true: list[np.ndarray]) -> float:
    """Per-frame accuracy in % over all frames of all streams."""
    correct = sum(int((np.asarray(p) == np.asarray(t)).sum()) for p, t in zip(pred, true))
    return 100.0 * correct / max(1, sum(len(t) for t in true))


def levenshtein(a: list, b: list) -> int:
    """Edit distance between two label sequences (insert, delete, substitute cost 1)."""
    row = np.arange(len(b) + 1)
    for i, x in enumerate(a, start=1):
        prev, row = row, np.empty_like(row)
        row[0] = i
        for j, y in enumerate(b, start=1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (x != y))
    return int(row[-1])


def edit_score(pred: np.ndarray, true: np.ndarray) -> float:
    """Segmental edit score (0..100) of one stream."""
    a = [s[0] for s in segments(pred) if s[0] != 0]
    b = [s[0] for s in segments(true) if s[0] != 0]
    return 100.0 * (1 - levenshtein(a, b) / max(len(a), len(b), 1))


def f1_overlap_counts(pred: np.ndarray, true: np.ndarray, k: float) -> tuple[int, int, int]:
    """(tp, fp, fn) of MS-TCN's F1@k on one stream, background (0) segments ignored."""
    p = [s for s in segments(pred) if s[0] != 0]
    g = [s for s in segments(true) if s[0] != 0]
    used = np.zeros(len(g), dtype=bool)
    tp = fp = 0
    for label, s, e in p:
        ious = np.array([(min(e, ge) - max(s, gs)) / (max(e, ge) - min(s, gs))
                         if gl == label else -1.0 for gl, gs, ge in g]) if g else np.zeros(0)
        best = int(ious.argmax()) if ious.size else -1
        if best >= 0 and ious[best] >= k / 100 and not used[best]:
            tp += 1
            used[best] = True
        else:
            fp += 1
    return tp, fp, len(g) - int(used.sum())


def segmentation_metrics(pred: list[np.ndarray], true: list[np.ndarray]) -> dict:
    """Frame accuracy, mean edit score and F1@{10,25,50} (counts summed over streams), in %."""
    out = {"accuracy": frame_accuracy(pred, true),
           "edit": float(np.mean([edit_score(p, t) for p, t in zip(pred, true)]))}
    for k in SEGMENT_F1:
        tp, fp, fn = map(sum, zip(*(f1_overlap_counts(p, t, k) for p, t in zip(pred, true))))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        out[f"F1@{k}"] = (200 * precision * recall / (precision + recall)
                          if precision + recall else 0.0)
    return out


# ----------------------------------------------------------------------------- windows
def stitch(window_scores: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Average per-frame scores of overlapping windows.

    window_scores: ``(W, L, K)`` for windows starting at ``starts (W,)``; positions past the end
    of the stream (padding) are dropped. Returns ``(length, K)``; raises if a frame is uncovered.
    """
    total = np.zeros((length, window_scores.shape[2]), dtype=np.float64)
    count = np.zeros(length, dtype=np.int64)
    for scores, s in zip(window_scores, starts):
        n = min(window_scores.shape[1], length - int(s))
        total[s:s + n] += scores[:n]
        count[s:s + n] += 1
    if (count == 0).any():
        raise ValueError(f"frames {np.flatnonzero(count == 0)[:5].tolist()} are not covered by "
                         f"any window")
    return (total / count[:, None]).astype(np.float32)


# ----------------------------------------------------------------------------- proposals
def smooth_scores(scores: np.ndarray, width: int) -> np.ndarray:
    """Moving average over ``width`` frames (edges: the mean of the frames inside); (T, K)."""
    if width <= 1:
        return scores
    kernel = np.ones(width)
    num = np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="same"), 0, scores)
    den = np.convolve(np.ones(len(scores)), kernel, mode="same")[:, None]
    return (num / den).astype(np.float32)


def nms(props: np.ndarray, iou: float) -> np.ndarray:
    """Greedy per-class NMS on rows (label, start, end, confidence): highest confidence first,
    a proposal is dropped when its overlap with a kept one of its class exceeds ``iou``."""
    keep = []
    for i in np.argsort(-props[:, 3], kind="stable"):
        kept = props[keep]
        kept = kept[kept[:, 0] == props[i, 0]]
        if len(kept) and overlap(props[i, 1:3], kept[:, 1:3]).max() > iou:
            continue
        keep.append(i)
    return props[sorted(keep)]


def proposals_from_scores(scores: np.ndarray, threshold: float, min_length: int = 1,
                          smooth: int = 1, nms_iou: float | None = None) -> np.ndarray:
    """Per-frame class probabilities ``(T, K + 1)`` (column 0 = background) -> proposals.

    For each action class, every maximal run of frames whose (smoothed) probability is above
    ``threshold`` and at least ``min_length`` frames long is a proposal (label, start, end,
    mean probability over the run). Returns ``(P, 4)`` float64, sorted by (start, label).
    """
    scores = smooth_scores(np.asarray(scores, dtype=np.float32), smooth)
    rows = []
    for c in range(1, scores.shape[1]):
        for on, s, e in segments((scores[:, c] > threshold).astype(np.int64)):
            if on and e - s >= min_length:
                rows.append((c, s, e, float(scores[s:e, c].mean())))
    props = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    if nms_iou is not None and len(props):
        props = nms(props, nms_iou)
    return props[np.lexsort((props[:, 0], props[:, 1]))] if len(props) else props


def write_proposals(path, props: np.ndarray) -> None:
    """One video's proposals in the official text format ``label,start,end,confidence``."""
    from engine import atomic_write_bytes_via   # only the writer needs torch's engine
    text = "".join(f"{int(l)},{int(s)},{int(e)},{c:.6f}\n" for l, s, e, c in props)
    atomic_write_bytes_via(path, lambda tmp: tmp.write_text(text))


def read_proposals(path) -> np.ndarray:
    """A file written by ``write_proposals`` (or an official label file) -> ``(P, 4)``."""
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(",")
        try:
            rows.append([float(f) for f in fields])
        except ValueError:
            raise ValueError(f"{path}:{number}: expected 'label,start,end,confidence'") from None
        if len(fields) != 4:
            raise ValueError(f"{path}:{number}: expected 4 fields, got {len(fields)}")
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


# ----------------------------------------------------------------------------- one call
def evaluate_streams(probs: dict, labels: dict, num_actions: int, *, threshold: float,
                     min_length: int = 1, smooth: int = 1,
                     nms_iou: float | None = None) -> tuple[dict, dict]:
    """Detection and segmentation metrics of per-frame class probabilities.

    probs: video name -> ``(T, K + 1)``; labels: video name -> per-frame labels ``(T,)`` (every
    test video). Proposals as ``proposals_from_scores``; segmentation output = the arg-max class
    of every (unsmoothed) frame. Returns (metrics with a ``segmentation`` entry, proposals by
    video name).
    """
    proposals, ground_truth, preds, trues = {}, {}, [], []
    for name, p in probs.items():
        ground_truth[name] = instances_from_labels(labels[name])
        proposals[name] = proposals_from_scores(p, threshold, min_length, smooth, nms_iou)
        preds.append(np.asarray(p).argmax(axis=1))
        trues.append(np.asarray(labels[name]))
    metrics = detection_metrics(proposals, ground_truth, num_actions)
    metrics["segmentation"] = segmentation_metrics(preds, trues)
    return metrics, proposals


def write_results(output, tag: str, probs: dict, labels: dict, metrics: dict, proposals: dict,
                  extra: dict) -> Path:
    """Write a detection run's outputs into the folder ``output``; returns ``<tag>.json``.

    ``<tag>_proposals/<video>.txt`` (the official text format; the folder is written aside and
    renamed into place), ``<tag>_scores.npz`` (``names``, ``lengths``, ``scores (sum T, K + 1)``,
    ``labels (sum T,)``: per-frame probabilities for fusion) and ``<tag>.json`` = metrics +
    ``extra`` (flags, protocol) + the paths of the other two.
    """
    import shutil

    from engine import atomic_write_bytes_via, write_json

    output = Path(output)
    folder = output / f"{tag}_proposals"
    tmp = output / f".{tag}_proposals.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, props in proposals.items():
        write_proposals(tmp / f"{name}.txt", props)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    names = sorted(probs)
    scores_path = output / f"{tag}_scores.npz"

    def save(path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, names=np.array(names),
                     lengths=np.array([len(probs[n]) for n in names], dtype=np.int64),
                     scores=np.concatenate([probs[n] for n in names]).astype(np.float32),
                     labels=np.concatenate([labels[n] for n in names]).astype(np.int64))

    atomic_write_bytes_via(scores_path, save)
    path = output / f"{tag}.json"
    write_json(path, {**metrics, **extra, "proposals_dir": str(folder),
                      "scores": str(scores_path)})
    return path


def summary_line(metrics: dict) -> str:
    """The headline numbers of ``detection_metrics`` + ``segmentation`` on one line."""
    seg = metrics["segmentation"]
    return (f"mAP_a@0.5 {metrics['mAP_a']['0.5']:.1f}  mAP_v@0.5 {metrics['mAP_v']['0.5']:.1f}  "
            f"F1@0.5 {metrics['F1@0.5']:.1f}  2D-AP {metrics['2D-AP']:.1f}  frame acc "
            f"{seg['accuracy']:.1f}  edit {seg['edit']:.1f}  F1@50 {seg['F1@50']:.1f}")

"""The learning-free floor of temporal detection: per-frame nearest neighbour on raw coordinates.

Every frame of every stream is one pose ``(M, V, C)``, centred on the layout's centre joint of
body 1 in that frame (bodies absent in the frame stay zero) and flattened; each test frame
takes the per-frame labels of its ``--k`` most cosine-similar training frames (evaluation.knn;
probabilities = the vote shares, k = 1: one-hot), and the proposals, metrics and outputs are
those of action_detection.py (same --threshold, --min-length, --smooth, --nms).

    python -m evaluation.detection_floor --data DIR --split xsub_train --output RUN_DIR
        [--eval-split xsub_val] [--k 1] [--threshold 0.5] [--min-length 5] [--smooth 1]
        [--select-threshold 0.2 | --settings-from RUN_DIR/detection.json]

``--select-threshold F`` chooses the threshold and smoothing on the training split only, as
action_detection.py does (evaluation/selection.py): in folds of about F of the training streams,
each fold's frames are matched against the other training streams' frames, and the pair with
the best out-of-fold mAP_a@0.5 is kept (recorded under ``threshold_selection``). This is the
fair floor: its proposal settings are chosen for its own scores (one-hot per-frame votes are
noisy, so it needs smoothing that an encoder's smoother probabilities may not). ``--settings-from``
instead takes the proposal settings (threshold, min length, smoothing, NMS) of a detection
result, to compare the floor and an encoder with the same proposal generation.

Writes <output>/detection_floor.json (+ _proposals/, _scores.npz), like detection.json.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from engine import eval_split_for, run_cli
from evaluation.protocol import make_protocol
from evaluation.detection import evaluate_streams, summary_line, write_results
from evaluation.fusion import settings_from
from evaluation.knn import l2_normalize, search
from evaluation.selection import choose_settings, selection_folds
from feeders.store import open_store
from feeders.untrimmed import stream_labels

PROTOCOL = ("learning-free floor: cosine k-NN of each frame's raw pose (centred on body 1's "
            "centre joint in that frame) among the training frames; proposals as "
            "action_detection.py")


def frame_poses(store, s: int) -> torch.Tensor:
    """Stream ``s`` as ``(T, M*V*C)`` float32 poses centred per frame on body 1's centre joint."""
    seq = np.array(store.sequence(s), dtype=np.float32)            # (T, M, V, C)
    dims = min(store.channels, store.layout.dims)
    present = np.any(seq != 0, axis=(2, 3))                          # (T, M)
    center = seq[:, 0, store.layout.center, :dims].copy()           # (T, dims)
    seq[..., :dims] -= center[:, None, None, :]
    seq[~present] = 0
    return torch.from_numpy(seq.reshape(len(seq), -1))


def floor_probabilities(store, train, test, k: int = 1) -> dict[int, np.ndarray]:
    """Per-frame class probabilities ``(T, K + 1)`` of each test stream (by store index):
    ``train`` and ``test`` are the store indices of the gallery and query streams."""
    gallery = l2_normalize(torch.cat([frame_poses(store, int(s)) for s in train]))
    gallery_labels = torch.from_numpy(np.concatenate([stream_labels(store, int(s))
                                                      for s in train]))
    out = {}
    for s in test:
        _, idx = search(l2_normalize(frame_poses(store, int(s))), gallery, k=k)
        votes = torch.zeros(idx.shape[0], store.num_classes)
        votes.scatter_add_(1, gallery_labels[idx], torch.ones(idx.shape))
        out[int(s)] = (votes / k).numpy()
    return out


def select_settings(store, train, args) -> dict:
    """--select-threshold: every training stream's frames matched against the other folds'
    frames, then the grid search of evaluation.selection.choose_settings. Returns its dict
    plus "folds" (stream names)."""
    folds = selection_folds(np.asarray(train), args.select_threshold)
    probs = {}
    for fold in folds:
        gallery = train[~np.isin(train, fold)]   # in split order
        probs.update(floor_probabilities(store, gallery, fold, args.k))
    chosen = choose_settings(probs, store, args.min_length, args.nms)
    return {"folds": [[str(store.names[s]) for s in fold] for fold in folds], **chosen}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m evaluation.detection_floor",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="store of untrimmed streams")
    parser.add_argument("--split", default="xsub_train", help="training (gallery) split")
    parser.add_argument("--eval-split", default=None, help="test split (default: --split "
                                                           "with _train -> _val)")
    parser.add_argument("--output", type=Path, required=True, help="run directory")
    parser.add_argument("--k", type=int, default=1, help="neighbours per frame")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="proposal threshold on the per-frame vote share")
    parser.add_argument("--min-length", type=int, default=5, help="shortest proposal, frames")
    parser.add_argument("--smooth", type=int, default=1,
                        help="moving average of the scores over this many frames (1: off)")
    parser.add_argument("--nms", type=float, default=None, metavar="IOU",
                        help="per-class NMS at this IoU (None: off)")
    parser.add_argument("--select-threshold", type=float, default=None, metavar="FRACTION",
                        help="choose --threshold and --smooth by a cross-validation over the "
                             "training streams in folds of this fraction of them (as "
                             "action_detection.py; default: off, the flags' values)")
    parser.add_argument("--settings-from", type=Path, default=None, metavar="RESULT_JSON",
                        help="take --threshold, --min-length, --smooth and --nms from this "
                             "detection result's config (replacing the flags' values)")
    args = parser.parse_args(argv)
    if args.select_threshold is not None and args.settings_from is not None:
        parser.error("--select-threshold and --settings-from both set the proposal settings: "
                     "give one")
    if args.select_threshold is not None and not 0.0 < args.select_threshold < 1.0:
        parser.error(f"--select-threshold must be in (0, 1), got {args.select_threshold}")
    if args.settings_from is not None:
        for key, value in settings_from(args.settings_from).items():
            setattr(args, key, value)
    if args.k < 1 or args.min_length < 1 or args.smooth < 1:
        parser.error("--k, --min-length and --smooth must be >= 1")
    if not 0.0 <= args.threshold < 1.0:
        parser.error(f"--threshold must be in [0, 1), got {args.threshold}")
    args.eval_split = args.eval_split or eval_split_for(args.split)
    store = open_store(args.data)
    train = store.split_indices(args.split)
    if args.select_threshold is not None:
        args.threshold_selection = select_settings(store, train, args)
        args.threshold = args.threshold_selection["threshold"]
        args.smooth = args.threshold_selection["smooth"]
        print(f"threshold {args.threshold:g}, smoothing {args.smooth} frames chosen by "
              f"cross-validation on the training streams (out-of-fold mAP_a@0.5 "
              f"{args.threshold_selection['best_mAP_a@0.5']:.1f})")
    probs = floor_probabilities(store, train, store.split_indices(args.eval_split), args.k)
    names = {s: str(store.names[s]) for s in probs}
    labels = {names[s]: stream_labels(store, s) for s in probs}
    metrics, proposals = evaluate_streams({names[s]: p for s, p in probs.items()}, labels,
                                          store.num_classes - 1, threshold=args.threshold,
                                          min_length=args.min_length, smooth=args.smooth,
                                          nms_iou=args.nms)
    args.output.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path = write_results(args.output, "detection_floor", {names[s]: p for s, p in probs.items()},
                         labels, metrics, proposals,
                         {"protocol": make_protocol("detection", encoder="floor"), "method": PROTOCOL,
                          "mode": "floor", "config": config})
    print(f"detection_floor: {summary_line(metrics)}  -> {path}")
    return metrics


if __name__ == "__main__":
    run_cli(main, "python -m evaluation.detection_floor")

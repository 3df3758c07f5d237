"""Temporal action detection and segmentation on untrimmed streams (METHOD.md section 7).

    python action_detection.py --data data/utkinect --split xsub_train \\
        --pretrained checkpoint/RUN/last.pt --output checkpoint/RUN [--finetune]
    (or scripts/detect.sh)

The data is a store of whole streams with per-frame labels (``frame_labels``, 0 = background,
1..K; feeders/untrimmed.py). Encoder flags (--backbone --preset --stream --clip-len
--spatial-channels --normalize) come from the --pretrained checkpoint as in
action_recognition.py; without --pretrained the encoder is random (from --seed).

Dense features: for a window of L = --clip-len frames, the encoder's per-frame features
(DSTE/STTR: the L temporal tokens; ST-GCN / MS-G3D: their strided frames upsampled linearly
back to L) concatenated with its per-joint tokens average-pooled to L positions (what the USDRL
release's detection path does), ``(L, Dt + Ds)``. A Linear(Dt + Ds -> K + 1) classifies
every frame. --head tcn (frozen encoder only) replaces it by a temporal convolution network over
whole streams (one MS-TCN stage, evaluation/temporal_head.py: the window features averaged over
the windows' overlaps, Adam lr 5e-4, 50 epochs, one stream a step; results in detection_tcn.*):
it sees each frame with its neighbours, so it can place boundaries that one frame's feature
cannot.

Training: windows of L frames cut every --window-stride frames from the training streams
(the last one flush with the stream's end; streams shorter than L padded, padding ignored).
Frozen encoder (default, the SSL protocol): the windows' dense features are extracted once
and cached in <output>/features (keyed like the linear probe's: weights, data, split, stream,
clip length, normalisation, plus the stride), then the per-frame linear classifier is trained
on the cached frames (evaluation.linear.train_linear: SGD, lr 0.01, batch 64 windows' worth of
frames, 60 epochs, x0.1 at 40, wd 0: HiCLR's detection config). --finetune trains encoder and
classifier end to end on the windows (SGD momentum 0.9, lr 0.005, 150 epochs, x0.1 at 100;
engine.train, state in <output>/detection_finetune/, resumable); with a GCN encoder, --neck tpn
puts a temporal pyramid neck between encoder and classifier (models/tpn.py: the fused pyramid
gives the dense features, its auxiliary head classifies every frame of the deepest level,
upsampled to L, loss weight 0.5).

--select-threshold F chooses --threshold and --smooth (evaluation/selection.py's grids) on the
training split only, by cross-validation over its streams: in folds of about F of the streams,
each fold is predicted by a head trained on the other streams, from the fold's windows on the
test grid (--test-stride / --num-clips, as a test stream); the pair with the best mAP_a@0.5
over all the out-of-fold predictions is kept (the folds and the grid are recorded in the JSON
under ``threshold_selection``), and the head is trained again on every training stream.

Inference: windows every --test-stride frames over each whole test stream (--num-clips N: N
such grids shifted by --test-stride / N, i.e. windows every test-stride // N frames), batched; per-frame
class probabilities (softmax) averaged where windows overlap (frozen: from the cached test
window features; fine-tuned: batch by batch into running per-frame sums, predict_streams); --smooth W averages them over W
frames; for each action class, every maximal run of frames with probability above --threshold
and at least --min-length frames is a proposal (label, start, end, mean probability), optionally
--nms IOU within a class. Segmentation output: the arg-max class of every frame.

Outputs (tag = detection, detection_tcn or detection_finetune): <tag>.json (the official PKU-MMD metrics
mAP_a / mAP_v at IoU 0.1 / 0.3 / 0.5 / 0.7, F1 and AP at 0.5, 2D-AP, in %; segmentation frame
accuracy, edit, F1@{10,25,50}; every flag and the protocol), <tag>_proposals/<video>.txt (one
file per test stream, lines ``label,start,end,confidence``: the official evaluator's input;
frames 0-based, end exclusive, of the stored stream) and <tag>_scores.npz (per-frame
probabilities of all test streams for fusion: ``names``, ``lengths``, ``scores (sum T, K + 1)``,
``labels (sum T,)``). One process (a GPU or the CPU): windows are batched, so memory does not
grow with stream length.
"""
from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import engine
import recipes
from evaluation.protocol import make_protocol
from evaluation.checks import require_finite
from evaluation.detection import evaluate_streams, stitch, summary_line, write_results
from evaluation.fusion import settings_from
from evaluation.features import build_eval_encoder, cache_key, setup_eval_run, stream_transform
from evaluation.linear import make_head, train_linear
from evaluation.selection import choose_settings, selection_folds
from evaluation.temporal_head import TCN_DEFAULTS, train_temporal_head
from evaluation.temporal_head import stream_probabilities as tcn_probabilities
from feeders.dataset import make_loader
from feeders.untrimmed import WindowDataset, stream_labels
from models.tpn import AUX_WEIGHT, TPNEncoder

MODE_DEFAULTS = {
    "frozen": {"epochs": 60, "batch_size": 64, "lr": 0.01, "weight_decay": 0.0,
               "milestones": [40]},
    "finetune": {"epochs": 150, "batch_size": 64, "lr": 0.005, "weight_decay": 0.0,
                 "milestones": [100]},
    "tcn": {**TCN_DEFAULTS, "batch_size": 1, "milestones": []},   # Adam, one stream a step
}
PROTOCOL = ("per-frame linear classifier over K + 1 classes on dense window features "
            "(temporal tokens + spatial tokens pooled to L positions); windows averaged over "
            "their overlap; proposals = runs above threshold per class, scored by mean "
            "probability; metrics of the official PKU-MMD evaluator")
TCN_PROTOCOL = ("temporal convolution head (one MS-TCN stage) over K + 1 classes on the dense "
                "window features averaged over the windows' overlaps into whole-stream features; "
                "proposals = runs above threshold per class, scored by mean probability; "
                "metrics of the official PKU-MMD evaluator")


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    defaults = "; ".join(f"{mode}: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                 for k, v in d.items())
                         for mode, d in MODE_DEFAULTS.items())
    parser = argparse.ArgumentParser(
        description="Temporal action detection and segmentation on untrimmed streams with a "
                    "frozen (default) or fine-tuned encoder.",
        epilog=f"Mode-dependent defaults (when the flag is not given): {defaults}. "
               "Encoder flags default to the --pretrained checkpoint's config.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    engine.add_common_args(parser)
    parser.set_defaults(epochs=None, batch_size=None, lr=None, backbone=None, preset=None,
                        stream=None, clip_len=None, normalize=None)
    g = parser.add_argument_group("detection")
    g.add_argument("--pretrained", default=None,
                   help="pretrain.py checkpoint: a path, `last`, an epoch number or none "
                        "(random init); None: none")
    g.add_argument("--finetune", action="store_true",
                   help="train the encoder too (without it: frozen encoder, cached features)")
    g.add_argument("--neck", choices=("none", "tpn"), default="none",
                   help="--finetune with a GCN encoder (stgcn, msg3d): a temporal pyramid neck "
                        "over its stages (models/tpn.py) with a per-frame auxiliary head on the "
                        "deepest level (loss weight 0.5)")
    g.add_argument("--head", choices=("linear", "tcn"), default="linear",
                   help="frozen encoder: the per-frame linear classifier (the SSL protocol) or "
                        "a temporal convolution network over the stitched stream features "
                        "(one MS-TCN stage: evaluation/temporal_head.py)")
    g.add_argument("--tcn-layers", type=int, default=10,
                   help="--head tcn: dilated residual layers (receptive field 2^(n+1) - 1 frames)")
    g.add_argument("--tcn-hidden", type=int, default=64, help="--head tcn: channels")
    g.add_argument("--tcn-dropout", type=float, default=0.5, help="--head tcn: dropout")
    g.add_argument("--tcn-smooth-weight", type=float, default=0.15,
                   help="--head tcn: weight of MS-TCN's truncated-MSE smoothing loss")
    g.add_argument("--window-stride", type=int, default=None,
                   help="frames between training windows; None: half the clip length")
    g.add_argument("--test-stride", type=int, default=None,
                   help="frames between test windows; None: a quarter of the clip length")
    g.add_argument("--num-clips", type=int, default=1, metavar="N",
                   help="multi-clip testing for dense scores: N grids of test windows, shifted "
                        "by --test-stride / N from each other, every frame's probabilities "
                        "averaged over all the windows covering it (the windows then start "
                        "every max(1, test-stride // N) frames)")
    g.add_argument("--threshold", type=float, default=0.5,
                   help="a frame belongs to a class's proposal when its probability exceeds this")
    g.add_argument("--select-threshold", type=float, default=0.0, metavar="FRACTION",
                   help="frozen encoder: choose --threshold (0.05, 0.1..0.9) and --smooth (1, 5, 9, "
                        "15, 25 frames) by mAP_a@0.5 in a cross-validation over the training streams, "
                        "in folds of this fraction of them (each fold predicted by a head trained "
                        "on the others, from its windows on the test grid), then train on all of "
                        "them; the chosen values replace "
                        "the flags' (0: off, use --threshold and --smooth)")
    g.add_argument("--settings-from", type=Path, default=None, metavar="RESULT_JSON",
                   help="take --threshold, --min-length, --smooth and --nms from this detection "
                        "result's config (e.g. those a frozen run's --select-threshold chose "
                        "on the training streams, for a --finetune run, whose own selection "
                        "would need a fine-tune per fold); replaces the flags' values")
    g.add_argument("--min-length", type=int, default=5, help="shortest proposal, in frames")
    g.add_argument("--smooth", type=int, default=1,
                   help="moving average of the probabilities over this many frames (1: off)")
    g.add_argument("--nms", type=float, default=None, metavar="IOU",
                   help="drop a proposal overlapping a stronger one of its class by more "
                        "than IOU (None: off)")
    g.add_argument("--weight-decay", type=float, default=None,
                   help="SGD weight decay; None: the mode default (below)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--milestones", type=int, nargs="*", default=None,
                   help="epochs where the lr is multiplied by 0.1")
    g.add_argument("--eval-batch-size", type=int, default=64, help="windows per forward pass")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="feature cache (frozen); None: <output>/features")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    scratch = args.pretrained is None or args.pretrained.lower() in ("none", "scratch")
    if args.finetune and args.head != "linear":
        parser.error("--head tcn works with the frozen encoder only (no --finetune)")
    if args.neck != "none" and not args.finetune:
        parser.error("--neck tpn is trained: it needs --finetune (a frozen encoder's neck "
                     "would stay random)")
    purpose = ("detect_finetune" if args.finetune
               else "detect" if args.head == "linear" else "detect_tcn")
    try:   # the recipe (recipes.py): the frozen probe's lr of small sets; encoder flags (scratch)
        recipes.apply_defaults(parser, args, argv, purpose, scratch=scratch)
    except ValueError as err:
        parser.error(str(err))
    mode = "finetune" if args.finetune else "frozen" if args.head == "linear" else "tcn"
    for key, value in MODE_DEFAULTS[mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.tcn_layers < 1 or args.tcn_hidden < 1 or not 0.0 <= args.tcn_dropout < 1.0:
        parser.error("--tcn-layers and --tcn-hidden must be >= 1, --tcn-dropout in [0, 1)")
    for flag in ("window_stride", "test_stride", "eval_batch_size", "num_clips"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.settings_from is not None:
        if args.select_threshold:
            parser.error("--settings-from and --select-threshold both choose the proposal "
                         "settings: give one")
        try:
            for key, value in settings_from(args.settings_from).items():
                setattr(args, key, value)
        except ValueError as err:
            parser.error(str(err))
    if not 0.0 <= args.threshold < 1.0:
        parser.error(f"--threshold must be in [0, 1), got {args.threshold}")
    if args.min_length < 1 or args.smooth < 1:
        parser.error("--min-length and --smooth must be >= 1")
    if not 0.0 <= args.select_threshold < 1.0:
        parser.error(f"--select-threshold must be a fraction in [0, 1), got {args.select_threshold}")
    if args.select_threshold and args.finetune:
        parser.error("--select-threshold works with the frozen encoder only")
    if args.nms is not None and not 0.0 <= args.nms <= 1.0:
        parser.error(f"--nms must be an IoU in [0, 1], got {args.nms}")
    return args


def result_tag(finetune: bool, head: str = "linear") -> str:
    """detection (frozen, linear head), detection_tcn (frozen, --head tcn), detection_finetune."""
    return "detection_finetune" if finetune else "detection" if head == "linear" else "detection_tcn"


# ----------------------------------------------------------------------------- dense features
def dense_features(out, length: int) -> torch.Tensor:
    """EncoderOutput -> per-frame features ``(N, L, Dt + Ds)``: ``frames (N, L', Dt)`` upsampled
    linearly to L when strided, ``joints (N, S, Ds)`` average-pooled to L positions."""
    frames = out.frames
    if frames.shape[1] != length:
        frames = F.interpolate(frames.transpose(1, 2).float(), size=length, mode="linear",
                               align_corners=False).transpose(1, 2).to(out.frames.dtype)
    joints = F.adaptive_avg_pool1d(out.joints.transpose(1, 2).float(), length).transpose(1, 2)
    return torch.cat([frames.float(), joints], dim=2)


class DenseClassifier(nn.Module):
    """Encoder + per-frame Linear(Dt + Ds -> K + 1): (N, C, L, V, M) -> logits (N, L, K + 1).
    ``neck="tpn"``: the encoder is wrapped in a TPN neck (models/tpn.py), whose fused pyramid
    gives the dense features."""

    def __init__(self, encoder: nn.Module, num_classes: int, seed: int, neck: str = "none"):
        super().__init__()
        if neck == "tpn":
            encoder = TPNEncoder(encoder, num_classes, seed=seed)
        self.encoder = encoder
        self.head = make_head(encoder.feature_dim, num_classes, seed)

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        """logits (N, L, K + 1); ``with_aux`` (TPN neck): (logits, the auxiliary head's
        per-frame logits of the deepest level upsampled linearly to L, (N, L, K + 1))."""
        length = x.shape[2]
        if not with_aux:
            return self.head(dense_features(self.encoder(x), length))
        out, aux = self.encoder.forward_aux(x, dense=True)
        aux = F.interpolate(aux.transpose(1, 2).float(), size=length, mode="linear",
                            align_corners=False).transpose(1, 2)
        return self.head(dense_features(out, length)), aux


@torch.no_grad()
def extract_dense(encoder: nn.Module, dataset: WindowDataset, transform, device, dtype,
                  batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense features of every window: ``(W, L, D)`` float16 and labels ``(W, L)`` int64
    (-1 on padding), in window order. Eval mode; one batch of windows in memory at a time."""
    was_training = encoder.training
    encoder.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0)
    feats, labels = [], []
    for clip, label, _ in loader:
        with engine.precision_context(dtype, device):
            out = encoder(transform(clip.to(device, non_blocking=True)))
        feats.append(dense_features(out, clip.shape[2]).to(torch.float16).cpu())
        labels.append(label)
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def cached_dense(encoder, dataset: WindowDataset, store, split: str, cfg: dict, stride: int,
                 cache_dir: Path | None, info, dtype, batch_size: int):
    """``extract_dense`` stored in ``<cache_dir>/<key>_dense_s<stride>.pt`` (the key of
    evaluation.features.cache_key). A damaged entry is recomputed."""
    transform = stream_transform(cfg["stream"], store.layout.parents, cfg["spatial_channels"])
    if cache_dir is None:
        return extract_dense(encoder, dataset, transform, info.device, dtype, batch_size)
    key = cache_key(encoder, store, split, cfg["stream"], cfg["clip_len"],
                    cfg["spatial_channels"], cfg["normalize"])
    path = Path(cache_dir) / f"{key}_dense_s{stride}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            engine.log(info, f"dense features: {split} from cache {path}")
            return blob["features"], blob["labels"]
        except Exception as err:
            engine.log(info, f"dense features: ignoring unreadable cache {path} ({err})")
    feats, labels = extract_dense(encoder, dataset, transform, info.device, dtype, batch_size)
    engine.save_checkpoint(path, {"features": feats, "labels": labels, "key": key})
    return feats, labels


# ----------------------------------------------------------------------------- training
def train_frozen_head(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, args,
                      device, writer) -> nn.Module:
    """The per-frame linear classifier on cached window features (padding frames left out);
    a batch holds --batch-size windows' worth of frames."""
    flat, flat_labels = feats.reshape(-1, feats.shape[-1]), labels.reshape(-1)
    keep = torch.nonzero(flat_labels >= 0).squeeze(1)
    frames = flat[keep].to(device)
    targets = flat_labels[keep].to(device)

    def log(epoch, record):
        for key, value in record.items():
            if key != "epoch":
                writer.add_scalar(f"detection/{key}", value, epoch)

    out = train_linear(lambda idx: frames[idx], targets, feats.shape[-1], num_classes,
                       epochs=args.epochs, lr=args.lr, batch_size=args.batch_size * args.clip_len,
                       milestones=tuple(args.milestones), momentum=args.momentum,
                       weight_decay=args.weight_decay, seed=args.seed, log=log)
    return out["head"]


def finetune_step(model, args, cfg, layout, info, dtype, batch, epoch, step):
    """batch = (clips (B, C, L, V, M), labels (B, L) with -1 on padding, window index)."""
    clips, labels = batch[0].to(info.device, non_blocking=True), batch[1].to(info.device)
    x = stream_transform(cfg["stream"], layout.parents, cfg["spatial_channels"])(clips)
    with engine.precision_context(dtype, info.device):
        out = model(x, with_aux=args.neck == "tpn")
    logits, aux = out if args.neck == "tpn" else (out, None)
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-1)
    if aux is None:
        return loss, {"loss": loss.detach()}
    aux_ce = F.cross_entropy(aux.float().flatten(0, 1), labels.flatten(), ignore_index=-1)
    return loss + AUX_WEIGHT * aux_ce, {"loss": loss.detach(), "aux_ce": aux_ce.detach()}


def run_finetune(args, store, cfg, ckpt, info, dtype, train_set) -> DenseClassifier:
    encoder = build_eval_encoder(cfg, store, args.seed, ckpt, args.pretrained)
    model = DenseClassifier(encoder, store.num_classes, args.seed, args.neck).to(info.device)
    loader = make_loader(train_set, args.batch_size, shuffle=True, seed=args.seed,
                         workers=args.workers, drop_last=len(train_set) > args.batch_size,
                         device=info.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = engine.make_scheduler(optimizer, len(loader), schedule="step", epochs=args.epochs,
                                      milestones=args.milestones)
    state = engine.TrainState(optimizer, scheduler, engine.make_scaler(dtype, info.device))
    run_dir = args.output / result_tag(True)
    meta = engine.run_metadata(args, info)
    resume = engine.resume_path(args.resume, run_dir)
    if resume is not None:
        state.load(model, engine.load_checkpoint(resume))
        engine.log(info, f"resumed detection fine-tuning from {resume} at epoch {state.epoch}")
    step_fn = partial(finetune_step, model, args, cfg, store.layout, info, dtype)
    engine.train(model, step_fn, loader, state, epochs=args.epochs, info=info, seed=args.seed,
                 output=run_dir, extra_state={"meta": meta})
    return model


# ----------------------------------------------------------------------------- inference
@torch.no_grad()
def window_probabilities(head: nn.Module, feats: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Softmax over classes of the head on ``(W, L, D)`` features -> ``(W, L, K + 1)``."""
    head.eval()
    device = next(head.parameters()).device
    out = [torch.softmax(head(feats[i:i + batch].to(device).float()), dim=-1).cpu()
           for i in range(0, len(feats), batch)]
    return torch.cat(out).numpy()


def stream_probabilities(window_probs: np.ndarray, dataset: WindowDataset,
                         windows: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """Per-frame probabilities ``(T, K + 1)`` of each stream (by store index) of the windows
    ``windows`` (rows (store sequence, start) aligned with ``window_probs``; default: all of
    ``dataset.windows``)."""
    windows = dataset.windows if windows is None else windows
    out = {}
    for s in np.unique(windows[:, 0]):
        rows = np.flatnonzero(windows[:, 0] == s)
        out[int(s)] = stitch(window_probs[rows], windows[rows, 1], int(dataset.store.lengths[s]))
    return out


def stream_features(feats: torch.Tensor, dataset: WindowDataset,
                    rows: np.ndarray) -> dict[int, torch.Tensor]:
    """Per-frame features ``(T, D)`` of each stream of the windows ``rows`` (indices into
    ``dataset.windows`` and ``feats (W, L, D)``), averaged where windows overlap (the
    stitching of ``stream_probabilities``)."""
    stitched = stream_probabilities(feats[rows].float().numpy(), dataset, dataset.windows[rows])
    return {s: torch.from_numpy(f) for s, f in stitched.items()}


def frozen_probabilities(args, store, train: tuple, target: tuple, device,
                         writer) -> dict[int, np.ndarray]:
    """Train the frozen-encoder head (--head) on the ``train`` windows and return the per-frame
    probabilities ``(T, K + 1)`` of the ``target`` windows' streams (by store index).
    ``train`` / ``target`` = (WindowDataset, features (W, L, D), labels (W, L), rows) where
    rows ``(n,)`` picks the windows used (all: ``np.arange(W)``).
    linear: the per-frame classifier on the windows' frames, its softmax averaged over window
    overlaps; tcn: the window features averaged over overlaps into stream features, the
    temporal head trained on whole training streams."""
    train_set, train_f, train_l, train_rows = train
    target_set, target_f, _, target_rows = target
    if args.head == "linear":
        head = train_frozen_head(train_f[train_rows], train_l[train_rows], store.num_classes,
                                 args, device, writer)
        return stream_probabilities(window_probabilities(head, target_f[target_rows]),
                                    target_set, target_set.windows[target_rows])

    def log(epoch, record):
        writer.add_scalar("detection/loss", record["loss"], epoch)

    features = stream_features(train_f, train_set, train_rows)
    labels = [torch.from_numpy(stream_labels(store, s)) for s in features]
    head = train_temporal_head(list(features.values()), labels, store.num_classes,
                               epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                               hidden=args.tcn_hidden, layers=args.tcn_layers,
                               dropout=args.tcn_dropout, smooth_weight=args.tcn_smooth_weight,
                               seed=args.seed, device=device, log=log)
    return tcn_probabilities(head, stream_features(target_f, target_set, target_rows))


def select_threshold(train: tuple, held: tuple, store, args, device, writer) -> dict:
    """Choose --threshold and --smooth on the training split only, by cross-validation over
    its streams: for each fold of about --select-threshold F of the streams
    (``selection_folds``), train the frozen head (--head) on the other streams' windows and
    predict the fold's; then take the pair of THRESHOLD_GRID x SMOOTH_GRID with the best mAP_a
    at IoU 0.5 over all training streams' out-of-fold predictions (ties: the lower threshold,
    then the narrower smoothing). Every training stream is held out once, so the choice does
    not hang on the one or two streams a single split would hold out. Noisy per-frame
    probabilities break an action into short runs, which smoothing joins.
    ``train`` = (WindowDataset, features (W, L, D), labels (W, L)): the training windows
    (--window-stride) the head learns from; ``held`` = (WindowDataset, features): the same
    streams' windows on the test grid (--test-stride / --num-clips), from which a held-out
    fold is predicted exactly as a test stream is (how many windows are averaged per frame
    decides how smooth the probabilities are, and so which threshold and smoothing fit).
    Returns {"threshold", "smooth", "folds": [[stream names]], "held_out_window_stride",
    "grid_mAP_a@0.5": {smooth: {threshold: %}}, "best_mAP_a@0.5": the chosen pair's
    out-of-fold %}."""
    dataset, feats, labels = train
    held_set, held_f = held
    folds = selection_folds(np.unique(dataset.windows[:, 0]), args.select_threshold)
    probs = {}
    for fold in folds:
        mask = np.isin(dataset.windows[:, 0], fold)
        held_rows = np.flatnonzero(np.isin(held_set.windows[:, 0], fold))
        probs.update(frozen_probabilities(
            args, store, (dataset, feats, labels, np.flatnonzero(~mask)),
            (held_set, held_f, None, held_rows), device, writer))
    chosen = choose_settings(probs, store, args.min_length, args.nms)
    return {"folds": [[str(store.names[s]) for s in fold] for fold in folds],
            "held_out_window_stride": int(held_set.stride), **chosen}


@torch.no_grad()
def predict_streams(encoder: nn.Module, head: nn.Module, dataset: WindowDataset, transform,
                    device, dtype, batch_size: int) -> dict[int, np.ndarray]:
    """Per-frame probabilities ``(T, K + 1)`` of every stream of ``dataset`` (by store index),
    straight from the encoder: each batch of windows is classified and added into its stream's
    running sums, so memory holds one batch plus the per-frame scores (the same result as
    ``stream_probabilities(window_probabilities(head, extract_dense(...)))``)."""
    was_training = encoder.training
    encoder.eval()
    head.eval()
    sums = {int(s): np.zeros((int(dataset.store.lengths[s]), head.out_features))
            for s in np.unique(dataset.windows[:, 0])}
    counts = {s: np.zeros(len(v), dtype=np.int64) for s, v in sums.items()}
    for clip, _, index in DataLoader(dataset, batch_size=batch_size, num_workers=0):
        with engine.precision_context(dtype, device):
            out = encoder(transform(clip.to(device, non_blocking=True)))
        feats = dense_features(out, clip.shape[2]).to(torch.float16)   # as the cache holds them
        probs = torch.softmax(head(feats.float()), dim=-1).cpu().numpy()
        for p, (s, start) in zip(probs, dataset.windows[index.numpy()]):
            n = min(len(p), len(sums[int(s)]) - int(start))
            sums[int(s)][start:start + n] += p[:n]
            counts[int(s)][start:start + n] += 1
    encoder.train(was_training)
    return {s: (sums[s] / counts[s][:, None]).astype(np.float32) for s in sums}


def evaluate(probs: dict[int, np.ndarray], store, args) -> tuple[dict, dict]:
    """Metrics of stitched per-frame probabilities (by store index); returns (metrics,
    proposals by stream name)."""
    names = {s: str(store.names[s]) for s in probs}
    return evaluate_streams({names[s]: p for s, p in probs.items()},
                            {names[s]: stream_labels(store, s) for s in probs},
                            store.num_classes - 1, threshold=args.threshold,
                            min_length=args.min_length, smooth=args.smooth, nms_iou=args.nms)


def write_outputs(args, store, probs: dict, metrics: dict, proposals: dict, cfg, info,
                  precision: dict | None = None) -> Path:
    names = {s: str(store.names[s]) for s in probs}
    encoder = "finetuned" if args.finetune else "frozen" if args.head == "linear" else "frozen_tcn"
    extra = {"protocol": make_protocol("detection", encoder=encoder),
             "method": PROTOCOL if args.head == "linear" else TCN_PROTOCOL,
             "mode": "finetune" if args.finetune else "frozen",
             "eval_split": args.eval_split, "class_names": store.class_names, "encoder": cfg,
             "pretrained": str(args.pretrained) if args.pretrained else None,
             "precision": precision, **engine.run_metadata(args, info)}
    return write_results(args.output, result_tag(args.finetune, args.head),
                         {names[s]: p for s, p in probs.items()},
                         {names[s]: stream_labels(store, s) for s in probs},
                         metrics, proposals, extra)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    """Detection with the flags `argv` (library use: this process's settings are left alone)."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> dict | None:
    """Detection with parsed flags: check them and the data, claim --output, then ``detect``.
    Bad flags or data raise ValueError (run_program: one line, exit status 2)."""
    if args.print_config:
        return recipes.print_config(args)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ValueError("action_detection.py runs in one process (one GPU or the CPU)")
    store, ckpt, cfg = setup_eval_run(args)
    stream_labels(store, 0)
    args.window_stride = args.window_stride or max(1, cfg["clip_len"] // 2)
    args.test_stride = args.test_stride or max(1, cfg["clip_len"] // 4)
    args.test_window_stride = max(1, args.test_stride // args.num_clips)   # --num-clips grids
    info = engine.init_distributed()
    with engine.claim_run_dir(args.output, result_tag(args.finetune, args.head), info):
        return detect(args, store, ckpt, cfg, info)


def detect(args, store, ckpt, cfg: dict, info: engine.DistInfo) -> dict:
    """Train the per-frame classifier (frozen encoder with cached window features, or
    --finetune), score every test stream, and write detection.json, the proposals and the
    per-frame scores. Returns the metrics."""
    torch.manual_seed(args.seed)
    precision = engine.evaluation_precision(args.precision, info.device, ckpt, info)
    engine.log(info, engine.describe_precision(precision))
    dtype = engine.autocast_dtype(precision["precision"], info.device)
    window_kw = dict(normalize=cfg["normalize"], spatial_channels=cfg["spatial_channels"])
    train_set = WindowDataset(store, args.split, cfg["clip_len"], args.window_stride, **window_kw)
    test_set = WindowDataset(store, args.eval_split, cfg["clip_len"], args.test_window_stride,
                             **window_kw)
    engine.log(info, f"detection: {len(train_set)} training windows ({args.split}), "
                     f"{len(test_set)} test windows ({args.eval_split}), L={cfg['clip_len']}")
    transform = stream_transform(cfg["stream"], store.layout.parents, cfg["spatial_channels"])
    if args.finetune:
        model = run_finetune(args, store, cfg, ckpt, info, dtype, train_set)
        probs = predict_streams(model.encoder, model.head, test_set, transform, info.device,
                                dtype, args.eval_batch_size)
    else:
        from torch.utils.tensorboard import SummaryWriter
        encoder = build_eval_encoder(cfg, store, args.seed, ckpt, args.pretrained).to(info.device)
        cache = None if args.no_cache else (args.cache_dir or args.output / "features")
        kw = dict(cfg=cfg, cache_dir=cache, info=info, dtype=dtype,
                  batch_size=args.eval_batch_size)
        train_f, train_l = cached_dense(encoder, train_set, store, args.split,
                                        stride=args.window_stride, **kw)
        test_f, _ = cached_dense(encoder, test_set, store, args.eval_split,
                                 stride=args.test_window_stride, **kw)
        # a NaN feature would still be classified (evaluation/checks.py)
        require_finite(train_f, f"features of training windows ({args.split})")
        require_finite(test_f, f"features of test windows ({args.eval_split})")
        with SummaryWriter(str(args.output / result_tag(False, args.head) / "tb")) as writer:
            if args.select_threshold:   # held-out streams predicted on the test grid
                held = (train_set, train_f)
                if args.test_window_stride != args.window_stride:
                    held_set = WindowDataset(store, args.split, cfg["clip_len"],
                                             args.test_window_stride, **window_kw)
                    held = (held_set, cached_dense(encoder, held_set, store, args.split,
                                                   stride=args.test_window_stride, **kw)[0])
                    require_finite(held[1], f"features of training windows ({args.split}, "
                                            f"stride {args.test_window_stride})")
                args.threshold_selection = select_threshold((train_set, train_f, train_l), held,
                                                            store, args, info.device, writer)
                args.threshold = args.threshold_selection["threshold"]
                args.smooth = args.threshold_selection["smooth"]
                engine.log(info, f"threshold {args.threshold:g}, smoothing {args.smooth} frames "
                                 "chosen by cross-validation on the training streams (mAP_a@0.5 "
                                 "by smoothing, "
                                 f"then threshold): {args.threshold_selection['grid_mAP_a@0.5']}")
            probs = frozen_probabilities(
                args, store, (train_set, train_f, train_l, np.arange(len(train_f))),
                (test_set, test_f, None, np.arange(len(test_f))), info.device, writer)
    names = [str(store.names[s]) for s in probs]
    require_finite(np.array([p.sum() for p in probs.values()], dtype=np.float64),
                   f"scores of split {args.eval_split}", names)   # one sum per stream
    metrics, proposals = evaluate(probs, store, args)
    path = write_outputs(args, store, probs, metrics, proposals, cfg, info, precision)
    engine.log(info, f"{result_tag(args.finetune, args.head)}: {summary_line(metrics)}  -> {path}")
    return metrics


if __name__ == "__main__":
    engine.run_program(parse_args, run, "action_detection.py")

"""Action recognition on a (pretrained) encoder: linear probe or end-to-end fine-tuning.

    python action_recognition.py --mode linear --pretrained checkpoint/RUN/last.pt \\
        --data data/ntu60 --split xsub_train --output checkpoint/RUN [--lr 0.006]
    python action_recognition.py --mode finetune --pretrained ... --label-fraction 0.1 ...
    (or scripts/recog.sh, finetune.sh, semi.sh)

Encoder flags (--backbone --preset --stream --clip-len --spatial-channels) default to the
values stored in the --pretrained checkpoint; a flag that contradicts them is an error, except
--stream when fine-tuning: the checkpoint is then only the starting point, so an encoder
pretrained on joints can be fine-tuned on bones (the results JSON records both, as `stream`
and `pretrained_stream`) and the two fine-tunes fused (evaluation.fusion).
Without --pretrained the encoder is randomly initialised (from --seed): a from-scratch
baseline.

linear: the frozen encoder (eval mode) encodes the training and test splits once; the
features are cached in <output>/features (keyed by the weights, data, split, stream and clip
length) and a Linear(feature_dim -> classes) is trained on them in memory (METHOD section 5).

finetune: encoder + linear head trained end to end by engine.train: AdamW (no weight decay on
biases, norms and positional tables), linear warmup then cosine decay per step, optional
layer-wise lr decay, label smoothing, drop path (transformers). With --lp-epochs N (the
small-set recipes: 160) the head is first trained as a linear probe on frozen features of the
training samples and the fine-tune starts from it (LP-FT); its guard (--lp-guard) keeps that
linear probe when the fine-tuned model ends below it on the training samples (whole sequences,
no augmentation), recorded as the last `history` entry. Augmentation: the random
temporal crop-and-resize of the pretraining feeder with one view per sample (--no-augment:
whole sequences), then optional per-clip --shear, --rotate and --flip (one seeded generator
per step). Layer-wise decay: the lr of a parameter at
depth d of D is lr * decay ** (D + 1 - d); depth 0 = token embeddings / positional tables /
input norm, d = i + 1 for DSTE/STTR layer i (the temporal and spatial layer i share a depth),
for ST-GCN block i and for MS-G3D stage i; the head is at depth D + 1 (full lr).
Training state is kept in <output>/<tag>/ (last.pt, best.pt, tb/) and resumes with --resume.

--label-fraction F trains on a per-class stratified subset of the training split (>= 1 per
class, drawn from --seed). --val-fraction V carves a stratified validation split out of the
(labelled) training samples; only then is a best epoch selected, on it. The test split
(--eval-split) is never used for selection: the reported top-1/top-5 are of the last epoch,
plus, with validation, those of the epoch with the best validation top-1 (labelled "best").

Outputs in --output, with tag = <mode>[_<fraction>]: <tag>.json (results), <tag>_scores.npz
(per-sample test logits with sample names, for evaluation.fusion), <tag>_confusion.csv and
<tag>_confusion.png (labelled with the class names, also in <tag>/tb; evaluation.plots),
<tag>_labelled.txt / <tag>_val.txt (names of the chosen training / validation samples when a
subset is used).
"""
from __future__ import annotations

import argparse
import csv
import io
import re
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import engine
import recipes
from evaluation.checks import require_finite
from evaluation.features import (CheckpointError, build_eval_encoder, cached_extract,
                                 checkpoint_config, extract, setup_eval_run, split_names,
                                 stream_transform)
from evaluation.fusion import save_scores
from evaluation.linear import accuracy, make_head, predict, train_linear
from evaluation.plots import confusion_figure, save_figure
from evaluation.subset import stratified_split, stratified_subset
from feeders.augment import random_flip, random_rotation, random_shear
from feeders.dataset import EvalDataset, PretrainDataset, make_loader

MODE_DEFAULTS = {
    "linear": {"epochs": 160, "batch_size": 512, "lr": 0.006, "weight_decay": 0.0},
    "finetune": {"epochs": 100, "batch_size": 64, "lr": 3e-4, "weight_decay": 0.05},
}
DEPTH_PATTERN = re.compile(r"^encoder\.(?:[ts]_stream\.layers|blocks|stages)\.(\d+)\.")


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    defaults = "; ".join(f"{mode}: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                 for k, v in d.items())
                         for mode, d in MODE_DEFAULTS.items())
    parser = argparse.ArgumentParser(
        description="Linear probe or fine-tuning of an encoder for action recognition.",
        epilog=f"Mode-dependent defaults (when the flag is not given): {defaults}. "
               "Encoder flags default to the --pretrained checkpoint's config; only "
               "--stream may differ from it, and only with --mode finetune.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    engine.add_common_args(parser)
    parser.set_defaults(epochs=None, batch_size=None, lr=None, backbone=None, preset=None,
                        stream=None, clip_len=None, normalize=None)
    g = parser.add_argument_group("evaluation")
    g.add_argument("--mode", choices=("linear", "finetune"), default="linear",
                   help="linear: frozen encoder + linear head; finetune: end to end")
    g.add_argument("--pretrained", default=None,
                   help="pretrain.py checkpoint (its `encoder.` weights): a path, `last` "
                        "(<output>/last.pt), an epoch number N (<output>/epoch_NNNN.pt), an encoder "
                        "file of models.export (.safetensors; FILE#sha256=HEX checks its hash) "
                        "or none (random init, from scratch); None: none")
    g.add_argument("--label-fraction", type=float, default=1.0,
                   help="train on this stratified fraction of the training split")
    g.add_argument("--val-fraction", type=float, default=0.0,
                   help="carve this stratified fraction of the training samples for model "
                        "selection (0: report the last epoch only)")
    g.add_argument("--weight-decay", type=float, default=None, help="None: the mode default (below)")
    g.add_argument("--eval-batch-size", type=int, default=256, help="feature extraction batch")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="feature cache; None: <output>/features")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    g = parser.add_argument_group("linear probe")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--milestones", type=int, nargs="*", default=[120, 140],
                   help="epochs where the lr is multiplied by 0.1")
    g = parser.add_argument_group("fine-tuning")
    g.add_argument("--warmup-epochs", type=float, default=5.0, help="linear lr warmup epochs")
    g.add_argument("--lp-epochs", type=int, default=0,
                   help="linear probe then fine-tune (LP-FT): first train the head alone on "
                        "frozen features of the training samples for this many epochs (SGD, "
                        "--lp-lr, --batch-size, x0.1 at 3/4 and 7/8, as --mode linear), then "
                        "fine-tune from it (0: off, a random head; small-set recipes: 160)")
    g.add_argument("--lp-lr", type=float, default=MODE_DEFAULTS["linear"]["lr"],
                   help="learning rate of the --lp-epochs linear probe (small-set recipes: 1.0)")
    g.add_argument("--lp-guard", action=argparse.BooleanOptionalAction, default=True,
                   help="with --lp-epochs: a fine-tune whose top-1 on the training samples (whole "
                        "sequences, no augmentation) ends below the linear probe it started "
                        "from is replaced by that linear probe (the result records it)")
    g.add_argument("--layer-decay", type=float, default=1.0,
                   help="layer-wise lr decay factor (1: off; e.g. 0.8)")
    g.add_argument("--label-smoothing", type=float, default=0.1, help="cross-entropy label smoothing")
    g.add_argument("--drop-path", type=float, default=None,
                   help="DropPath rate of DSTE/STTR; None: the preset's (0.1)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="fine-tune on random temporal crops (--no-augment: whole sequences)")
    g.add_argument("--min-crop", type=int, default=None, metavar="FRAMES",
                   help="fine-tune: shortest temporal crop in frames (None: the clip length, "
                        "so sequences no longer than a clip are never cropped)")
    g.add_argument("--shear", type=float, default=0.0,
                   help="fine-tune: multiply each clip's coordinates by I + A, A's off-diagonal "
                        "entries ~ U(-shear, shear) (0: off; AimCLR uses 0.5)")
    g.add_argument("--rotate", type=float, default=0.0,
                   help="fine-tune: turn each clip about x, y and z by angles ~ U(-rotate, "
                        "rotate) degrees (2D: in the image plane), after --shear (0: off)")
    g.add_argument("--flip", type=float, default=0.0,
                   help="fine-tune: mirror each clip left-right (x negated, left and right "
                        "joints swapped) with this probability, after --rotate (0: off)")
    return parser


def recipe_purpose(args) -> str:
    """The recipes.py purpose of a run: linear, finetune or semi (a label fraction)."""
    if args.mode == "linear":
        return "linear"
    return "semi" if args.label_fraction < 1.0 else "finetune"


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    scratch = args.pretrained is None or args.pretrained.lower() in ("none", "scratch")
    recipes.apply_defaults(parser, args, argv, recipe_purpose(args), scratch=scratch)
    for key, value in MODE_DEFAULTS[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 0.0 < args.label_fraction <= 1.0:
        raise ValueError(f"--label-fraction must be in (0, 1], got {args.label_fraction}")
    if not 0.0 <= args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if not 0.0 < args.layer_decay <= 1.0:
        raise ValueError(f"--layer-decay must be in (0, 1], got {args.layer_decay}")
    if not 0.0 <= args.shear <= 1.0:
        raise ValueError(f"--shear must be in [0, 1], got {args.shear}")
    if not 0.0 <= args.rotate <= 180.0:
        raise ValueError(f"--rotate must be in [0, 180] degrees, got {args.rotate}")
    if not 0.0 <= args.flip <= 1.0:
        raise ValueError(f"--flip must be a probability in [0, 1], got {args.flip}")
    if args.min_crop is not None and args.min_crop < 1:
        raise ValueError(f"--min-crop must be >= 1 frame, got {args.min_crop}")
    if args.lp_epochs < 0:
        raise ValueError(f"--lp-epochs must be >= 0, got {args.lp_epochs}")
    return args


def result_tag(mode: str, fraction: float) -> str:
    """``linear``, ``finetune``, ``finetune_0.01``: the name of a run's result files."""
    return mode if fraction >= 1.0 else f"{mode}_{fraction:g}"


# ----------------------------------------------------------------------------- data choices
def training_positions(split_labels: np.ndarray, args) -> tuple[np.ndarray, np.ndarray]:
    """Positions within the training split used for training and for validation."""
    if args.label_fraction < 1.0:
        labelled = stratified_subset(split_labels, args.label_fraction, args.seed)
    else:
        labelled = np.arange(len(split_labels), dtype=np.int64)
    if args.val_fraction == 0.0:
        return labelled, np.zeros(0, dtype=np.int64)
    train, val = stratified_split(split_labels[labelled], args.val_fraction, args.seed)
    return labelled[train], labelled[val]


# ----------------------------------------------------------------------------- linear probe
def run_linear(args, store, cfg, ckpt, info, dtype, train_pos, val_pos, run_dir, writer):
    """Returns (last-epoch test logits (N, C), best dict or None, history)."""
    encoder = build_eval_encoder(cfg, store, args.seed, ckpt, args.pretrained).to(info.device)
    cache = None if args.no_cache else (args.cache_dir or args.output / "features")
    kw = dict(stream=cfg["stream"], clip_len=cfg["clip_len"], normalize=cfg["normalize"],
              spatial_channels=cfg["spatial_channels"], info=info, dtype=dtype,
              batch_size=args.eval_batch_size, workers=args.workers, cache_dir=cache)
    train_f, train_l = cached_extract(encoder, store, args.split, **kw)
    test_f, _ = cached_extract(encoder, store, args.eval_split, **kw)
    if not info.is_main:
        return None
    device = info.device
    feats = train_f[train_pos].to(device)
    val = (train_f[val_pos], train_l[val_pos]) if len(val_pos) else None

    def log(epoch, record):
        for key, value in record.items():
            if key != "epoch":
                writer.add_scalar(f"linear/{key}", value, epoch)

    out = train_linear(lambda idx: feats[idx], train_l[train_pos].to(device),
                       encoder.feature_dim, store.num_classes, epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch_size, milestones=tuple(args.milestones),
                       momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed,
                       val=val, log=log)
    test_f = test_f.to(device)
    best = None
    if out["best_head"] is not None:
        best = {"epoch": out["best_epoch"], "logits": predict(out["best_head"], test_f).cpu(),
                "val_top1": out["history"][out["best_epoch"] - 1]["val_top1"]}
    return predict(out["head"], test_f).cpu(), best, out["history"]


# ----------------------------------------------------------------------------- fine-tuning
class Classifier(nn.Module):
    """Encoder + Linear(feature_dim -> classes) on the global feature: (N, C, L, V, M) -> logits."""

    def __init__(self, encoder: nn.Module, num_classes: int, seed: int):
        super().__init__()
        self.encoder = encoder
        self.head = make_head(encoder.feature_dim, num_classes, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).global_feat)


def parameter_depth(name: str) -> int | None:
    """Depth of a Classifier parameter for layer-wise decay (None: the head)."""
    if name.startswith("head."):
        return None
    match = DEPTH_PATTERN.match(name)
    return int(match.group(1)) + 1 if match else 0


def param_groups(model: Classifier, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups: lr scale layer_decay ** (D + 1 - depth); no decay on 1-D params and
    positional tables. Each group's ``lr`` is the scale (multiplied by the base lr later)."""
    named = list(model.named_parameters())
    depths = {n: parameter_depth(n) for n, _ in named}
    num_depths = max([d for d in depths.values() if d is not None], default=0)
    groups: dict[tuple[float, float], list] = {}
    for name, param in named:
        depth = num_depths + 1 if depths[name] is None else depths[name]
        scale = layer_decay ** (num_depths + 1 - depth)
        decay = 0.0 if param.ndim <= 1 or name.endswith("_pos") else weight_decay
        groups.setdefault((scale, decay), []).append(param)
    return [{"params": p, "lr": scale, "weight_decay": decay}
            for (scale, decay), p in sorted(groups.items())]


def check_head(ckpt: dict, path, num_classes: int, data) -> None:
    head = ckpt.get("model", {}).get("head.weight")
    if head is not None and head.shape[0] != num_classes:
        raise CheckpointError(f"checkpoint {path} has a classifier head for {head.shape[0]} "
                              f"classes but dataset {data} has {num_classes}")


def finetune_step(model, split_labels, args, cfg, layout, info, dtype, batch, epoch, step):
    """batch = (views (B, 1, C, L, V, M) or clips (B, C, L, V, M), [labels,] positions);
    layout: the store's (its parents make bones, its mirror map serves --flip)."""
    x = batch[0]
    if x.dim() == 6:
        x = x[:, 0]
    labels = split_labels[batch[-1]].to(info.device)
    x = x.to(info.device, non_blocking=True)
    if args.shear or args.rotate or args.flip:  # one generator: shear, angles, flips
        gen = engine.step_generator(args.seed, epoch, step, info.rank)
        if args.shear:
            x = random_shear(x, args.shear, gen, cfg["spatial_channels"])
        if args.rotate:
            x = random_rotation(x, args.rotate, gen, cfg["spatial_channels"])
        if args.flip:
            x = random_flip(x, args.flip, gen, layout.mirror)
    x = stream_transform(cfg["stream"], layout.parents, cfg["spatial_channels"])(x)
    with engine.precision_context(dtype, info.device):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=args.label_smoothing)
    return loss, {"loss": loss.detach(), "top1": accuracy(logits.detach().float(), labels)}


def finetune_loader(args, store, cfg, info, train_pos):
    """Shuffled, seeded loader of the training positions: one random temporal crop per sample
    (the pretraining feeder with one view), or whole sequences with --no-augment."""
    dataset_kw = dict(indices=train_pos, spatial_channels=cfg["spatial_channels"],
                      normalize=cfg["normalize"])
    dataset = (PretrainDataset(store, args.split, cfg["clip_len"], args.seed, num_views=1,
                               min_crop=args.min_crop, **dataset_kw) if args.augment
               else EvalDataset(store, args.split, cfg["clip_len"], **dataset_kw))
    if args.batch_size % info.world_size:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by the "
                         f"{info.world_size} processes")
    loader = make_loader(dataset, args.batch_size // info.world_size, shuffle=True,
                         seed=args.seed, workers=args.workers, drop_last=True,
                         distributed=info.distributed, pin_memory=info.device.type == "cuda")
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} training samples are fewer than one batch of "
                         f"{args.batch_size}: lower --batch-size")
    return loader


def finetune_state(model, args, steps_per_epoch: int, dtype, device) -> engine.TrainState:
    """AdamW over the layer-decay groups, warmup + cosine per step, the precision's scaler."""
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay, args.layer_decay))
    for group in optimizer.param_groups:
        group["lr"] *= args.lr
    scheduler = engine.make_scheduler(optimizer, steps_per_epoch, schedule="cosine",
                                      epochs=args.epochs, warmup_epochs=args.warmup_epochs)
    return engine.TrainState(optimizer, scheduler, engine.make_scaler(dtype, device))


def probe_head(model: Classifier, store, args, train_pos, feat_kw: dict, device) -> float:
    """LP-FT's first stage: train ``model.head`` as a linear probe on frozen features of the
    training positions (whole sequences, no augmentation), the procedure of --mode linear with
    --lp-epochs, --lp-lr and --batch-size; the head starts from the same seeded initialisation.
    So the fine-tune starts from the linear probe's classifier (and scores its top-1 before the
    first step) instead of a random head whose first gradients disturb the pretrained encoder.
    Returns the probe's top-1 % on those training samples."""
    feats, labels = extract(model.encoder, store, args.split, indices=train_pos, **feat_kw)
    feats, labels = feats.to(device), labels.to(device)
    epochs = args.lp_epochs
    out = train_linear(lambda idx: feats[idx], labels, model.encoder.feature_dim,
                       store.num_classes, epochs=epochs, lr=args.lp_lr,
                       batch_size=args.batch_size,
                       milestones=(int(epochs * 0.75), int(epochs * 0.875)),
                       momentum=args.momentum, weight_decay=0.0, seed=args.seed)
    model.head.load_state_dict(out["head"].state_dict())
    return accuracy(predict(model.head, feats), labels)


@torch.no_grad()
def train_top1(model: Classifier, store, args, train_pos, feat_kw: dict, device) -> float:
    """Top-1 % of ``model`` on the training positions, whole sequences, no augmentation."""
    feats, labels = extract(model.encoder, store, args.split, indices=train_pos, **feat_kw)
    return accuracy(predict(model.head, feats.to(device)).cpu(), labels)


def lp_guard(model: Classifier, probe: Classifier, store, args, train_pos, feat_kw: dict,
             device) -> dict:
    """LP-FT's guard: ``probe`` (the encoder the fine-tune started from, its head trained by
    ``probe_head``) against the fine-tuned ``model`` on the training samples; when the
    fine-tune scores lower there, ``model`` takes the probe's weights, so a fine-tune that went
    wrong (too short, too high a learning rate) ends where it started, never below it.
    Returns {"finetune_train_top1", "probe_train_top1", "kept": "finetune" | "linear probe"}."""
    tuned = train_top1(model, store, args, train_pos, feat_kw, device)
    probed = probe_head(probe, store, args, train_pos, feat_kw, device)
    kept = "finetune" if tuned >= probed else "linear probe"
    if kept == "linear probe":
        model.load_state_dict(probe.state_dict())
    return {"finetune_train_top1": tuned, "probe_train_top1": probed, "kept": kept}


def run_finetune(args, store, cfg, ckpt, info, dtype, train_pos, val_pos, run_dir, writer):
    """Returns (last-epoch test logits, best dict or None, history) on rank 0, None elsewhere."""
    overrides = {} if args.drop_path is None else {"drop_path": args.drop_path}
    try:
        encoder = build_eval_encoder(cfg, store, args.seed, ckpt, args.pretrained, **overrides)
    except ValueError as err:
        if overrides and "drop_path" in str(err):
            raise ValueError(f"--drop-path applies to dste/sttr only, not {cfg['backbone']}") from None
        raise
    model = Classifier(encoder, store.num_classes, args.seed)
    if info.distributed:
        model = engine.convert_batchnorm(model, info.device)
    model.to(info.device)
    loader = finetune_loader(args, store, cfg, info, train_pos)
    state = finetune_state(model, args, len(loader), dtype, info.device)
    meta = engine.resume_run(state, model, args, engine.run_metadata(args, info), info,
                             len(loader), run_dir,
                             check=lambda ckpt, path: check_head(ckpt, path, store.num_classes,
                                                                 args.data),
                             default_of=build_parser().get_default)
    if info.is_main:
        engine.write_json(run_dir / "config.json", meta)
    feat_kw = dict(stream=cfg["stream"], clip_len=cfg["clip_len"], normalize=cfg["normalize"],
                   spatial_channels=cfg["spatial_channels"], info=info, dtype=dtype,
                   batch_size=args.eval_batch_size, workers=args.workers)
    if state.epoch == 0 and args.lp_epochs:   # a fresh start (a resumed run has its head)
        top1 = probe_head(model, store, args, train_pos, feat_kw, info.device)
        engine.log(info, f"LP-FT: head trained as a linear probe for {args.lp_epochs} epochs "
                   f"(training top-1 {top1:.2f} %), fine-tuning from it")

    split_labels = torch.as_tensor(store.labels[store.split_indices(args.split)], dtype=torch.long)
    ddp_model = engine.wrap_ddp(model, info)
    step_fn = partial(finetune_step, ddp_model, split_labels, args, cfg, store.layout,
                      info, dtype)
    best_path = run_dir / "best.pt"
    if state.epoch == 0 and info.is_main:
        best_path.unlink(missing_ok=True)  # a stale file of an earlier run
    engine.barrier(info)
    best_val = [engine.load_checkpoint(best_path)["val_top1"] if best_path.is_file() else -1.0]
    history = []

    def logits_of(split, indices=None):
        feats, labels = extract(model.encoder, store, split, indices=indices, **feat_kw)
        logits = predict(model.head, feats.to(info.device)).cpu()
        require_finite(logits, f"fine-tuned scores of split {split}",
                       split_names(store, split, indices))
        return logits, labels

    def on_epoch_end(epoch: int) -> dict:
        if not len(val_pos):
            return {}
        logits, labels = logits_of(args.split, val_pos)
        top1 = accuracy(logits, labels)
        history.append({"epoch": epoch + 1, "val_top1": top1})
        if top1 > best_val[0]:
            best_val[0] = top1
            if info.is_main:
                engine.save_checkpoint(best_path, {"model": model.state_dict(),
                                                   "epoch": epoch + 1, "val_top1": top1})
        return {"val_top1": top1}

    engine.train(ddp_model, step_fn, loader, state, epochs=args.epochs, info=info,
                 seed=args.seed, output=run_dir, extra_state={"meta": meta},
                 on_epoch_end=on_epoch_end)
    if args.lp_epochs and args.lp_guard:  # the starting point rebuilt: resume-proof
        start = Classifier(build_eval_encoder(cfg, store, args.seed, ckpt, args.pretrained,
                                              **overrides), store.num_classes, args.seed)
        guard = lp_guard(model, start.to(info.device), store, args, train_pos, feat_kw,
                         info.device)
        history.append({"epoch": args.epochs, "lp_guard": guard})
        engine.log(info, f"LP-FT guard: training top-1 fine-tune "
                   f"{guard['finetune_train_top1']:.2f} %, linear probe "
                   f"{guard['probe_train_top1']:.2f} %: kept the {guard['kept']}")
    last_logits, _ = logits_of(args.eval_split)
    best = None
    if len(val_pos):
        engine.barrier(info)
        saved = engine.load_checkpoint(best_path)
        model.load_state_dict(saved["model"])
        best = {"epoch": saved["epoch"], "val_top1": saved["val_top1"],
                "logits": logits_of(args.eval_split)[0]}
    return (last_logits, best, history) if info.is_main else None


# ----------------------------------------------------------------------------- outputs
def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(classes, classes) int64 counts: row = true class, column = predicted class."""
    return np.bincount(labels * num_classes + pred,
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def write_confusion_png(path: Path, cm: np.ndarray, class_names, title: str, writer,
                        step: int) -> None:
    """The labelled confusion matrix (evaluation.plots.confusion_figure) as <path> and as the
    TensorBoard image test/confusion."""
    fig = confusion_figure(cm, class_names, title=title)
    save_figure(fig, path)
    fig.canvas.draw()
    writer.add_image("test/confusion", np.asarray(fig.canvas.buffer_rgba())[..., :3], step,
                     dataformats="HWC")


def write_confusion_csv(path: Path, cm: np.ndarray, class_names) -> None:
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["true \\ predicted"] + list(class_names))
    for name, row in zip(class_names, cm):
        out.writerow([name] + row.tolist())
    engine.atomic_write_bytes_via(path, lambda tmp: tmp.write_text(buf.getvalue()))


def write_names(path: Path, names) -> None:
    engine.atomic_write_bytes_via(path, lambda tmp: tmp.write_text("\n".join(names) + "\n"))


def write_outputs(args, store, cfg, tag, logits, best, history, train_pos, val_pos, writer,
                  pretrained_stream=None):
    """Results JSON, scores, confusion matrix (CSV + TensorBoard image), chosen names."""
    out = Path(args.output)
    test_seq = store.split_indices(args.eval_split)
    labels = store.labels[test_seq].astype(np.int64)
    names = np.asarray(store.names)[test_seq]
    train_names = np.asarray(store.names)[store.split_indices(args.split)]
    labels_t = torch.as_tensor(labels)
    require_finite(logits, f"test scores of split {args.eval_split}", names)
    if best is not None:
        require_finite(best["logits"], f"test scores of split {args.eval_split} (best epoch)",
                       names)
    cm = confusion_matrix(logits.argmax(1).numpy(), labels, store.num_classes)
    save_scores(out / f"{tag}_scores.npz", names, labels, logits.numpy())
    write_confusion_csv(out / f"{tag}_confusion.csv", cm, store.manifest["class_names"])
    write_confusion_png(out / f"{tag}_confusion.png", cm, store.manifest["class_names"],
                        f"{out.name} {tag}", writer, args.epochs)
    result = {
        "mode": args.mode, "label_fraction": args.label_fraction,
        "checkpoint": str(args.pretrained) if args.pretrained else "scratch",
        "data": str(args.data), "split": args.split, "eval_split": args.eval_split,
        **cfg, "pretrained_stream": pretrained_stream, "epochs": args.epochs, "lr": args.lr,
        "batch_size": args.batch_size, "seed": args.seed, "num_train": int(len(train_pos)),
        "num_val": int(len(val_pos)), "num_test": int(len(labels)), "selection": "last epoch",
        "top1": accuracy(logits, labels_t, 1), "top5": accuracy(logits, labels_t, 5),
        "scores_file": f"{tag}_scores.npz", "confusion_file": f"{tag}_confusion.csv",
        "confusion_png": f"{tag}_confusion.png",
        "history": history, "flags": engine.flags_of(args),
    }
    if args.label_fraction < 1.0 or len(val_pos):
        write_names(out / f"{tag}_labelled.txt", train_names[train_pos])
        result["labelled_file"] = f"{tag}_labelled.txt"
    if len(val_pos):
        write_names(out / f"{tag}_val.txt", train_names[val_pos])
        result["val_file"] = f"{tag}_val.txt"
    if best is not None:
        save_scores(out / f"{tag}_best_scores.npz", names, labels, best["logits"].numpy())
        result["best"] = {"selected_on": f"validation split ({len(val_pos)} training samples)",
                          "epoch": best["epoch"], "val_top1": best["val_top1"],
                          "top1": accuracy(best["logits"], labels_t, 1),
                          "top5": accuracy(best["logits"], labels_t, 5),
                          "scores_file": f"{tag}_best_scores.npz"}
    writer.add_scalar("test/top1", result["top1"], args.epochs)
    writer.add_scalar("test/top5", result["top5"], args.epochs)
    engine.write_json(out / f"{tag}.json", result)
    return result


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.print_config:
        return recipes.print_config(args)
    info = engine.init_distributed()
    store, ckpt, cfg = setup_eval_run(args, ("stream",) if args.mode == "finetune" else ())
    tag = result_tag(args.mode, args.label_fraction)
    with engine.claim_run_dir(args.output, tag, info):
        return evaluate(args, store, ckpt, cfg, info, tag)


def evaluate(args, store, ckpt, cfg, info, tag) -> dict | None:
    """The linear probe or fine-tuning once the flags are checked and --output is ours."""
    pretrained_stream = checkpoint_config(ckpt).get("stream") if ckpt is not None else None
    dtype = engine.autocast_dtype(args.precision, info.device, engine.recorded_precision(ckpt))
    run_dir = Path(args.output) / tag
    split_labels = store.labels[store.split_indices(args.split)]
    train_pos, val_pos = training_positions(split_labels, args)
    engine.log(info, f"{args.mode} of {cfg['backbone']}/{cfg['preset']} "
               f"({args.pretrained or 'from scratch'}) on {args.data} {args.split}: "
               f"{len(train_pos)} training, {len(val_pos)} validation samples; test "
               f"{args.eval_split}; stream {cfg['stream']}, clip {cfg['clip_len']}"
               + (f" (the encoder was pretrained on stream {pretrained_stream})"
                  if pretrained_stream not in (None, cfg["stream"]) else ""))
    writer = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tb"))
    try:
        run = run_linear if args.mode == "linear" else run_finetune
        outcome = run(args, store, cfg, ckpt, info, dtype, train_pos, val_pos, run_dir, writer)
        if not info.is_main:
            return None
        result = write_outputs(args, store, cfg, tag, *outcome, train_pos, val_pos, writer,
                               pretrained_stream)
    finally:
        if writer is not None:
            writer.close()
    best = result.get("best")
    engine.log(info, f"{tag}: last epoch top-1 {result['top1']:.2f} %, top-5 "
               f"{result['top5']:.2f} %" + (f"; best on validation (epoch {best['epoch']}): "
                                            f"top-1 {best['top1']:.2f} %" if best else ""))
    return result


if __name__ == "__main__":
    engine.run_cli(main, "action_recognition.py")

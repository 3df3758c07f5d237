"""End-to-end fine-tuning of ``action_recognition.py --mode finetune``: encoder + linear head.

The encoder and a Linear(feature_dim -> classes) head (``Classifier``; a fine-tuning variant:
``build_model``) are trained end to end by engine.train: AdamW (no weight decay on biases,
norms and positional tables), linear warmup then cosine decay per step (``finetune_state``),
optional layer-wise lr decay, label smoothing, drop path (transformers), and an exponential
moving average of the weights (--ema-decay, engine.WeightEMA) as the fine-tune's result.

Augmentation (``finetune_loader``, ``finetune_step``): the random temporal crop-and-resize of
the pretraining feeder with one view per sample (--no-augment: whole sequences), then optional
per-clip --shear, --rotate and --flip, and --study-augment (one seeded generator per step).

Layer-wise decay (``param_groups``): the lr of a parameter at layer id d of D is
lr * decay ** (D + 1 - d), as the encoder declares them (num_layers, layer_id,
no_weight_decay: models/param_groups.py): id 0 = token embeddings / positional tables / input
norm, d = i + 1 for DSTE/STTR layer i (the temporal and spatial layer i share an id), for
ST-GCN block i and for MS-G3D stage i; the head is at D + 1 (full lr).

LP-FT (--lp-epochs N; the small-set recipes: 160): the head is first trained as a linear probe
on frozen features of the training samples (``probe_head``) and the fine-tune starts from it
(--head-init probe; --head-init random: from a seeded random head, the probe trained for the
guard only, as the small-set recipe does on cross-view 3D data).
Its guard (--lp-guard, ``lp_guard``) compares the fine-tune with the linear probe of the same
encoder on training samples that neither trained on, and keeps the better (ties: the
fine-tune), so that a fine-tune that went wrong (too short, too high a learning rate, too few
samples) never ends below the probe it started from. ``guard_decision`` records McNemar's exact
one-sided p-value of the probe's held-out wins; --guard-alpha 0.05 keeps the probe only when it
is below 0.05 (a rule with power only on hundreds of held-out samples). Without a validation
split a first selection fine-tune holds out a stratified --guard-fraction (0.2) of the training
samples (<tag>/guard); the full fine-tune
runs unless the probe won there. The comparison is the last ``history`` entry. Accuracy
on the training samples cannot decide this: on a small set both reach 100 %.

Fine-tuning variants (METHOD.md section 9, one at a time): a TPN neck (models/tpn.py), DTN-style
multi-scale branches and mutual distillation with a second stream (evaluation/dtn.py); their
losses: ``variant_loss``, their flags in the results: ``variant_record``.

Training state is kept in <output>/<tag>/ (last.pt, best.pt, tb/) and resumes with --resume;
with a validation split, best.pt holds the epoch of the best validation top-1.
"""
from __future__ import annotations

import copy
import math
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import engine
from evaluation.checks import require_finite
from evaluation.dtn import BranchClassifier, MutualClassifier, branch_loss, mutual_loss
from evaluation.features import (CheckpointError, build_eval_encoder, extract, split_names,
                                 stream_transform)
from evaluation.linear import (accuracy, average_clips, make_head, predict, select_lr,
                               train_linear)
from evaluation.subset import stratified_split
from feeders.augment import random_flip, random_rotation, random_shear, study_augment
from feeders.dataset import EvalDataset, PretrainDataset, make_loader
from models.base import EncoderOutput
from models.param_groups import finetune_param_groups
from models.tpn import AUX_WEIGHT, TPNEncoder


class Classifier(nn.Module):
    """Encoder + Linear(feature_dim -> classes) on the global feature: (N, C, L, V, M) -> logits."""

    def __init__(self, encoder: nn.Module, num_classes: int, seed: int):
        super().__init__()
        self.encoder = encoder
        self.head = make_head(encoder.feature_dim, num_classes, seed)

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        """logits (N, classes); with_aux (a TPN neck): (logits, auxiliary logits)."""
        if with_aux:
            out, aux = self.encoder.forward_aux(x)
            return self.head(out.global_feat), aux
        return self.head(self.encoder(x).global_feat)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


def build_model(encoder: nn.Module, args, cfg: dict, store) -> nn.Module:
    """The fine-tuned model: Classifier (with a TPN neck: --neck tpn), BranchClassifier
    (--branches) or MutualClassifier (--mutual-stream); every one has ``predict(x) -> logits``."""
    if args.branches is not None:
        return BranchClassifier(encoder, store.num_classes, args.branches, args.seed,
                                shared=args.branch_weights == "shared")
    if args.mutual_stream is not None:
        return MutualClassifier(encoder, store.num_classes, (cfg["stream"], args.mutual_stream),
                                store.layout.parents, cfg["spatial_channels"], args.seed)
    if args.neck == "tpn":
        encoder = TPNEncoder(encoder, store.num_classes, seed=args.seed)
    return Classifier(encoder, store.num_classes, args.seed)


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups of the encoder's declared layer ids and weight-decay exemptions, the head at
    full lr (models/param_groups.py). Each group's ``lr`` is the scale (times the base lr later).
    Several heads share one encoder's groups; several encoders each get their own."""
    if isinstance(model, Classifier):
        return finetune_param_groups(model.encoder, model.head, weight_decay, layer_decay)
    if len(model.encoders) == 1:
        return finetune_param_groups(model.encoder, model.heads, weight_decay, layer_decay)
    return [group for encoder, head in zip(model.encoders, model.heads)
            for group in finetune_param_groups(encoder, head, weight_decay, layer_decay)]


def variant_loss(model, x, labels, args, progress: float):
    """(loss, logits (N, classes), extra scalars) of one batch for the fine-tuning variant."""
    smoothing = args.label_smoothing
    if args.branches is not None:
        branch_logits = model(x)
        loss, terms = branch_loss(branch_logits, labels, progress, smoothing)
        return loss, branch_logits.mean(dim=1), terms
    if args.mutual_stream is not None:
        two = model(x)
        loss, terms = mutual_loss(two[:, 0], two[:, 1], labels, smoothing)
        return loss, two.float().softmax(dim=2).mean(dim=1).log(), terms
    if args.neck == "tpn":
        logits, aux = model(x, with_aux=True)
        aux_ce = F.cross_entropy(aux.float(), labels, label_smoothing=smoothing)
        main_ce = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
        return main_ce + AUX_WEIGHT * aux_ce, logits, {"main_ce": main_ce.detach(),
                                                       "aux_ce": aux_ce.detach()}
    logits = model(x)
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing), logits, {}


def check_head(ckpt: dict, path, num_classes: int, data) -> None:
    """CheckpointError when the resumed checkpoint ``ckpt`` (at ``path``) has a classifier
    head (head.weight (classes, D)) for another number of classes than dataset ``data``."""
    head = ckpt.get("model", {}).get("head.weight")
    if head is not None and head.shape[0] != num_classes:
        raise CheckpointError(f"checkpoint {path} has a classifier head for {head.shape[0]} "
                              f"classes but dataset {data} has {num_classes}")


def finetune_step(model, split_labels, args, cfg, layout, info, dtype, batch, epoch, step,
                  steps_per_epoch: int = 1):
    """batch = (views (B, 1, C, L, V, M) or clips (B, C, L, V, M), [labels,] positions);
    layout: the store's (its parents make bones, its mirror map serves --flip)."""
    x = batch[0]
    if x.dim() == 6:
        x = x[:, 0]
    labels = split_labels[batch[-1]].to(info.device)
    x = x.to(info.device, non_blocking=True)
    if args.shear or args.rotate or args.flip or args.study_augment:  # one generator for all
        gen = engine.step_generator(args.seed, epoch, step, info.rank)
        if args.shear:
            x = random_shear(x, args.shear, gen, cfg["spatial_channels"])
        if args.rotate:
            x = random_rotation(x, args.rotate, gen, cfg["spatial_channels"],
                                args.rotate_axes)
        if args.flip:
            x = random_flip(x, args.flip, gen, layout.mirror)
        if args.study_augment:
            x = study_augment(x, gen, layout.mirror, cfg["spatial_channels"])
    if not getattr(engine.unwrap(model), "takes_raw", False):  # MutualClassifier: its streams
        x = stream_transform(cfg["stream"], layout.parents, cfg["spatial_channels"])(x)
    progress = (epoch + step / steps_per_epoch) / args.epochs
    with engine.precision_context(dtype, info.device):
        loss, logits, terms = variant_loss(model, x, labels, args, progress)
    return loss, {"loss": loss.detach(), "top1": accuracy(logits.detach().float(), labels),
                  **{k: v.detach() for k, v in terms.items()}}


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
                         distributed=info.distributed, device=info.device)
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} training samples are fewer than one batch of "
                         f"{args.batch_size}: lower --batch-size")
    return loader


def finetune_state(model, args, steps_per_epoch: int, dtype, device) -> engine.TrainState:
    """AdamW over the layer-decay groups, warmup + cosine per step, the precision's scaler, and
    with --ema-decay a moving average of the weights (engine.WeightEMA)."""
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay, args.layer_decay))
    for group in optimizer.param_groups:
        group["lr"] *= args.lr_used
    scheduler = engine.make_scheduler(optimizer, steps_per_epoch, schedule="cosine",
                                      epochs=args.epochs, warmup_epochs=args.warmup_epochs)
    ema = engine.WeightEMA(model, args.ema_decay) if args.ema_decay else None
    return engine.TrainState(optimizer, scheduler, engine.make_scaler(dtype, device), ema=ema)


def probe_head(model: Classifier, store, args, train_pos, feat_kw: dict, device) -> float:
    """LP-FT's first stage: train ``model.head`` as a linear probe on frozen features of the
    training positions (whole sequences, no augmentation), the procedure of --mode linear with
    --lp-epochs, --lp-lr (or the lr --probe-lr-grid chooses on these samples), --batch-size
    and --standardize; the head starts from the same seeded initialisation.
    So the fine-tune starts from the linear probe's classifier (and scores its top-1 before the
    first step) instead of a random head whose first gradients disturb the pretrained encoder.
    Returns the probe's top-1 % on those training samples."""
    feats, labels = extract(model.encoder, store, args.split, indices=train_pos, **feat_kw)
    feats, labels = feats.to(device), labels.to(device)
    epochs = args.lp_epochs
    train_kw = dict(epochs=epochs, batch_size=args.batch_size,
                    milestones=(int(epochs * 0.75), int(epochs * 0.875)),
                    momentum=args.momentum, weight_decay=0.0, standardize=args.standardize)
    lr = args.lp_lr
    if args.probe_lr_grid:
        chosen, _ = select_lr(feats, labels, store.num_classes, args.probe_lr_grid,
                              folds=args.probe_lr_folds, seed=args.seed, **train_kw)
        lr = args.lp_lr if chosen is None else chosen   # None: too few samples to hold out
    out = train_linear(lambda idx: feats[idx], labels, model.encoder.feature_dim,
                       store.num_classes, lr=lr, seed=args.seed, **train_kw)
    model.head.load_state_dict(out["head"].state_dict())
    return accuracy(predict(model.head, feats), labels)


@torch.no_grad()
def held_out_correct(model: Classifier, store, args, positions, feat_kw: dict,
                     device) -> np.ndarray:
    """Whether ``model`` classifies each of the positions ``positions`` of --split right
    (whole sequences): bool (len(positions),)."""
    feats, labels = extract(model.encoder, store, args.split, indices=positions, **feat_kw)
    logits = predict(model.head, feats.to(device)).cpu()
    return (logits.argmax(1) == labels).numpy()


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test (McNemar's exact test on the discordant pairs): the
    probability of ``wins`` or more heads in ``wins + losses`` fair coin flips (1.0 for none)."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def guard_decision(tuned_ok: np.ndarray, probe_ok: np.ndarray, alpha: float) -> dict:
    """LP-FT's guard rule on per-sample correctness (bool (S,) each, the same held-out samples):
    keep the linear probe only when it is right on more of the samples the two disagree on
    and the one-sided sign test of that difference gives p < ``alpha``; otherwise, ties
    included, the fine-tune. Alpha 1 (--guard-alpha's default) keeps the probe whenever its
    held-out top-1 is higher. With alpha 0.05, a probe right on 2 more of 20 held-out samples
    (70 against 60 %) is chance (p = 0.25) and the fine-tune stays; right on 5 more with none
    fewer (p = 1/32) the probe is kept."""
    probe_only = int((probe_ok & ~tuned_ok).sum())
    tuned_only = int((tuned_ok & ~probe_ok).sum())
    p = sign_test_p(probe_only, tuned_only)
    return {"finetune_held_out_top1": 100.0 * float(tuned_ok.mean()),
            "probe_held_out_top1": 100.0 * float(probe_ok.mean()),
            "held_out": int(len(tuned_ok)), "probe_only_right": probe_only,
            "finetune_only_right": tuned_only, "p_value": p, "alpha": float(alpha),
            "kept": "linear probe" if probe_only > tuned_only and p < alpha else "finetune"}


def guard_positions(split_labels, train_pos, args) -> tuple:
    """LP-FT's guard without a validation split: (fit, held) positions of --split, a
    stratified --guard-fraction of ``train_pos`` held out (seeded by --seed)."""
    fit, held = stratified_split(np.asarray(split_labels)[train_pos], args.guard_fraction,
                                 args.seed)
    return train_pos[fit], train_pos[held]


def lp_guard(model: Classifier, probe: Classifier, store, args, fit_pos, held_pos,
             feat_kw: dict, device) -> dict:
    """LP-FT's guard: ``probe`` (the pretrained encoder, its head trained by ``probe_head`` on
    the positions ``fit_pos``) against the fine-tuned ``model`` (trained on the same positions)
    on the held-out positions ``held_pos``, which neither saw. Training accuracy would not do:
    on a small set both reach 100 %. Returns ``guard_decision``'s record (both held-out
    top-1, the counts and p-value of the sign test, "kept": "finetune" | "linear probe")."""
    probe_head(probe, store, args, fit_pos, feat_kw, device)
    tuned = held_out_correct(model, store, args, held_pos, feat_kw, device)
    probed = held_out_correct(probe, store, args, held_pos, feat_kw, device)
    return guard_decision(tuned, probed, args.guard_alpha)


def build_start(args, store, cfg, ckpt, overrides: dict) -> nn.Module:
    """The model a fine-tune starts from: the pretrained encoder, a fresh seeded head."""
    try:
        encoder = build_eval_encoder(cfg, store, args.seed, ckpt, args.pretrained, **overrides)
    except ValueError as err:
        if overrides and "drop_path" in str(err):
            raise ValueError(f"--drop-path applies to dste/sttr only, not {cfg['backbone']}") from None
        raise
    return build_model(encoder, args, cfg, store)


def train_model(args, store, cfg, ckpt, info, dtype, train_pos, val_pos, run_dir, feat_kw,
                logits_of, default_of=None):
    """Fine-tune a fresh start model (``build_start``; with --lp-epochs and --head-init probe
    its head first a linear probe of ``train_pos``) on the positions ``train_pos`` of --split, its state in
    ``run_dir`` (resumable). With validation positions ``val_pos``, each epoch's validation
    top-1 is recorded and the best epoch's weights kept in <run_dir>/best.pt.
    ``logits_of(model, split, indices)`` scores a split. Returns (model, history)."""
    overrides = {} if args.drop_path is None else {"drop_path": args.drop_path}
    model = build_start(args, store, cfg, ckpt, overrides)
    if info.distributed:
        model = engine.convert_batchnorm(model, info.device)
    model.to(info.device)
    loader = finetune_loader(args, store, cfg, info, train_pos)
    state = finetune_state(model, args, len(loader), dtype, info.device)
    meta = engine.resume_run(state, model, args, engine.run_metadata(args, info), info,
                             len(loader), run_dir,
                             check=lambda ckpt, path: check_head(ckpt, path, store.num_classes,
                                                                 args.data),
                             default_of=default_of)
    if info.is_main:
        engine.write_json(run_dir / "config.json", meta)
    if state.epoch == 0 and args.lp_epochs and args.head_init == "probe":   # a fresh start
        top1 = probe_head(model, store, args, train_pos, feat_kw, info.device)
        engine.log(info, f"LP-FT: head trained as a linear probe for {args.lp_epochs} epochs "
                   f"(training top-1 {top1:.2f} %), fine-tuning from it")
        if state.ema is not None:   # the average starts from the probe's head
            state.ema = engine.WeightEMA(model, args.ema_decay)

    split_labels = torch.as_tensor(store.labels[store.split_indices(args.split)], dtype=torch.long)
    ddp_model = engine.wrap_ddp(model, info)
    step_fn = partial(finetune_step, ddp_model, split_labels, args, cfg, store.layout,
                      info, dtype, steps_per_epoch=len(loader))
    best_path = run_dir / "best.pt"
    if state.epoch == 0 and info.is_main:
        best_path.unlink(missing_ok=True)  # a stale file of an earlier run
    engine.barrier(info)
    best_val = [engine.load_checkpoint(best_path)["val_top1"] if best_path.is_file() else -1.0]
    history = []

    def scored() -> nn.Module:
        """The weights whose scores count: the model's, or with --ema-decay their average."""
        if state.ema is None:
            return model
        averaged = copy.deepcopy(model)
        averaged.load_state_dict(state.ema.weights)
        return averaged

    def on_epoch_end(epoch: int) -> dict:
        if not len(val_pos):
            return {}
        evaluated = scored()
        logits, labels = logits_of(evaluated, args.split, val_pos)
        top1 = accuracy(logits, labels)
        history.append({"epoch": epoch + 1, "val_top1": top1})
        if top1 > best_val[0]:
            best_val[0] = top1
            if info.is_main:
                engine.save_checkpoint(best_path, {"model": evaluated.state_dict(),
                                                   "epoch": epoch + 1, "val_top1": top1})
        return {"val_top1": top1}

    engine.train(ddp_model, step_fn, loader, state, epochs=args.epochs, info=info,
                 seed=args.seed, output=run_dir, extra_state={"meta": meta},
                 on_epoch_end=on_epoch_end)
    if state.ema is not None:   # the fine-tune's result is the averaged weights
        model.load_state_dict(state.ema.weights)
    return model, history


def run_finetune(args, store, cfg, ckpt, info, dtype, train_pos, val_pos, run_dir, writer,
                 default_of=None):
    """The fine-tune on the training positions ``train_pos`` of --split (``val_pos``: the
    validation positions, may be empty), its state in ``run_dir``, tested on --eval-split.

    LP-FT's guard (--lp-epochs with --lp-guard) compares the fine-tune with the linear probe
    of the same encoder on samples neither trained on (``lp_guard``): the validation
    positions when there are some; otherwise a first selection fine-tune on all but a held-out
    --guard-fraction of ``train_pos`` (state in <run_dir>/guard), after which the full
    fine-tune runs unless the probe won there, and the linear probe of all of ``train_pos``
    is the model when it lost. The guard is the last ``history`` entry.

    ``default_of`` (the command line's parser.get_default) lets a run older than a new flag
    resume with it at its default (engine.resume_run). Returns (last-epoch test logits (N, C),
    best dict or None, history) on rank 0, None elsewhere; best = {"epoch", "val_top1",
    "logits" (N, C)} of the best validation epoch."""
    feat_kw = dict(stream=cfg["stream"], clip_len=cfg["clip_len"], normalize=cfg["normalize"],
                   spatial_channels=cfg["spatial_channels"], info=info, dtype=dtype,
                   batch_size=args.eval_batch_size, workers=args.workers)
    overrides = {} if args.drop_path is None else {"drop_path": args.drop_path}

    def logits_of(model, split, indices=None, num_clips=1):
        """(logits (N, classes), labels) of a split; num_clips > 1: the clips' averaged scores."""
        clip_kw = dict(num_clips=num_clips, clip_fraction=args.clip_fraction)
        if isinstance(model, Classifier):
            feats, labels = extract(model.encoder, store, split, indices=indices, **feat_kw,
                                    **clip_kw)
            logits = average_clips(predict(model.head, feats.to(info.device))).cpu()
        else:
            kw = {**feat_kw, "stream": "j"} if getattr(model, "takes_raw", False) else feat_kw
            logits, labels = extract(Predictor(model), store, split, indices=indices, **kw,
                                     **clip_kw)
            logits = average_clips(logits)
        require_finite(logits, f"fine-tuned scores of split {split}",
                       split_names(store, split, indices))
        return logits, labels

    def start():
        """A fresh start model (the pretrained encoder, a seeded head) on the device."""
        return build_start(args, store, cfg, ckpt, overrides).to(info.device)

    fit_kw = dict(feat_kw=feat_kw, logits_of=logits_of, default_of=default_of)

    def selection_guard() -> tuple:
        """The guard without validation positions: a selection fine-tune on all but a held-out
        --guard-fraction of ``train_pos`` (its own state in <run_dir>/guard), compared with the
        probe there. Returns (guard record or None when no class can spare a sample, the
        linear probe of all of ``train_pos`` when the probe won, else None)."""
        split_labels = store.labels[store.split_indices(args.split)]
        fit_pos, held_pos = guard_positions(split_labels, train_pos, args)
        if not len(held_pos):   # nothing to compare on: the fine-tune, said so
            engine.log(info, f"LP-FT guard: off, no class of --split {args.split} has two "
                       f"training samples to hold one out")
            return None, None
        engine.log(info, f"LP-FT guard: a selection fine-tune on {len(fit_pos)} training "
                   f"samples, compared with the linear probe on the {len(held_pos)} held out")
        # its own state: a --resume FILE names the full run's, the selection resumes its own
        select_args = copy.copy(args)
        select_args.resume = "never" if args.resume == "never" else "auto"
        selection, _ = train_model(select_args, store, cfg, ckpt, info, dtype, fit_pos,
                                   np.zeros(0, dtype=np.int64), run_dir / "guard", **fit_kw)
        guard = lp_guard(selection, start(), store, args, fit_pos, held_pos, feat_kw,
                         info.device)
        if guard["kept"] == "finetune":
            return guard, None
        probe = start()   # no full fine-tune: the probe of all training samples
        probe_head(probe, store, args, train_pos, feat_kw, info.device)
        return guard, probe

    guarded = bool(args.lp_epochs and args.lp_guard)
    guard, model, history = None, None, []
    if guarded and not len(val_pos):
        guard, model = selection_guard()
    full_run = model is None
    if full_run:
        model, history = train_model(args, store, cfg, ckpt, info, dtype, train_pos, val_pos,
                                     run_dir, **fit_kw)
        if guarded and len(val_pos):   # the comparison is made on the validation positions
            probe = start()
            guard = lp_guard(model, probe, store, args, train_pos, val_pos, feat_kw,
                             info.device)
            if guard["kept"] == "linear probe":
                model = probe
    if guard is not None:
        history.append({"epoch": args.epochs, "lp_guard": guard})
        engine.log(info, f"LP-FT guard: held-out top-1 ({guard['held_out']} training samples) "
                   f"fine-tune {guard['finetune_held_out_top1']:.2f} %, linear probe "
                   f"{guard['probe_held_out_top1']:.2f} % (probe alone right on "
                   f"{guard['probe_only_right']}, fine-tune alone on "
                   f"{guard['finetune_only_right']}: p = {guard['p_value']:.3g}, alpha "
                   f"{guard['alpha']:g}): kept the {guard['kept']}")
    last_logits, _ = logits_of(model, args.eval_split, num_clips=args.num_clips)
    best = None
    if full_run and len(val_pos):   # the fine-tune's epoch of the best validation top-1
        engine.barrier(info)
        saved = engine.load_checkpoint(run_dir / "best.pt")
        model.load_state_dict(saved["model"])
        best = {"epoch": saved["epoch"], "val_top1": saved["val_top1"],
                "logits": logits_of(model, args.eval_split, num_clips=args.num_clips)[0]}
    return (last_logits, best, history) if info.is_main else None


class Predictor(nn.Module):
    """A fine-tuned model's ``predict`` as an encoder whose global feature is the logits, so
    evaluation.features.extract (sharding, autocast, multi-clip) runs it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        logits = self.model.predict(x)
        return EncoderOutput(logits, logits, logits, logits[:, None], logits[:, None])


def variant_record(args) -> dict:
    """The fine-tuning variant flags of a run, for its results JSON."""
    return {"neck": args.neck, "branches": list(args.branches) if args.branches else None,
            "branch_weights": args.branch_weights if args.branches else None,
            "mutual_stream": args.mutual_stream, "study_augment": args.study_augment}

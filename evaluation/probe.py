"""The linear probe of ``action_recognition.py --mode linear`` on a dataset store.

The frozen encoder (eval mode) encodes the training and test splits once; the features are
cached in <output>/features (keyed by the weights, data, split, stream and clip length:
evaluation.features.cached_extract) and a Linear(feature_dim -> classes) is trained on them
in memory by evaluation.linear.train_linear (METHOD section 5), with --epochs, --lr (as scaled
by --lr-scale-base, or chosen from --probe-lr-grid on held-out training samples:
evaluation.linear.select_lr), --batch-size, --milestones, --momentum, --weight-decay and
--standardize. With a validation split the head of the best validation top-1 is kept as well;
the test split is scored with --num-clips crops (evaluation.linear.average_clips).
"""
from __future__ import annotations

import engine
from evaluation.features import build_eval_encoder, cached_extract
from evaluation.linear import average_clips, predict, select_lr, train_linear


def run_linear(args, store, cfg, ckpt, info, dtype, train_pos, val_pos, run_dir, writer):
    """The linear probe on the training positions ``train_pos`` of --split (``val_pos``: the
    validation positions, may be empty), tested on --eval-split.

    Returns (last-epoch test logits (N, C), best dict or None, history) on rank 0, None
    elsewhere; best = {"epoch", "logits" (N, C), "val_top1"} of the best validation epoch.
    ``run_dir`` is unused (the signature of evaluation.finetune.run_finetune); the per-epoch
    records go to ``writer`` as linear/<key>."""
    encoder = build_eval_encoder(cfg, store, args.seed, ckpt, args.pretrained).to(info.device)
    cache = None if args.no_cache else (args.cache_dir or args.output / "features")
    kw = dict(stream=cfg["stream"], clip_len=cfg["clip_len"], normalize=cfg["normalize"],
              spatial_channels=cfg["spatial_channels"], info=info, dtype=dtype,
              batch_size=args.eval_batch_size, workers=args.workers, cache_dir=cache)
    train_f, train_l = cached_extract(encoder, store, args.split, **kw)
    test_f, _ = cached_extract(encoder, store, args.eval_split, **kw, num_clips=args.num_clips,
                               clip_fraction=args.clip_fraction)  # (N, D) or (N, K, D)
    if not info.is_main:
        return None
    device = info.device
    feats = train_f[train_pos].to(device)
    val = (train_f[val_pos], train_l[val_pos]) if len(val_pos) else None

    def log(epoch, record):
        for key, value in record.items():
            if key != "epoch":
                writer.add_scalar(f"linear/{key}", value, epoch)

    labels = train_l[train_pos].to(device)
    train_kw = dict(epochs=args.epochs, batch_size=args.batch_size,
                    milestones=tuple(args.milestones), momentum=args.momentum,
                    weight_decay=args.weight_decay, standardize=args.standardize)
    if args.probe_lr_grid:
        chosen, args.lr_selection = select_lr(feats, labels, store.num_classes,
                                              args.probe_lr_grid, folds=args.probe_lr_folds,
                                              seed=args.seed, **train_kw)
        args.lr_used = args.lr_used if chosen is None else chosen
        table = ", ".join(f"{r['lr']:g}: {r['held_out_top1']:.1f} %" for r in args.lr_selection)
        engine.log(info, f"linear probe lr {args.lr_used:g}, " + (
            f"chosen on held-out training samples ({table})" if chosen is not None else
            "--lr: no class has two training samples to hold one out for --probe-lr-grid"))
    out = train_linear(lambda idx: feats[idx], labels, encoder.feature_dim, store.num_classes,
                       lr=args.lr_used, seed=args.seed, val=val, log=log, **train_kw)
    test_f = test_f.to(device)
    best = None
    if out["best_head"] is not None:
        best = {"epoch": out["best_epoch"],
                "logits": average_clips(predict(out["best_head"], test_f)).cpu(),
                "val_top1": out["history"][out["best_epoch"] - 1]["val_top1"]}
    return average_clips(predict(out["head"], test_f)).cpu(), best, out["history"]

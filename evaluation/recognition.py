"""Action recognition once the command line is parsed: the run of ``action_recognition.py``.

``evaluate`` chooses the training and validation samples (``training_positions``), runs the
linear probe (evaluation.probe.run_linear) or the fine-tune (evaluation.finetune.run_finetune)
and writes the outputs (``write_outputs``) in --output, named by ``result_tag``.

--label-fraction F trains on a per-class stratified subset of the training split (>= 1 per
class, drawn from --seed). --val-fraction V carves a stratified validation split out of the
(labelled) training samples; only then is a best epoch selected, on it. The test split
(--eval-split) is never used for selection: the reported top-1/top-5 are of the last epoch,
plus, with validation, those of the epoch with the best validation top-1 (labelled "best").

Outputs, with tag = <mode>[_<fraction>]: <tag>.json (results), <tag>_scores.npz (per-sample
test logits with sample names, for evaluation.fusion; <tag>_best_scores.npz for the best
epoch), <tag>_confusion.csv and <tag>_confusion.png (labelled with the class names, also in
<tag>/tb; evaluation.plots), <tag>_labelled.txt / <tag>_val.txt (names of the chosen training /
validation samples when a subset is used).
"""
from __future__ import annotations

import csv
import io
from functools import partial
from pathlib import Path

import numpy as np
import torch

import engine
from evaluation.checks import require_finite
from evaluation.features import checkpoint_config
from evaluation.finetune import run_finetune, variant_record
from evaluation.fusion import save_scores
from evaluation.linear import accuracy
from evaluation.plots import confusion_figure, save_figure
from evaluation.probe import run_linear
from evaluation.protocol import make_protocol
from evaluation.subset import stratified_split, stratified_subset


def result_tag(mode: str, fraction: float) -> str:
    """``linear``, ``finetune``, ``finetune_0.01``: the name of a run's result files."""
    return mode if fraction >= 1.0 else f"{mode}_{fraction:g}"


def training_positions(split_labels: np.ndarray, args) -> tuple[np.ndarray, np.ndarray]:
    """Positions (int64) within the training split, labels ``split_labels (N,)``, used for
    training and for validation: (train_pos (T,), val_pos (V,), V = 0 without
    --val-fraction), drawn from --seed by --label-fraction and --val-fraction."""
    if args.label_fraction < 1.0:
        labelled = stratified_subset(split_labels, args.label_fraction, args.seed)
    else:
        labelled = np.arange(len(split_labels), dtype=np.int64)
    if args.val_fraction == 0.0:
        return labelled, np.zeros(0, dtype=np.int64)
    train, val = stratified_split(split_labels[labelled], args.val_fraction, args.seed)
    return labelled[train], labelled[val]


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
    """The confusion matrix ``cm (K, K)`` as CSV, its header row and first column the class
    names (read back by evaluation.plots)."""
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["true \\ predicted"] + list(class_names))
    for name, row in zip(class_names, cm):
        out.writerow([name] + row.tolist())
    engine.atomic_write_bytes_via(path, lambda tmp: tmp.write_text(buf.getvalue()))


def write_names(path: Path, names) -> None:
    """The sample names, one a line."""
    engine.atomic_write_bytes_via(path, lambda tmp: tmp.write_text("\n".join(names) + "\n"))


def write_outputs(args, store, cfg, tag, logits, best, history, train_pos, val_pos, writer,
                  pretrained_stream=None, precision=None):
    """Results JSON, scores, confusion matrix (CSV + TensorBoard image), chosen names.
    ``precision``: the run's record (engine.evaluation_precision)."""
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
        "protocol": make_protocol(args.mode, label_fraction=args.label_fraction),
        "mode": args.mode, "label_fraction": args.label_fraction,
        "checkpoint": str(args.pretrained) if args.pretrained else "scratch",
        "data": str(args.data), "split": args.split, "eval_split": args.eval_split,
        **cfg, "pretrained_stream": pretrained_stream, "epochs": args.epochs, "lr": args.lr,
        "lr_scale_base": args.lr_scale_base, "lr_used": args.lr_used,
        "lr_selection": getattr(args, "lr_selection", None),
        "num_clips": args.num_clips, "clip_fraction": args.clip_fraction,
        "variant": variant_record(args),
        "batch_size": args.batch_size, "seed": args.seed, "num_train": int(len(train_pos)),
        "num_val": int(len(val_pos)), "num_test": int(len(labels)), "selection": "last epoch",
        "top1": accuracy(logits, labels_t, 1), "top5": accuracy(logits, labels_t, 5),
        "scores_file": f"{tag}_scores.npz", "confusion_file": f"{tag}_confusion.csv",
        "confusion_png": f"{tag}_confusion.png",
        "history": history, "flags": engine.flags_of(args), "precision": precision,
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


def evaluate(args, store, ckpt, cfg, info, tag, default_of=None) -> dict | None:
    """The linear probe or fine-tuning once the flags are checked and --output is ours.

    ``store``: the opened --data; ``ckpt``: the --pretrained checkpoint (None: from scratch);
    ``cfg``: the encoder config (evaluation.features.setup_eval_run); ``tag``: result_tag;
    ``default_of``: the parser's get_default, for a resumed fine-tune (run_finetune). Returns
    the results dict (as written to <tag>.json) on rank 0, None elsewhere."""
    pretrained_stream = checkpoint_config(ckpt).get("stream") if ckpt is not None else None
    precision = engine.evaluation_precision(args.precision, info.device, ckpt, info)
    dtype = engine.autocast_dtype(precision["precision"], info.device)
    run_dir = Path(args.output) / tag
    split_labels = store.labels[store.split_indices(args.split)]
    train_pos, val_pos = training_positions(split_labels, args)
    engine.log(info, f"{args.mode} of {cfg['backbone']}/{cfg['preset']} "
               f"({args.pretrained or 'from scratch'}) on {args.data} {args.split}: "
               f"{len(train_pos)} training, {len(val_pos)} validation samples; test "
               f"{args.eval_split}; stream {cfg['stream']}, clip {cfg['clip_len']}"
               + (f" (the encoder was pretrained on stream {pretrained_stream})"
                  if pretrained_stream not in (None, cfg["stream"]) else ""))
    engine.log(info, engine.describe_precision(precision))
    engine.log(info, f"lr {args.lr_used:g}" + (f" (--lr {args.lr:g} at batch {args.lr_scale_base},"
                                               f" scaled to batch {args.batch_size})"
                                               if args.lr_scale_base else ""))
    writer = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tb"))
    try:
        run = (run_linear if args.mode == "linear"
               else partial(run_finetune, default_of=default_of))
        outcome = run(args, store, cfg, ckpt, info, dtype, train_pos, val_pos, run_dir, writer)
        if not info.is_main:
            return None
        result = write_outputs(args, store, cfg, tag, *outcome, train_pos, val_pos, writer,
                               pretrained_stream, precision)
    finally:
        if writer is not None:
            writer.close()
    best = result.get("best")
    engine.log(info, f"{tag}: last epoch top-1 {result['top1']:.2f} %, top-5 "
               f"{result['top5']:.2f} %" + (f"; best on validation (epoch {best['epoch']}): "
                                            f"top-1 {best['top1']:.2f} %" if best else ""))
    return result

"""Action recognition on a (pretrained) encoder: linear probe or end-to-end fine-tuning.

    python action_recognition.py --mode linear --pretrained checkpoint/RUN/last.pt \\
        --data data/ntu60 --split xsub_train --output checkpoint/RUN [--lr 0.006]
    python action_recognition.py --mode finetune --pretrained ... --label-fraction 0.1 ...
    (or scripts/recog.sh, finetune.sh, semi.sh)

This file is the command line only (flags, their mode defaults and checks); the run itself is
evaluation.recognition.evaluate, with the linear probe in evaluation/probe.py and the
fine-tune (its optimiser, schedule, layer-wise decay, augmentation, LP-FT and variants) in
evaluation/finetune.py.

Encoder flags (--backbone --preset --stream --clip-len --spatial-channels) default to the
values stored in the --pretrained checkpoint; a flag that contradicts them is an error, except
--stream when fine-tuning: the checkpoint is then only the starting point, so an encoder
pretrained on joints can be fine-tuned on bones (the results JSON records both, as `stream`
and `pretrained_stream`) and the two fine-tunes fused (evaluation.fusion).
Without --pretrained the encoder is randomly initialised (from --seed): a from-scratch
baseline.

linear: the frozen encoder's features of the training and test splits, cached in
<output>/features, train a Linear(feature_dim -> classes) in memory (METHOD section 5;
evaluation/probe.py).

finetune: encoder + linear head trained end to end (evaluation/finetune.py): AdamW,
warmup + cosine, --layer-decay, --label-smoothing, --drop-path, --ema-decay; --lp-epochs N (the small-set
recipes: 160) first trains the head as a linear probe (LP-FT; --head-init random: the fine-tune
starts from a random head and the probe serves the guard only), --lp-guard keeps the probe when
the fine-tune ends below it on held-out training samples; augmentation: random temporal crops
(--no-augment: whole sequences), --shear, --rotate, --flip, --study-augment; one variant at a
time: --neck tpn, --branches, --mutual-stream. Training state is kept in <output>/<tag>/
(last.pt, best.pt, tb/) and resumes with --resume.

--label-fraction F trains on a per-class stratified subset of the training split (>= 1 per
class, drawn from --seed). --val-fraction V carves a stratified validation split out of the
(labelled) training samples; only then is a best epoch selected, on it. The test split
(--eval-split) is never used for selection: the reported top-1/top-5 are of the last epoch,
plus, with validation, those of the epoch with the best validation top-1 (labelled "best").

Outputs in --output, with tag = <mode>[_<fraction>]: <tag>.json (results), <tag>_scores.npz
(per-sample test logits with sample names, for evaluation.fusion), <tag>_confusion.csv and
<tag>_confusion.png (labelled with the class names, also in <tag>/tb; evaluation.plots),
<tag>_labelled.txt / <tag>_val.txt (names of the chosen training / validation samples when a
subset is used); evaluation/recognition.py writes them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import engine
import recipes
from evaluation.dtn import parse_branches
from evaluation.features import add_multiclip_arguments, setup_eval_run
from evaluation.recognition import evaluate, result_tag
from feeders.streams import STREAMS
from models.stgcn import add_study_arguments

MODE_DEFAULTS = {
    "linear": {"epochs": 160, "batch_size": 512, "lr": 0.006, "weight_decay": 0.0},
    "finetune": {"epochs": 100, "batch_size": 64, "lr": 3e-4, "weight_decay": 0.05},
}


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
    add_study_arguments(parser)
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
    engine.add_lr_scaling_arg(g, "the paper's linear probe: 512; fine-tuning has no paper batch")
    g.add_argument("--eval-batch-size", type=int, default=256, help="feature extraction batch")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="feature cache; None: <output>/features")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    add_multiclip_arguments(g)
    g = parser.add_argument_group("linear probe")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--milestones", type=int, nargs="*", default=[120, 140],
                   help="epochs where the lr is multiplied by 0.1")
    g.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=False,
                   help="train the linear probe (and LP-FT's) on features standardised per "
                        "dimension with the training samples' mean and std, folded back into "
                        "the head (small-set recipes: on)")
    g.add_argument("--probe-lr-grid", type=float, nargs="+", default=None, metavar="LR",
                   help="choose the linear probe's lr (and LP-FT's, in place of --lp-lr) from "
                        "these by mean top-1 on --probe-lr-folds stratified fifths of the "
                        "training samples held out in turn; recorded as lr_selection "
                        "(small-set recipes: 0.03 0.1 0.3 1)")
    g.add_argument("--probe-lr-folds", type=int, default=5,
                   help="--probe-lr-grid: held-out splits per lr")
    g = parser.add_argument_group("fine-tuning")
    g.add_argument("--warmup-epochs", type=float, default=5.0, help="linear lr warmup epochs")
    g.add_argument("--lp-epochs", type=int, default=0,
                   help="linear probe then fine-tune (LP-FT): first train the head alone on "
                        "frozen features of the training samples for this many epochs (SGD, "
                        "--lp-lr, --batch-size, x0.1 at 3/4 and 7/8, as --mode linear), then "
                        "fine-tune from it (0: off, a random head; small-set recipes: 160)")
    g.add_argument("--lp-lr", type=float, default=MODE_DEFAULTS["linear"]["lr"],
                   help="learning rate of the --lp-epochs linear probe (small-set recipes: 1.0)")
    g.add_argument("--head-init", choices=("probe", "random"), default="probe",
                   help="with --lp-epochs: the fine-tune's head starts from the linear probe "
                        "(probe: LP-FT) or from a seeded random head (random: the probe is "
                        "then trained for --lp-guard only; the small-set recipe on cross-view "
                        "3D data, chosen on NW-UCLA view 2)")
    g.add_argument("--lp-guard", action=argparse.BooleanOptionalAction, default=True,
                   help="with --lp-epochs: compare the fine-tune with the linear probe of the "
                        "same encoder on training samples neither trained on (the validation "
                        "split, else a held-out --guard-fraction of a first selection "
                        "fine-tune) and keep the better, ties the fine-tune (the result "
                        "records both scores and the sign test's p-value)")
    g.add_argument("--guard-alpha", type=float, default=1.0,
                   help="--lp-guard: keep the probe only when McNemar's exact one-sided test "
                        "of its held-out wins over the fine-tune gives p below this (1: "
                        "whenever the probe scores higher; e.g. 0.05 with hundreds of "
                        "held-out samples)")
    g.add_argument("--guard-fraction", type=float, default=0.2,
                   help="--lp-guard without --val-fraction: the stratified part of the "
                        "training samples held out by its selection fine-tune")
    g.add_argument("--layer-decay", type=float, default=1.0,
                   help="layer-wise lr decay factor (1: off; e.g. 0.8)")
    g.add_argument("--ema-decay", type=float, default=0.0,
                   help="fine-tune: evaluate (and keep) an exponential moving average of the "
                        "weights, updated after every step with this decay, warmed up as "
                        "min(decay, (1 + t) / (10 + t)) at step t (engine.WeightEMA; 0: off, "
                        "the last weights; e.g. 0.99)")
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
    g.add_argument("--rotate-axes", default="xyz", metavar="AXES",
                   help="--rotate about these axes only (a subset of xyz; y is vertical after "
                        "--normalize view; 2D data: always the image plane)")
    g.add_argument("--flip", type=float, default=0.0,
                   help="fine-tune: mirror each clip left-right (x negated, left and right "
                        "joints swapped) with this probability, after --rotate (0: off)")
    g.add_argument("--study-augment", action="store_true",
                   help="the ST-GCN study's augmentation, after --flip: with probability 0.5 two "
                        "of horizontal flip, rotation, translation, scaling "
                        "(feeders.augment.study_augment)")
    g = parser.add_argument_group("fine-tuning variants (METHOD.md section 9; one at a time)")
    g.add_argument("--neck", choices=("none", "tpn"), default="none",
                   help="tpn: a temporal pyramid neck over the GCN encoder's stages "
                        "(models/tpn.py), its auxiliary head's loss weighted 0.5")
    g.add_argument("--branches", type=parse_branches, default=None, metavar="L1,L2,...",
                   help="DTN-style multi-scale branches, e.g. 16,32,48: the clip resampled to "
                        "each length through the encoder, losses 1 (fused) / 0.5 per branch, "
                        "distillation from the fused prediction (evaluation/dtn.py)")
    g.add_argument("--branch-weights", choices=("shared", "separate"), default="shared",
                   help="--branches: one encoder for every branch, or a copy per branch")
    g.add_argument("--mutual-stream", choices=STREAMS, default=None,
                   help="mutual distillation with a second stream of the same encoder, e.g. b "
                        "with --stream j (evaluation/dtn.py); reported: the averaged scores")
    return parser


def recipe_purpose(args) -> str:
    """The recipes.py purpose of a run: linear, finetune or semi (a label fraction)."""
    if args.mode == "linear":
        return "linear"
    return "semi" if args.label_fraction < 1.0 else "finetune"


def check_variants(args) -> None:
    """ValueError naming the flag for a fine-tuning variant that does not fit the run."""
    chosen = [flag for flag, on in (("--neck tpn", args.neck == "tpn"),
                                    ("--branches", args.branches is not None),
                                    ("--mutual-stream", args.mutual_stream is not None)) if on]
    if chosen and args.mode != "finetune":
        raise ValueError(f"{chosen[0]} applies to --mode finetune only")
    if len(chosen) > 1:
        raise ValueError(f"{' and '.join(chosen)}: choose one fine-tuning variant at a time")
    if chosen and args.lp_epochs:
        # LP-FT trains the plain classifier's head: the recipe's is dropped, a given one refused
        if not recipes.undo_recipe_value(args, "lp_epochs", 0, f"{chosen[0]}: the recipe's "
                                         "LP-FT (--lp-epochs) is not applied"):
            raise ValueError(f"--lp-epochs applies to the plain fine-tune, not with {chosen[0]}")
    if args.study_augment and args.mode != "finetune":
        raise ValueError("--study-augment applies to --mode finetune only")
    if args.num_clips < 1:
        raise ValueError(f"--num-clips must be >= 1, got {args.num_clips}")
    if not 0.0 < args.clip_fraction <= 1.0:
        raise ValueError(f"--clip-fraction must be in (0, 1], got {args.clip_fraction}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    scratch = args.pretrained is None or args.pretrained.lower() in ("none", "scratch")
    recipes.apply_defaults(parser, args, argv, recipe_purpose(args), scratch=scratch)
    if scratch and args.lp_epochs:
        # LP-FT starts the fine-tune from a linear probe of the pretrained features; on random
        # weights its guard could keep a probe of random features in place of the model trained
        # from scratch. A given --lp-epochs is kept.
        recipes.undo_recipe_value(args, "lp_epochs", 0, "no pretrained weights: the recipe's "
                                  "LP-FT (--lp-epochs) is not applied")
    lr_flag = "lr" if args.mode == "linear" else "lp_lr"   # the probe's lr given: no grid
    if isinstance(args.defaults, dict) and lr_flag in (args.defaults.get("kept") or ()):
        recipes.undo_recipe_value(args, "probe_lr_grid", None, f"--{lr_flag.replace('_', '-')} "
                                  "given: the recipe's --probe-lr-grid is not applied")
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
    if not args.rotate_axes or set(args.rotate_axes) - set("xyz") \
            or len(set(args.rotate_axes)) != len(args.rotate_axes):
        raise ValueError(f"--rotate-axes must be distinct letters of xyz, got {args.rotate_axes!r}")
    if not 0.0 <= args.flip <= 1.0:
        raise ValueError(f"--flip must be a probability in [0, 1], got {args.flip}")
    if args.min_crop is not None and args.min_crop < 1:
        raise ValueError(f"--min-crop must be >= 1 frame, got {args.min_crop}")
    if args.probe_lr_folds < 1:
        raise ValueError(f"--probe-lr-folds must be >= 1, got {args.probe_lr_folds}")
    if args.probe_lr_grid is not None and min(args.probe_lr_grid) <= 0:
        raise ValueError(f"--probe-lr-grid values must be > 0, got {args.probe_lr_grid}")
    if not 0.0 < args.guard_alpha <= 1.0:
        raise ValueError(f"--guard-alpha must be in (0, 1], got {args.guard_alpha}")
    if not 0.0 < args.guard_fraction < 1.0:
        raise ValueError(f"--guard-fraction must be in (0, 1), got {args.guard_fraction}")
    if not 0.0 <= args.ema_decay < 1.0:
        raise ValueError(f"--ema-decay must be in [0, 1) (0: off), got {args.ema_decay}")
    if args.lp_epochs < 0:
        raise ValueError(f"--lp-epochs must be >= 0, got {args.lp_epochs}")
    check_variants(args)
    return args


def main(argv=None) -> dict | None:
    """The linear probe or fine-tune with the flags `argv` (library use: this process's
    settings are left alone)."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> dict | None:
    """With parsed flags: claim --output, then ``evaluation.recognition.evaluate``."""
    engine.apply_lr_scaling(args)
    if args.print_config:
        return recipes.print_config(args)
    info = engine.init_distributed()
    store, ckpt, cfg = setup_eval_run(args, ("stream",) if args.mode == "finetune" else ())
    tag = result_tag(args.mode, args.label_fraction)
    with engine.claim_run_dir(args.output, tag, info):
        return evaluate(args, store, ckpt, cfg, info, tag,
                        default_of=build_parser().get_default)


if __name__ == "__main__":
    engine.run_program(parse_args, run, "action_recognition.py")

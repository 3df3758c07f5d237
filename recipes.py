"""Recipes: the per-dataset pretraining and evaluation defaults, in one table.

Every entry point takes ``--defaults NAME | auto | none`` (default ``auto``):

- ``auto``: the recipe of the dataset ``--data`` holds, identified from its manifest (its
  ``source_format``, a ``benchmark`` or ``name`` field) and its directory name (``identify``); a
  dataset the table does not know gets a recipe chosen from its manifest (``choose``: number of
  training sequences, 2D or 3D, sequence lengths, camera views).
- ``NAME``: that recipe of ``RECIPES`` whatever the data (``small`` and ``paper`` are the two
  generic ones).
- ``none``: the entry point's own flag defaults, nothing else.

A recipe only fills flags that were not given on the command line: flags given explicitly always
win (``explicit_flags`` parses the command line again with every default suppressed). The
recipe applied is printed and stored in the run's config as ``defaults`` (``requested``,
``name``, ``reason``, ``set``: the values it set, ``kept``: recipe flags given explicitly).

Where they help only: ``--normalize view`` (turn skeletons to face the camera) and ``--rotate``
(random rotations: up to 60 degrees about each axis in pretraining and the semi-supervised
fine-tune, up to 90 about the vertical axis in the full fine-tune) belong to cross-view 3D data, decided from the data
(``DataFacts.cross_view``: 3D coordinates and several camera views in the training split or
an ``xview_*`` split), never from the dataset's name; a single-view or 2D dataset gets neither.

The measurements behind the numbers are in docs/experiments.md. This module imports neither
torch nor the models, so ``python -m recipes resolve RUN_NAME`` (the scripts' run-name
parser) answers quickly.

    python -m recipes resolve ucla_xv_j_dste --data-root data   # shell assignments RUN_*
    python -m recipes show data/mine [--split xsub_train] [--purpose finetune]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------- the table
# Pretraining. The paper (METHOD.md): batch 356, Adam 5e-4, 451 epochs, x0.1 at 351; PKU-MMD II
# batch 512, 1201 epochs, x0.1 at 801. Small sets (NW-UCLA 1020 training clips, Penn Action):
# sized to pretrain in 40-45 minutes on 2 CPU cores, the small DSTE, 32-frame clips, batch 64,
# Adam 1e-3 for 120 epochs (1800 steps on NW-UCLA), x0.1 at epoch 100.
PAPER = {"preset": "paper", "batch_size": 356, "lr": 5e-4, "epochs": 451, "milestones": [351]}
PKU2 = {**PAPER, "batch_size": 512, "epochs": 1201, "milestones": [801]}
SMALL = {"preset": "small", "clip_len": 32, "batch_size": 64, "lr": 1e-3, "epochs": 120,
         "milestones": [100]}
SMALL_STEPS = 1800      # optimisation steps of the small-set pretraining (NW-UCLA: 15 x 120)
SMALL_BATCH = 64
LARGE_SET = 10_000      # training sequences from which a dataset gets the paper's recipe
CROSS_VIEW = {"normalize": "view", "rotate": 60.0}   # pretraining, cross-view 3D data only
SINGLE_VIEW = {"normalize": "first_frame", "rotate": 0.0}

# Evaluation. Linear probe lr (METHOD.md section 5): 0.006 NTU-60 xsub and NTU-120, 0.03 NTU-60
# xview, 0.01 PKU-MMD II; small sets lr 1.0 at batch 64 (batch 512 gives two steps an epoch).
# Fine-tuning of small sets: AdamW 1e-3, 2 warmup epochs, shear 1.0 (on cross-view 3D data a
# rotation: 90 degrees about the vertical axis, the semi-supervised one 60 about each), 50 epochs of batch 64 (semi: 40 of batch 16), after a linear probe of the head
# (lp_epochs, LP-FT: the fine-tune starts where the linear probe ends). Both probes train on
# standardised features (standardize) with the lr of PROBE_LR_GRID that scores best on held-out
# fifths of the training split (probe_lr_grid): with a fixed lr 1.0 on raw features UTKinect's
# clips gave 85.9-88.9 %, below their floor of 90.9 (README). NTU-sized sets use
# action_recognition.py's own defaults.
PROBE_LR_GRID = [0.03, 0.1, 0.3, 1.0]
SMALL_LINEAR = {"lr": 1.0, "batch_size": SMALL_BATCH, "standardize": True,
                "probe_lr_grid": PROBE_LR_GRID}
SMALL_FINETUNE = {"epochs": 50, "lr": 1e-3, "warmup_epochs": 2.0, "batch_size": SMALL_BATCH,
                  "shear": 1.0, "lp_epochs": 160, "lp_lr": 1.0, "standardize": True,
                  "probe_lr_grid": PROBE_LR_GRID}
SMALL_SEMI = {**SMALL_FINETUNE, "epochs": 40, "batch_size": 16}
# The fine-tune of cross-view 3D data starts from a random head, the probe trained for LP-FT's
# guard only (head_init): on NW-UCLA view 1 -> view 2 (benchmarks/nwucla_select.py, no guard)
# starting from the probe gave joint 76.4 %, bone 66.3, fused 76.6; a random head joint 77.6,
# bone 74.6, fused 80.6 (docs/experiments.md). The semi-supervised fine-tune too (10 % of view 1,
# ten seeds, with the guard: mean +1.0 point on view 2, 7 seeds up, 2 down, 1 equal). Single-view
# and 2D sets keep LP-FT (UTKinect's fine-tune gained from it).
CROSS_VIEW_HEAD_INIT = "random"
# The full fine-tune of cross-view 3D data turns clips about the vertical axis only, by up to
# 90 degrees (after --normalize view has turned them to face the camera): on NW-UCLA view 1 ->
# view 2 (seeds 0-2, no guard) joint + bone fused 82.9 / 81.5 / 82.1 %, mean 82.2, against
# 80.2 / 82.3 / 80.8, mean 81.1, for 60 degrees about every axis; 60 about y 81.8, 180 about y
# 80.7, 60 about x and z 80.2 (docs/experiments.md). The gain is the bone stream's (+0.9).
CROSS_VIEW_FINETUNE_ROTATION = {"rotate": 90.0, "rotate_axes": "y"}
ENCODER_KEYS = ("preset", "clip_len", "normalize")   # a checkpoint has its own
PURPOSES = ("pretrain", "linear", "finetune", "semi", "knn", "detect", "detect_tcn",
            "detect_finetune")


@dataclass(frozen=True)
class Known:
    """A dataset the table knows: its recipe kind, the manifest signature that identifies it
    (layout, number of classes), its protocols and the command that prepares it."""
    kind: str                 # "paper", "pku2", "small" or "demo"
    layout: str
    num_classes: int
    protocols: tuple[str, ...]
    prepare: str              # the `python -m` arguments that create it; {out}: its directory
    linear_lr: dict           # protocol -> linear probe lr (paper kinds; "*": any other)
    pretrain: dict | None = None   # pretraining values that differ from its kind's


KNOWN: dict[str, Known] = {
    "ntu60": Known("paper", "ntu25", 60, ("xs", "xv"),
                   "feeders.prepare --format ntu --benchmark ntu60 --src "
                   "/path/to/nturgb+d_skeletons --out {out} --workers 8",
                   {"xv": 0.03, "*": 0.006}),
    "ntu120": Known("paper", "ntu25", 120, ("xs", "xe"),
                    "feeders.prepare --format ntu --benchmark ntu120 --src "
                    "/path/to/nturgb+d_skeletons_120 --out {out} --workers 8",
                    {"*": 0.006}),
    "pku1": Known("paper", "ntu25", 51, ("xs", "xv"),
                  "feeders.prepare --format pku --src /path/to/PKU-MMD-phase1 --out {out} "
                  "--workers 8",
                  {"*": 0.006}),
    "pku2": Known("pku2", "ntu25", 51, ("xs", "xv"),
                  "feeders.prepare --format pku --src /path/to/PKU-MMD-phase2 --out {out} "
                  "--workers 8",
                  {"*": 0.01}),
    "kinetics": Known("paper", "openpose18", 400, ("tv",),
                      "feeders.prepare --format kinetics --src /path/to/kinetics-skeleton "
                      "--out {out} --workers 8",
                      {"*": 0.006}),
    "ucla": Known("small", "kinect20", 10, ("xv",),
                  "feeders.prepare --format nwucla --src /path/to/NW-UCLA/all_sqe "
                  "--out {out}", {}),
    "penn": Known("small", "penn13", 15, ("tv",),
                  "feeders.prepare --format penn --src /path/to/Penn_Action --out {out}", {}),
    "demo": Known("demo", "ntu25", 12, ("xs",), "feeders.synthetic --out {out}", {}),
    # Untrimmed streams for detection (action_detection.py; class 0 is the background).
    # UTKinect-Action3D: 10 training streams (about 7.6k frames), one frontal Kinect: the
    # small-set recipe (no view normalisation or rotation, from the data) at 100 epochs of its
    # 480 windows (750 steps, about 45 minutes on 2 CPU cores). 20 epochs (150 steps) gave the
    # frozen linear head 48.3 % mAP_a@0.5, 100 gave 50.1 (benchmarks/detection.sh, README).
    "utk": Known("small", "kinect20", 11, ("xs",),
                 "feeders.prepare --format utkinect --src /path/to/UTKinect/joints --out {out}",
                 {}, {"epochs": 100, "milestones": [80]}),
    "demodet": Known("demo", "ntu25", 11, ("xs",), "feeders.synthetic --untrimmed --out {out}",
                     {}),
    "pku1det": Known("paper", "ntu25", 52, ("xs", "xv"),
                     "feeders.prepare --format pku --task detection --src "
                     "/path/to/PKU-MMD-phase1 --out {out} --workers 8", {"*": 0.006}),
    "pku2det": Known("pku2", "ntu25", 52, ("xs", "xv"),
                     "feeders.prepare --format pku --task detection --src "
                     "/path/to/PKU-MMD-phase2 --out {out} --workers 8", {"*": 0.01}),
}
# A manifest's source_format -> the dataset it is, when the format alone says it.
FORMAT_DATASETS = {"nwucla": "ucla", "penn": "penn", "kinetics": "kinetics", "utkinect": "utk"}
RECIPES = (*KNOWN, "small", "paper")   # names accepted by --defaults NAME


class RecipeError(ValueError):
    """A recipe or a run name that cannot be resolved; the message says what to do."""


# ----------------------------------------------------------------------------- the data
@dataclass(frozen=True)
class DataFacts:
    """What a recipe is chosen from: the dataset directory, its manifest and its training split."""
    directory: str            # the dataset directory's name
    split: str                # the training split the facts are of
    source_format: str
    declared: str | None      # a manifest "benchmark" or "name" field
    layout: str
    num_classes: int
    dims: int                 # coordinate dimensions (2: pose estimators, 3: depth cameras)
    num_train: int            # sequences in the training split
    median_length: float      # median frames per training sequence
    views: int                # distinct camera view ids in the training split (0: none recorded)
    splits: tuple[str, ...]

    @property
    def cross_view(self) -> bool:
        """3D coordinates seen from several cameras: where --normalize view and --rotate help."""
        return self.dims == 3 and (self.views >= 2 or any(s.startswith("xview_")
                                                          for s in self.splits))


def facts_of(data, split: str) -> DataFacts:
    """DataFacts of the dataset directory ``data`` for the training split ``split``."""
    from feeders.store import open_store   # numpy only
    store = open_store(data)
    if split not in store.splits:   # the wording of engine.require_split
        raise RecipeError(f"--split {split!r}: dataset {store.root} has no such split; "
                          f"available splits: {', '.join(sorted(store.splits)) or 'none'}")
    train = store.split_indices(split)
    views = np.unique(store.views[train])
    manifest = store.manifest
    return DataFacts(directory=Path(data).resolve().name, split=split,
                     source_format=str(manifest.get("source_format", "unknown")),
                     declared=manifest.get("benchmark") or manifest.get("name"),
                     layout=store.layout.name, num_classes=store.num_classes,
                     dims=store.layout.dims, num_train=int(train.size),
                     median_length=float(np.median(store.lengths[train])) if train.size else 0.0,
                     views=int((views >= 0).sum()), splits=tuple(sorted(store.splits)))


def identify(facts: DataFacts) -> tuple[str | None, str]:
    """(known dataset name or None, why). From the manifest first: its ``benchmark``/``name``
    field, then its source format (NTU by class count, PKU-MMD by directory name); then the
    directory name when the manifest agrees with it (layout and class count). A directory named
    like a known dataset whose manifest disagrees is not taken for it (the reason says so).
    Windows cut from untrimmed streams (feeders.untrimmed, source format ``<format>-windows``,
    directory ``<dataset>_windows``) are taken for their dataset."""
    if facts.source_format.endswith("-windows") and facts.directory.endswith("_windows"):
        facts = replace(facts, directory=facts.directory[: -len("_windows")],
                        source_format=facts.source_format[: -len("-windows")])
    if facts.declared in KNOWN:
        return facts.declared, f"manifest names it {facts.declared}"
    fmt = facts.source_format
    if fmt in FORMAT_DATASETS:
        return FORMAT_DATASETS[fmt], f"source_format {fmt}"
    if fmt == "ntu" and facts.num_classes in (60, 120):
        name = f"ntu{facts.num_classes}"
        return name, f"source_format ntu, {facts.num_classes} classes"
    if fmt == "pku" and facts.directory not in ("pku1", "pku2", "pku1det", "pku2det"):
        return None, (f"PKU-MMD data in '{facts.directory}': the phase is not recorded (name the "
                      f"directory pku1 or pku2, or pass --defaults pku1|pku2)")
    if fmt == "synthetic" and facts.directory != "demo":
        return None, "a synthetic set under a name of its own"
    known = KNOWN.get(facts.directory)
    if known is None:
        return None, f"'{facts.directory}' is not a dataset the table knows"
    if (known.layout, known.num_classes) != (facts.layout, facts.num_classes):
        return None, (f"directory '{facts.directory}' is named like a known dataset, but its "
                      f"manifest ({facts.layout}, {facts.num_classes} classes) is not "
                      f"{facts.directory}'s ({known.layout}, {known.num_classes} classes)")
    return facts.directory, f"directory {facts.directory}, manifest agrees"


def small_batch(num_train: int) -> int:
    """Batch of the small-set recipe: 64, or for fewer than 256 training sequences the largest
    power of two that gives at least 4 steps an epoch (at least 2)."""
    batch = SMALL_BATCH
    while batch > 2 and num_train // batch < 4:
        batch //= 2
    return batch


def choose(facts: DataFacts) -> tuple[str, dict, str]:
    """(kind, pretraining values, why) for a dataset the table does not know, from its manifest:
    the paper's recipe from LARGE_SET training sequences on; otherwise the small-set recipe with
    the batch sized to the set (``small_batch``), as many epochs as give SMALL_STEPS steps
    (x0.1 at 5/6 of them) and 16-frame clips when the median sequence is under 24 frames."""
    if facts.num_train >= LARGE_SET:
        return "paper", dict(PAPER), f"{facts.num_train} training sequences (>= {LARGE_SET})"
    batch = small_batch(facts.num_train)
    steps = max(1, facts.num_train // batch)
    epochs = max(1, round(SMALL_STEPS / steps))
    values = {**SMALL, "batch_size": batch, "epochs": epochs,
              "milestones": [max(1, round(epochs * 5 / 6))],
              "clip_len": 16 if facts.median_length < 24 else 32}
    return "small", values, (f"{facts.num_train} training sequences, median length "
                             f"{facts.median_length:g}, {facts.dims}D, {facts.views} view(s)")


def view_values(facts: DataFacts) -> dict:
    """--normalize / --rotate of a small-set pretraining: CROSS_VIEW on cross-view 3D data."""
    return dict(CROSS_VIEW if facts.cross_view else SINGLE_VIEW)


def pretrain_values(kind: str, facts: DataFacts) -> dict:
    """Pretraining flag values of a recipe kind (``facts`` size the small-set batch and decide
    the view handling)."""
    if kind == "paper":
        return dict(PAPER)
    if kind == "pku2":
        return dict(PKU2)
    if kind == "auto-small":
        return {**choose(facts)[1], **view_values(facts)}
    values = {**SMALL, "batch_size": small_batch(facts.num_train), **view_values(facts)}
    if kind == "demo":  # the README's first command, 2-10 minutes on 2 CPU cores; its
        # numbers were measured without view normalisation or rotation: kept so. Threads 0
        # (one per core): on an AVX2-only EPYC 2 threads ran the demo in 10 min 4 s against
        # 22 min 38 s with 1; no loader worker (--workers' CPU default): 1.3x faster
        # (docs/experiments.md)
        values.update(epochs=10, milestones=[8], threads=0, **SINGLE_VIEW)
    return values


def eval_values(kind: str, known: Known | None, facts: DataFacts, purpose: str) -> dict:
    """Evaluation flag values (linear, finetune, semi, detect: the frozen detection probe; knn,
    detect_tcn (the frozen temporal head: its own defaults) and detect_finetune have none of
    their own)."""
    small = kind in ("small", "demo", "auto-small")
    protocol = protocol_of_split(facts.split)
    if purpose == "detect":   # batches of windows, not of streams: the probe's lr only
        return {"lr": SMALL_LINEAR["lr"]} if small else {}
    if purpose == "linear":
        if small:
            return {**SMALL_LINEAR, "batch_size": small_batch(facts.num_train)}
        table = known.linear_lr if known is not None else {}
        lr = table.get(protocol, table.get("*"))
        return {} if lr is None else {"lr": lr}
    if purpose in ("finetune", "semi") and small:
        values = dict(SMALL_SEMI if purpose == "semi" else SMALL_FINETUNE)
        if purpose == "finetune":
            values["batch_size"] = small_batch(facts.num_train)
        values["rotate"] = CROSS_VIEW["rotate"] if facts.cross_view else 0.0
        if facts.cross_view:
            values["head_init"] = CROSS_VIEW_HEAD_INIT
            if purpose == "finetune":
                values.update(CROSS_VIEW_FINETUNE_ROTATION)
        return values
    return {}


def protocol_of_split(split: str) -> str | None:
    """``xsub_train`` -> xs, ``xview_train`` -> xv, ``xset_train`` -> xe, ``train`` -> tv,
    ``<p>_train`` -> p (None for other names and for p holding ``_``)."""
    if split == "train":
        return "tv"
    if not split.endswith("_train"):
        return None
    stem = split[: -len("_train")]
    return {"xsub": "xs", "xview": "xv", "xset": "xe"}.get(stem, None if "_" in stem else stem)


@dataclass(frozen=True)
class Resolved:
    """A recipe resolved for one run: its name, why, and the flag values it holds."""
    requested: str
    name: str
    reason: str
    values: dict


def resolve(requested: str, data, split: str, purpose: str) -> Resolved:
    """The recipe ``requested`` (``auto``, ``none`` or a name of RECIPES) for a run on the
    dataset directory ``data`` and its training split ``split``, for ``purpose`` (PURPOSES)."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    if requested == "none":
        return Resolved("none", "none", "--defaults none: the entry point's own defaults", {})
    if requested != "auto" and requested not in RECIPES:
        raise RecipeError(f"--defaults: unknown recipe {requested!r}; expected auto, none or "
                          f"one of {', '.join(RECIPES)}")
    facts = facts_of(data, split)
    if requested == "auto":
        name, reason = identify(facts)
    else:
        name, reason = requested, "--defaults " + requested
    if name is None:
        chosen, _, why = choose(facts)
        name, kind = f"auto-{chosen}", ("paper" if chosen == "paper" else "auto-small")
        reason = f"{reason}; chosen from its manifest: {why}"
    else:
        kind = KNOWN[name].kind if name in KNOWN else name   # "small" or "paper"
    known = KNOWN.get(name)
    if kind in ("small", "auto-small", "demo"):
        reason += "; cross-view 3D: --normalize view, --rotate" if facts.cross_view else \
            f"; {'2D' if facts.dims == 2 else 'single view'}: no view normalisation or rotation"
    if kind == "demo" and purpose == "pretrain":
        reason += " (the demo's pretraining: neither, as measured for the README)"
    if purpose == "pretrain":
        values = {**pretrain_values(kind, facts), **((known and known.pretrain) or {})}
    else:
        values = eval_values(kind, known, facts, purpose)
    return Resolved(requested, name, reason, values)


# ----------------------------------------------------------------------------- applying
def explicit_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the flags given on the command line ``argv`` (None: sys.argv[1:]):
    ``argv`` parsed again by a copy of ``parser`` whose defaults are all suppressed."""
    quiet = copy.deepcopy(parser)
    quiet._defaults.clear()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(argv)))


def apply_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   argv: list[str] | None, purpose: str, scratch: bool = False) -> Resolved:
    """Fill ``args`` from the recipe ``args.defaults`` for ``purpose``, leaving every flag given
    on the command line alone. Evaluation runs take the encoder flags (ENCODER_KEYS) from their
    checkpoint, so the recipe's are only used with ``scratch`` (no checkpoint): those of its
    pretraining. Sets ``args.defaults`` to the record stored in the run's config, prints it
    (process 0 only) and returns the Resolved recipe. A dataset that cannot be read or a bad
    recipe name raise ValueError (engine.run_cli makes it a one-line error)."""
    recipe = resolve(args.defaults, args.data, args.split, purpose)
    values = dict(recipe.values)
    if scratch and purpose != "pretrain" and args.defaults != "none":
        pre = resolve(args.defaults, args.data, args.split, "pretrain").values
        values.update({k: pre[k] for k in ENCODER_KEYS if k in pre})
    given = explicit_flags(parser, argv)
    applied = {k: v for k, v in values.items() if k not in given}
    for key, value in applied.items():
        setattr(args, key, value)
    args.defaults = {"requested": recipe.requested, "name": recipe.name,
                     "reason": recipe.reason, "set": applied,
                     "kept": sorted(k for k in values if k in given)}
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"[defaults] {describe(args.defaults)}", flush=True)
    return recipe


def undo_recipe_value(args: argparse.Namespace, key: str, value, why: str) -> bool:
    """Take back a value that apply_defaults set: ``args.<key> = value``, the entry removed
    from the run's ``defaults["set"]`` record, ``why`` printed as a [defaults] line. False
    (nothing done) when the recipe did not set ``key`` (e.g. it came from the command line)."""
    applied = args.defaults.get("set", {}) if isinstance(args.defaults, dict) else {}
    if key not in applied:
        return False
    applied.pop(key)
    setattr(args, key, value)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"[defaults] {why}", flush=True)
    return True


def as_flags(values: dict) -> list[str]:
    """Recipe values as command-line flags: {"clip_len": 32, "milestones": [100],
    "standardize": True} -> ["--clip-len", "32", "--milestones", "100", "--standardize"]
    (False: ``--no-standardize``)."""
    out = []
    for key, value in values.items():
        if isinstance(value, bool):
            out.append(("--" if value else "--no-") + key.replace("_", "-"))
            continue
        out.append("--" + key.replace("_", "-"))
        out.extend(str(v) for v in (value if isinstance(value, list) else [value]))
    return out


def describe(record: dict) -> str:
    """One line: the recipe's name, why, the flags it set and those the command line kept."""
    text = f"{record['name']} ({record['reason']})"
    if record["set"]:
        text += ": " + " ".join(as_flags(record["set"]))
    if record["kept"]:
        text += "; given on the command line: " + ", ".join(
            "--" + k.replace("_", "-") for k in record["kept"])
    return text


def add_defaults_arg(parser) -> None:
    """--defaults and --print-config, on a parser or an argument group."""
    parser.add_argument("--defaults", default="auto", metavar="NAME|auto|none",
                        help="recipe of per-dataset defaults (recipes.py): auto (the dataset's "
                             "own, identified from its manifest, or one chosen from it), none "
                             f"(this script's defaults) or one of {', '.join(RECIPES)}; flags "
                             "given on the command line always win")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved flags (the recipe applied) as JSON and exit")


def print_config(args: argparse.Namespace) -> None:
    """--print-config: the resolved flags as sorted JSON on stdout."""
    print(json.dumps(vars(args), indent=1, sort_keys=True, default=str))


# ----------------------------------------------------------------------------- run names
def protocols(data) -> dict[str, tuple[str, str]]:
    """protocol -> (training split, evaluation split) of a prepared dataset, from its manifest's
    split names: pairs ``<stem>_train``/``<stem>_val`` and ``train``/``val``."""
    manifest = json.loads((Path(data) / "manifest.json").read_text())
    splits = set(manifest.get("splits", {}))
    out = {}
    for split in sorted(splits):
        protocol = protocol_of_split(split)
        eval_split = "val" if split == "train" else split[: -len("train")] + "val"
        if protocol is not None and eval_split in splits:
            out[protocol] = (split, eval_split)
    return out


SPLIT_OF = {"xs": "xsub", "xv": "xview", "xe": "xset"}


def resolve_run_name(name: str, data_root: str) -> dict:
    """The dataset and protocol parts of a run name ``<dataset>_<protocol>_<stream>_<backbone>``
    -> {RUN_DATASET, RUN_PROTOCOL, RUN_DATA, RUN_SPLIT, RUN_EVAL_SPLIT, RUN_PREPARE}. The dataset
    is any directory under ``data_root`` holding a manifest.json (a known dataset not prepared
    yet is accepted with its protocols, RUN_PREPARE telling how to make it); the protocols are
    those of its split names. RecipeError (one line) otherwise."""
    parts = name.split("_")
    if len(parts) != 4 or not all(parts):
        raise RecipeError("expected 4 parts separated by _")
    dataset, protocol = parts[:2]
    data = Path(data_root) / dataset
    prepare = KNOWN[dataset].prepare.format(out=data) if dataset in KNOWN else ""
    if (data / "manifest.json").is_file():
        available = protocols(data)
        if protocol not in available:
            raise RecipeError(f"dataset {dataset} has no protocol '{protocol}'; its protocols: "
                              f"{' '.join(sorted(available)) or 'none'} (from the split names "
                              f"in {data / 'manifest.json'})")
        split, eval_split = available[protocol]
    elif dataset in KNOWN:
        if protocol not in KNOWN[dataset].protocols:
            raise RecipeError(f"dataset {dataset} has no protocol '{protocol}'; its protocols: "
                              f"{' '.join(KNOWN[dataset].protocols)}")
        stem = SPLIT_OF.get(protocol, None if protocol == "tv" else protocol)
        split, eval_split = (f"{stem}_train", f"{stem}_val") if stem else ("train", "val")
    else:
        present = sorted(p.parent.name for p in Path(data_root).glob("*/manifest.json")
                         if "_" not in p.parent.name)
        raise RecipeError(f"unknown dataset '{dataset}': no {data / 'manifest.json'} (prepared "
                          f"datasets under {data_root}: {' '.join(present) or 'none'}; known: "
                          f"{' '.join(KNOWN)})")
    return {"RUN_DATASET": dataset, "RUN_PROTOCOL": protocol, "RUN_DATA": str(data),
            "RUN_SPLIT": split, "RUN_EVAL_SPLIT": eval_split, "RUN_PREPARE": prepare}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recipes",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, help="resolve or show")
    p = sub.add_parser("resolve", help="a run name's dataset and protocol as shell assignments")
    p.add_argument("run_name")
    p.add_argument("--data-root", default=os.environ.get("SKEL_DATA", "data"))
    p = sub.add_parser("show", help="the recipe --defaults gives a dataset")
    p.add_argument("data", help="dataset directory")
    p.add_argument("--split", default="xsub_train")
    p.add_argument("--defaults", default="auto")
    p.add_argument("--purpose", choices=PURPOSES, default="pretrain")
    args = parser.parse_args(argv)
    try:
        if args.command == "resolve":
            for key, value in resolve_run_name(args.run_name, args.data_root).items():
                print(f"{key}={shlex.quote(value)}")
            return
        recipe = resolve(args.defaults, args.data, args.split, args.purpose)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"{recipe.name} ({recipe.reason})")
    print(" ".join(as_flags(recipe.values)))


if __name__ == "__main__":
    main()

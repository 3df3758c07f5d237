"""The command line shared by the training and evaluation entry points: the common flags
(`add_common_args`, `finish_common_args`), split checks, the linear-scaling rule, and
`run_cli` / `run_program`, which run an entry point as a command (one-line
`prog: error: ...` with exit status 2 for bad flags and environments)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import torch

import recipes
from engine.distributed import leave_process_group
from engine.loop import NonFiniteLoss
from engine.precision import PRECISIONS
from engine.process import apply_process_settings
from feeders.dataset import NORMALIZATIONS
from feeders.streams import STREAMS
from models import list_encoders, list_presets


def eval_split_for(split: str) -> str:
    """The evaluation split paired with a training split: `xsub_train` -> `xsub_val`,
    `train` -> `val`; any other name is returned unchanged."""
    if split == "train":
        return "val"
    if split.endswith("_train"):
        return split[: -len("_train")] + "_val"
    return split


def default_workers(cuda: bool) -> int:
    """--workers' default: min(4, CPU cores - 1) with CUDA; 0 on the CPU, where the step
    already uses every core and a sample loads in about 0.1 ms against 12-45 ms of training
    step per sample (DSTE small, 2 cores): a worker only takes a core from the step
    (docs/experiments.md, 2026-12-04: the demo's pretraining 1.3x faster without one)."""
    return min(4, max(0, (os.cpu_count() or 1) - 1)) if cuda else 0


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags shared by pretrain.py, action_recognition.py and action_retrieval.py."""
    g = parser.add_argument_group("common")
    g.add_argument("--data", type=Path, required=True, help="dataset directory (feeders.store)")
    g.add_argument("--split", default="xsub_train", help="training split")
    g.add_argument("--eval-split", default=None,
                   help="evaluation split; None: --split with _train -> _val")
    g.add_argument("--stream", choices=STREAMS, default="j", help="input stream")
    g.add_argument("--backbone", choices=list_encoders(), default="dste",
                   help="encoder architecture (the registry, models/registry.py)")
    g.add_argument("--preset", choices=list_presets(), default="paper", help="encoder size")
    g.add_argument("--clip-len", type=int, default=64, help="frames per clip (L)")
    g.add_argument("--spatial-channels", type=int, default=None,
                   help="coordinate channels; default: the layout's dims (3 for Kinect layouts, 2 for "
                        "2D pose layouts, whose third channel is a confidence score)")
    g.add_argument("--normalize", choices=NORMALIZATIONS, default="first_frame",
                   help="coordinates: first_frame (subtract body 1's centre joint at its first "
                        "frame), view (also turn 3D skeletons about the vertical axis to face the "
                        "camera: for cross-view benchmarks), none")
    g.add_argument("--epochs", type=int, default=451, help="training epochs")
    g.add_argument("--batch-size", type=int, default=356,
                   help="global batch size, split evenly over the processes")
    g.add_argument("--lr", type=float, default=5e-4, help="base learning rate")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: on CUDA bf16 where the GPU supports it, else fp16 + GradScaler; on "
                        "the CPU pretraining times a few of its steps in fp32 and bf16 and keeps "
                        "the faster (cached per CPU model, torch version and model in "
                        "~/.cache/skelssl/precision.json), evaluations take their checkpoint's; a "
                        "resumed run keeps its precision")
    g.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers per process; None: 0 on the CPU, where the step "
                        "uses every core, and min(4, CPU cores - 1) with CUDA (here "
                        f"{default_workers(True)})")
    g.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per process (0: torch's default, one per core). On a "
                        "CPU shared with other jobs, or for tiny/small presets, 1 can be several "
                        "times faster: every parallel region waits for its slowest thread")
    g.add_argument("--seed", type=int, default=0,
                   help="run seed: every random draw derives from it")
    g.add_argument("--output", type=Path, required=True, help="run directory (checkpoints, tb)")
    g.add_argument("--resume", default="auto",
                   help="auto (resume from <output>/last.pt when it exists) | never | PATH")
    g.add_argument("--resume-changed", action="store_true",
                   help="resume even though flags differ from the checkpoint's run (other than "
                        "--epochs, worker / thread counts, logging and evaluation intervals): "
                        "the new values take effect from the resumed epoch and are recorded "
                        "in config.json and the checkpoints; without it such a rerun is refused")
    recipes.add_defaults_arg(g)
    return parser


def finish_common_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill derived defaults and check values; raises ValueError naming the flag. Changes
    nothing outside ``args``: --threads takes effect in ``run_program`` (engine.process)."""
    if args.eval_split is None:
        args.eval_split = eval_split_for(args.split)
    for flag in ("epochs", "batch_size", "clip_len"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.workers is None:
        args.workers = default_workers(torch.cuda.is_available())
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    return args


def check_nonnegative(args: argparse.Namespace, *flags: str) -> None:
    """ValueError naming the first of `flags` (attribute names) whose value is negative."""
    for flag in flags:
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")


def require_split(store, split: str, flag: str) -> None:
    """ValueError naming the flag and the available splits when `store` has no `split`."""
    if split not in store.splits:
        raise ValueError(f"{flag} {split!r}: dataset {store.root} has no such split; available "
                         f"splits: {', '.join(sorted(store.splits)) or 'none'}")


def require_distinct_splits(train_split: str, test_split: str) -> None:
    """An evaluation must not test on the split it trains on (or builds its gallery from)."""
    if train_split == test_split:
        raise ValueError(f"--eval-split {test_split!r} is the training split (--split): an "
                         "evaluation on the samples it was trained on says nothing; pass "
                         "--eval-split with the test split")


def run_cli(main: Callable, prog: str) -> None:
    """Run an entry point's `main()` as a command. A bad flag, bad input or an environment
    problem (ValueError; OSError: a missing file, a read-only directory, a full disk) ends
    as one line `prog: error: ...` on stderr with exit status 2, like argparse's
    parser.error, never a traceback; a non-finite loss (the run itself failed) exits 1."""
    try:
        main()
    except NonFiniteLoss as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, OSError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)



def add_lr_scaling_arg(parser: argparse.ArgumentParser, paper_base: str) -> None:
    """``--lr-scale-base B``: the linear-scaling rule (Goyal et al. 2017, "Accurate, Large
    Minibatch SGD"): --lr is the rate at global batch B, the run uses lr * batch / B.
    ``paper_base`` names the reference batch of the entry point's paper schedule (help text)."""
    parser.add_argument("--lr-scale-base", type=int, default=None, metavar="B",
                        help="linear-scaling rule (Goyal et al. 2017): --lr is the rate at a "
                             f"global batch of B and the run uses lr * batch-size / B ({paper_base}; "
                             "MS-G3D's convention is 256); None: --lr as given")


def scaled_lr(lr: float, global_batch: int, base_batch: int | None) -> float:
    """Linear-scaling rule: ``lr * global_batch / base_batch``; ``lr`` when base_batch is None."""
    if base_batch is None:
        return lr
    if base_batch < 1:
        raise ValueError(f"--lr-scale-base must be >= 1, got {base_batch}")
    return lr * global_batch / base_batch


def apply_lr_scaling(args: argparse.Namespace) -> float:
    """Set ``args.lr_used`` from --lr, --batch-size and --lr-scale-base (recorded in the run
    config with the other flags) and return it."""
    args.lr_used = scaled_lr(args.lr, args.batch_size, args.lr_scale_base)
    return args.lr_used


def run_program(parse_args: Callable[[], argparse.Namespace], run: Callable, prog: str) -> None:
    """Run a training or evaluation entry point as a program: ``args = parse_args()`` (the
    process's command line), the process-wide settings of its flags
    (``engine.process.apply_process_settings``: --threads, glibc malloc), then ``run(args)``,
    then ``leave_process_group()`` (a torchrun rank's group destroyed before exit); errors as
    ``run_cli``. An entry point's ``main(argv)`` is ``run(parse_args(argv))`` without
    the process settings, for library use."""
    def program():
        args = parse_args()
        apply_process_settings(args)
        result = run(args)
        leave_process_group()   # a torchrun rank leaves its group before exiting
        return result
    run_cli(program, prog)

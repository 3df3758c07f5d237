"""Training engine shared by pretraining and fine-tuning (docs/design.md, "engine").

- distributed setup from the `torchrun` environment (gloo on CPU, NCCL on CUDA),
- precision (`auto`: on CPU the faster of fp32 and bf16 in a timed trial of the run's step,
  cached per CPU model; on CUDA bf16 where supported, else fp16 autocast + GradScaler; TF32),
- batch statistics and gradient-preserving gathers across processes,
- learning-rate schedules (step, cosine, linear warmup, linear-scaling rule),
- atomic checkpoints and run metadata,
- run directories: claimed (never a folder the suite did not write), locked (one writer per
  job), cleaned of killed writers' temporary files,
- honest resume (changed flags refused, or applied and recorded with --resume-changed),
- `run_cli`: one-line `prog: error: ...` with exit status 2 for bad flags and environments,
- `train(...)`: the one training loop (tqdm on a terminal, <output>/log.txt, TensorBoard,
  non-finite loss guard).

Batch size convention: `--batch-size` is the *global* batch; each of the W processes loads
batch_size / W samples per step, so a run means the same thing on 1 CPU or 8 GPUs.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import errno
import fcntl
import json
import math
import os
import platform
import random
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import recipes
from feeders.dataset import NORMALIZATIONS
from progress import progress_bar

ROOT = Path(__file__).resolve().parent
STREAMS = ("j", "m", "b", "jm", "bm")
BACKBONES = ("dste", "sttr", "stgcn", "msg3d")
PRESETS = ("paper", "base", "small", "tiny")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# ----------------------------------------------------------------------------- command line
def eval_split_for(split: str) -> str:
    """The evaluation split paired with a training split: `xsub_train` -> `xsub_val`,
    `train` -> `val`; any other name is returned unchanged."""
    if split == "train":
        return "val"
    if split.endswith("_train"):
        return split[: -len("_train")] + "_val"
    return split


DEFAULT_WORKERS = min(4, max(0, (os.cpu_count() or 1) - 1))

def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags shared by pretrain.py, action_recognition.py and action_retrieval.py."""
    g = parser.add_argument_group("common")
    g.add_argument("--data", type=Path, required=True, help="dataset directory (feeders.store)")
    g.add_argument("--split", default="xsub_train", help="training split")
    g.add_argument("--eval-split", default=None,
                   help="evaluation split; None: --split with _train -> _val")
    g.add_argument("--stream", choices=STREAMS, default="j", help="input stream")
    g.add_argument("--backbone", choices=BACKBONES, default="dste", help="encoder architecture")
    g.add_argument("--preset", choices=PRESETS, default="paper", help="encoder size")
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
    g.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help="DataLoader workers per process (here min(4, CPU cores - 1))")
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
    """Fill derived defaults and check values; raises ValueError naming the flag."""
    if args.eval_split is None:
        args.eval_split = eval_split_for(args.split)
    for flag in ("epochs", "batch_size", "clip_len"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
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


# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def keep_freed_memory(enable: bool = True) -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc serves every block over 32 MB with its own mmap and unmaps it on free, so
    each training step maps, page-faults and zeroes its large activations again (a third of
    a DSTE pretraining step on CPU was kernel time). Here all blocks come from the heap and
    the heap is only trimmed above 1 GiB of free space at its top: the resident memory stays at
    the peak of a step instead of going up and down. enable=False restores glibc's defaults.
    Returns False where the C library is not glibc (macOS, musl), where nothing is changed.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ({_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 64 << 20} if enable else
                {_M_MMAP_MAX: 65536, _M_TRIM_THRESHOLD: 128 << 10, _M_TOP_PAD: 128 << 10})
    return all(mallopt(param, value) == 1 for param, value in settings.items())


# ----------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT), or use one that is already initialised. NCCL + cuda:LOCAL_RANK
    when CUDA is available, else gloo on the CPU. A single process needs no group."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    info = (DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)
            if dist.is_initialized() else DistInfo(0, 1, 0, device))
    if info.distributed or "TORCHELASTIC_RUN_ID" in os.environ:
        watch_launcher(info.rank)
    return info


_LAUNCHER_WATCH: list[threading.Thread] = []  # at most one watcher per process


def watch_launcher(rank: int, interval: float = 1.0) -> None:
    """Exit this process soon after its launcher dies.

    torchrun's ranks are its child processes; when it is killed (kill -9, a lost ssh session)
    they are re-parented and would run on as orphans, holding GPUs and overwriting
    checkpoints. A daemon thread compares os.getppid() with the parent at start every
    `interval` seconds and calls os._exit(1) with a message once it has changed. (prctl's
    PR_SET_PDEATHSIG is not used: it fires when the launcher *thread* that started the rank
    ends, which need not be the launcher's death.)
    """
    if _LAUNCHER_WATCH:
        return
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                print(f"rank {rank} (PID {os.getpid()}): the launcher (PID {parent}) is gone; "
                      "exiting", file=sys.stderr, flush=True)
                os._exit(1)

    thread = threading.Thread(target=watch, name="watch-launcher", daemon=True)
    thread.start()
    _LAUNCHER_WATCH.append(thread)


def log(info: DistInfo, *msg) -> None:
    """print on rank 0 only."""
    if info.is_main:
        print(*msg, flush=True)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along `dim`; the backward sums the incoming gradients over processes and keeps
    this process's slice. When every process computes the same loss of the gathered tensor,
    each process's parameter gradient is then W x its share, and DDP's average over W processes
    gives exactly the gradient of the single-process loss on the whole batch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.dim, ctx.size = dim, x.shape[dim]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.narrow(ctx.dim, dist.get_rank() * ctx.size, ctx.size), None


def gather_with_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate `x` from all processes along `dim` (rank order), keeping gradients.
    Identity without a process group. Every process must pass the same shape."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return x
    return _GatherWithGrad.apply(x, dim)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are over the batch of all processes.

    For CPU (gloo) runs, where torch's SyncBatchNorm refuses CPU tensors. The mean and the
    variance are two differentiable all-reduces (torch.distributed.nn), so gradients flow
    through the global statistics exactly as in SyncBatchNorm. Works on any (N, C, ...) input.
    Without a process group (or in eval mode) it is a plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm: expected (N, C, ...) input, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        x = x.float()
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1] * dist.get_world_size()
        mean = dist_fn.all_reduce(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = dist_fn.all_reduce(centred.square().sum(dims)) / count
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * count / max(count - 1, 1), m)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm by a cross-process one: torch SyncBatchNorm on CUDA,
    GlobalBatchNorm elsewhere (same parameters and buffers)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child, device))
    return module


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel when distributed; else unchanged. Call `convert_batchnorm`
    before building the optimizer (it replaces modules, hence parameters)."""
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


# ----------------------------------------------------------------------------- precision
def cuda_auto_precision(device: torch.device) -> str:
    """`--precision auto` on a GPU: bf16 where the GPU supports it (Ampere and later), else fp16
    (with a GradScaler, make_scaler)."""
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def autocast_dtype(precision: str, device: torch.device,
                   recorded: str | None = None) -> torch.dtype | None:
    """The autocast dtype of a precision flag on a device; None for fp32.

    `auto` is `recorded` when given (the precision a pretraining run chose and recorded, see
    `choose_precision`; evaluations pass their checkpoint's), else on CUDA
    `cuda_auto_precision`, on the CPU bf16."""
    if precision == "auto":
        precision = recorded or (cuda_auto_precision(device) if device.type == "cuda" else "bf16")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def recorded_precision(ckpt: dict | None) -> str | None:
    """The precision a checkpoint's run trained in (`choose_precision`'s record), or None."""
    meta = (ckpt or {}).get("meta") or {}
    return (meta.get("precision_choice") or {}).get("precision")


def enable_tf32(device: torch.device, precision: str) -> bool:
    """TF32 matrix products and convolutions on CUDA for autocast runs. Safe there: what
    still runs in fp32 (the loss of the bf16/fp16 embeddings, optimizer-side products) gets
    inputs of at most 10 mantissa bits, which TF32 keeps. `--precision fp32` keeps full fp32.
    Returns whether TF32 is on."""
    if device.type != "cuda" or precision == "fp32":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def precision_cache_path() -> Path:
    """$SKELSSL_CACHE_DIR/precision.json (default ~/.cache/skelssl/precision.json)."""
    root = os.environ.get("SKELSSL_CACHE_DIR", Path.home() / ".cache" / "skelssl")
    return Path(root) / "precision.json"


def precision_cache_key(workload: str) -> str:
    """Cache key of a CPU precision trial: CPU model, torch version, threads and the workload
    (model preset / backbone, clip length, per-process batch)."""
    return (f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
            f"{workload}")


@contextlib.contextmanager
def states_restored(model: nn.Module, optimizer: torch.optim.Optimizer):
    """Run a block (e.g. timed trial steps) and put back the model's weights and buffers, the
    optimizer's state and every global RNG exactly as they were."""
    model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optim_state = copy.deepcopy(optimizer.state_dict())
    rng = rng_state()
    try:
        yield
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        optimizer.zero_grad(set_to_none=True)
        set_rng_state(rng)


def trial_speeds(step_loss: Callable[[torch.dtype | None], torch.Tensor], model: nn.Module,
                 optimizer: torch.optim.Optimizer, samples: int, precisions=("fp32", "bf16"),
                 steps: int = 2, warmup: int = 1) -> dict[str, float]:
    """samples/s of the run's own training step on the CPU in each precision.

    step_loss(dtype) -> loss of one forward pass of the run on a fixed batch of `samples`
    samples; each precision runs `warmup` untimed then `steps` timed steps (backward +
    optimizer step). Weights, optimizer state and RNG streams are restored afterwards
    (`states_restored`), so the run continues exactly as without the trial."""
    speeds = {}
    with states_restored(model, optimizer):
        for precision in precisions:
            dtype = autocast_dtype(precision, torch.device("cpu"))
            for i in range(warmup + steps):
                if i == warmup:
                    tic = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                step_loss(dtype).backward()
                optimizer.step()
            speeds[precision] = samples * steps / (time.perf_counter() - tic)
    return speeds


def choose_precision(requested: str, device: torch.device, *, workload: str,
                     trial: Callable[[], dict[str, float]] | None = None,
                     recorded: str | None = None, info: DistInfo | None = None) -> dict:
    """The precision a run trains in, as a record for its config:
    {"precision", "source", "samples_per_s" (CPU trial), "key" (cache key)}.

    - not `auto`: the flag (source `flag`);
    - `recorded` (a resumed run's choice): kept (source `resumed`);
    - CUDA: `cuda_auto_precision` (source `cuda`);
    - CPU: the cached trial result of this CPU model, torch version, threads and `workload`
      (source `cache`), else `trial()` -> samples/s per precision, the faster kept, printed
      and cached in precision_cache_path() (source `trial`). In a multi-process CPU run rank 0
      decides (without a cached result: bf16) and the choice is broadcast.
    """
    if requested != "auto":
        return {"precision": requested, "source": "flag"}
    if recorded:
        return {"precision": recorded, "source": "resumed"}
    if device.type == "cuda":
        return {"precision": cuda_auto_precision(device), "source": "cuda"}
    key = precision_cache_key(workload)
    path = precision_cache_path()
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        cache = {}  # an unreadable cache is measured again
    if key in cache:
        choice = {**cache[key], "source": "cache", "key": key}
    elif info is not None and info.distributed:
        choice = {"precision": "bf16", "source": "default (no cached trial; multi-process)",
                  "key": key}
    else:
        speeds = trial()
        best = max(speeds, key=speeds.get)
        choice = {"precision": best, "samples_per_s": {k: round(v, 2) for k, v in speeds.items()},
                  "source": "trial", "key": key}
        cache[key] = {"precision": best, "samples_per_s": choice["samples_per_s"],
                      "measured": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        write_json(path, cache)
    if info is not None and info.distributed:
        shared = [choice]
        dist.broadcast_object_list(shared, src=0)
        choice = shared[0]
    return choice


def describe_precision(choice: dict) -> str:
    """One line: 'precision bf16 (trial: fp32 12.1, bf16 30.8 samples/s)'."""
    speeds = choice.get("samples_per_s")
    detail = (": " + ", ".join(f"{k} {v:.1f}" for k, v in speeds.items()) + " samples/s"
              if speeds else "")
    return f"precision {choice['precision']} ({choice['source']}{detail})"


def precision_context(dtype: torch.dtype | None, device: torch.device):
    """autocast(dtype) on `device`, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 on CUDA (a disabled one passes everything through)."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and dtype == torch.float16)


# ----------------------------------------------------------------------------- schedules
def scaled_lr(lr: float, global_batch: int, linear_scaling: bool) -> float:
    """Linear-scaling rule: lr * global_batch / 256 when enabled."""
    return lr * global_batch / 256 if linear_scaling else lr


def lr_factor(epoch: float, *, schedule: str, epochs: int, warmup_epochs: float = 0.0,
              milestones: Iterable[int] = (), gamma: float = 0.1) -> float:
    """Multiplier of the base lr at a (fractional) epoch.

    Linear warmup from 0 over `warmup_epochs`, then `step` (x gamma at each milestone passed)
    or `cosine` (from 1 at the end of warmup to 0 at `epochs`)."""
    if epoch < warmup_epochs:
        return epoch / warmup_epochs
    if schedule == "step":
        return gamma ** sum(epoch >= m for m in milestones)
    if schedule == "cosine":
        progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"unknown schedule {schedule!r}; expected step or cosine")


def make_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int, **schedule):
    """A per-step LambdaLR following `lr_factor` (keyword arguments as lr_factor)."""
    lr_factor(0.0, **schedule)  # validate now, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step / steps_per_epoch, **schedule))


# ----------------------------------------------------------------------------- randomness
def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (e.g. run seed, epoch, step, rank)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)


def step_generator(seed: int, epoch: int, step: int, rank: int) -> torch.Generator:
    """The CPU generator of one training step's batched augmentation."""
    return torch.Generator().manual_seed(derive_seed(seed, epoch, step, rank))


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Re-seed torch's global RNG (DropPath masks, dropout) at the start of an epoch, so a run
    resumed at any epoch boundary replays the same draws."""
    torch.manual_seed(derive_seed(seed, epoch, rank, 0x5EED))


def rng_state() -> dict:
    """Global RNG states as plain tensors / lists / ints (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()`. CUDA states are restored for the devices present only: a run
    saved on 8 GPUs resumes on 4 (or on the CPU, where they are ignored)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


# ----------------------------------------------------------------------------- metadata, checkpoints
def git_commit() -> str:
    """HEAD commit of the repository (suffix `-dirty` with uncommitted changes), or `unknown`."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flags_of(args: argparse.Namespace) -> dict:
    """The parsed flags as a JSON-ready dict (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def run_metadata(args: argparse.Namespace, info: DistInfo) -> dict:
    """Everything needed to reproduce a run: flags, seed, commit, versions, command line."""
    return {
        "config": flags_of(args),
        "seed": args.seed,
        "git_commit": git_commit(),
        "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                     "numpy": np.__version__,
                     "cuda": torch.version.cuda or "none"},
        "command": [sys.executable] + sys.argv,
        "world_size": info.world_size,
        "device": str(info.device),
    }


def utc_now() -> str:
    """The current time as `YYYY-MM-DD HH:MM:SS UTC`."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


class OutputError(OSError):
    """A file of the run could not be written (full disk, read-only directory); the message
    names the file."""


def temp_path(path: Path) -> Path:
    """The name a file is written under before its rename: `.<name>.tmp<PID>` next to it, so
    a leftover of a writer killed mid-write names its process (see `remove_stale_temps`)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_bytes_via(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` then rename tmp onto `path` (readers never see a partial file).
    An OSError (a full disk, a read-only directory) becomes an OutputError naming `path`."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes_via(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file, then os.replace onto `path`. Written through a Python
    file object: torch.save to a path reports a full disk as an opaque RuntimeError."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(state, f)
    atomic_write_bytes_via(path, write)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """torch.load(weights_only=True) with an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(f"checkpoint {path} could not be loaded: {err}") from err


# ----------------------------------------------------------------------------- run directories
RUN_MARKER = ".skelssl-run.json"  # written into every run directory on first use
_TEMP_NAME = re.compile(r"^\..+\.tmp(\d+)$")  # temp_path's names


def is_run_dir(path: Path) -> bool:
    """Whether `path` is a run directory this suite wrote: it holds RUN_MARKER (written by
    every pretraining and evaluation on first use) or, for runs older than the marker or
    checkpoints copied into a folder of their own, a pretraining's config.json
    (`run_metadata`: config, git_commit, versions, command) or a pretraining checkpoint
    (`last.pt`, `epoch_NNNN.pt`)."""
    path = Path(path)
    if (path / RUN_MARKER).is_file():
        return True
    try:
        meta = json.loads((path / "config.json").read_text())
        if isinstance(meta, dict) and {"config", "git_commit", "versions", "command"} <= set(meta):
            return True
    except (OSError, ValueError):
        pass
    return any(is_suite_checkpoint(p) for p in sorted(path.glob("*.pt"))
               if p.name == "last.pt" or re.fullmatch(r"epoch_\d{4,}\.pt", p.name))


def is_suite_checkpoint(path: Path) -> bool:
    """Whether `path` is a checkpoint of this suite: a torch file holding a dict with a
    `model` state dict and the run's `meta` or `epoch` (read with weights_only and mmap, so
    only the pickled structure is read, not the weights)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch zip file, or not one of ours
        return False
    return isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) and (
        "meta" in ckpt or "epoch" in ckpt)


def prepare_run_dir(output: Path) -> None:
    """Make `output` a run directory, or refuse to touch it. A missing or empty directory is
    created and marked (RUN_MARKER); a run directory of the suite is reused; anything else (a
    file, a non-empty directory the suite did not write) raises ValueError naming it, so a
    user's files are never written over."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} exists and is not a directory")
    if output.is_dir() and is_run_dir(output):
        return
    if output.is_dir() and any(output.iterdir()):
        raise ValueError(f"--output {output} is a non-empty directory that this suite did not "
                         f"write (no {RUN_MARKER}, run config.json or checkpoint in it); "
                         "refusing to write into it: choose another --output")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create --output {output}: {err.strerror or err}") from err
    write_json(output / RUN_MARKER, {"created_by": "skelssl", "created": utc_now(),
                                     "command": [sys.executable] + sys.argv})


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (os.kill(pid, 0))."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(root: Path) -> list[Path]:
    """Delete the temporary files (`.<name>.tmp<PID>`, see `temp_path`) that writers killed
    mid-write left anywhere under `root`, when process PID is gone; a live process's are
    left alone. Returns the removed paths."""
    removed = []
    for folder, _, files in os.walk(root):
        for name in files:
            match = _TEMP_NAME.match(name)
            path = Path(folder) / name
            if match and not path.is_symlink() and not pid_alive(int(match.group(1))):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


class RunLockError(ValueError):
    """Another live process is writing the same outputs (the message names it)."""


@dataclass
class RunLock:
    """An acquired `<output>/.lock-<job>`: `previous` is what the file held before (the
    last holder's PID, host, start time, command), `fd` the open, locked file."""
    path: Path
    fd: int
    previous: dict

    def release(self) -> None:
        os.ftruncate(self.fd, 0)  # an empty lock file: nobody holds it
        os.close(self.fd)


def _describe_holder(holder: dict) -> str:
    argv = holder.get("command") or ["?"]
    command = " ".join([Path(argv[0]).name, *argv[1:]])
    return (f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}: {command or '?'}")


def _read_lock(fd: int) -> dict:
    """The JSON a lock file holds, read through its (locked) descriptor: with POSIX locks,
    opening and closing the file a second time would drop this process's lock."""
    try:
        holder = json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def lock_run(output: Path, job: str) -> RunLock:
    """Hold `<output>/.lock-<job>` for one writer, and write this process's PID, host, start
    time and command into it. Raises RunLockError naming the holder when another live
    process holds it. An exclusive POSIX lock (fcntl.lockf): the kernel drops it when its
    process ends, however it ends, so a killed run's lock is taken over by the next run; and,
    unlike flock, DataLoader workers forked from the run do not inherit it (they would keep
    a killed run's lock until they noticed)."""
    path = Path(output) / f".lock-{job}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            print(f"warning: {path}: this file system has no locks ({err.strerror}); a second "
                  "writer of this run directory will not be detected", file=sys.stderr)
            return RunLock(path, fd, {})
        holder = _read_lock(fd)
        os.close(fd)
        if err.errno not in (errno.EACCES, errno.EAGAIN):
            raise OutputError(f"cannot lock {path}: {err.strerror or err}") from err
        raise RunLockError(f"--output {output} is being written by another {job} run: "
                           f"{_describe_holder(holder)}; wait for it to end or choose another "
                           "--output") from None
    previous = _read_lock(fd)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now(),
              "command": [sys.executable] + sys.argv}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    except OSError as err:
        os.close(fd)
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
    return RunLock(path, fd, previous)


@contextlib.contextmanager
def claim_run_dir(output: Path, job: str, info: DistInfo):
    """Own `output` for one job (`pretrain`, or an evaluation's tag: `linear`, `knn`,
    `finetune_0.1`, ...) during the with-block, on rank 0, the only writer (other ranks do
    nothing): `prepare_run_dir` (refuses a directory the suite did not write), `lock_run`
    (refuses a second live writer of the same job), then `remove_stale_temps`."""
    if not info.is_main:
        yield
        return
    prepare_run_dir(output)
    lock = lock_run(output, job)
    try:
        old_pid = lock.previous.get("pid")
        if isinstance(old_pid, int) and not pid_alive(old_pid):
            log(info, f"{lock.path}: taking over the lock of PID {old_pid}, which ended "
                      "without releasing it")
        removed = remove_stale_temps(output)
        if removed:
            log(info, f"removed {len(removed)} temporary file(s) left by killed runs: "
                      + ", ".join(str(p) for p in removed[:5]))
        yield
    finally:
        lock.release()


# ----------------------------------------------------------------------------- resuming
# Flags that may differ between a run and its resumption: they do not change what the run
# computes (length, parallelism, logging and monitoring, evaluation-only settings; `defaults`
# only records where the values came from, and the values are compared one by one).
RESUME_EXEMPT = ("epochs", "resume", "resume_changed", "output", "workers", "threads",
                 "log_every", "save_every", "knn_every", "eval_split", "eval_batch_size",
                 "cache_dir", "no_cache", "defaults", "print_config")
# Flags that define the model's shape: a checkpoint with other values cannot be resumed.
RESUME_FIXED = ("backbone", "preset", "clip_len", "proj_mult", "spatial_channels")


def config_changes(old: dict, new: dict, ignore: tuple[str, ...] = RESUME_EXEMPT,
                   default_of: Callable[[str], object] | None = None) -> dict:
    """flag -> (old value, new value) for the flags that differ between two
    `run_metadata(...)["config"]` dicts, except those in `ignore`. With `default_of` (the
    parser's get_default), a flag the old run did not have yet (added to the code since)
    that is left at its default is no change."""
    def unchanged(k):
        if k not in old and default_of is not None:
            return new.get(k) == default_of(k)
        return old.get(k) == new.get(k)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if k not in ignore and not unchanged(k)}


def format_changes(changes: dict) -> str:
    """`--lr: 0.0005 -> 0.1, --seed: 3 -> 4`."""
    return ", ".join(f"--{k.replace('_', '-')}: {old} -> {new}"
                     for k, (old, new) in changes.items())


def resume_path(resume: str, output: Path) -> Path | None:
    """`auto`: <output>/last.pt when it exists; `never`: None; else the given file (must exist)."""
    if resume == "never":
        return None
    if resume == "auto":
        last = Path(output) / "last.pt"
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
    return path


def check_resume_config(ckpt: dict, path: Path, config: dict, resume_changed: bool,
                        default_of: Callable[[str], object] | None = None) -> dict:
    """The semantic flag changes between a checkpoint's run and this command (flag -> (old,
    new)). Raises ValueError (one line listing them) when the model's shape would change
    (RESUME_FIXED), or when anything outside RESUME_EXEMPT changes without --resume-changed."""
    old = (ckpt.get("meta") or {}).get("config")
    if old is None and not resume_changed:
        raise ValueError(f"--resume {path}: the checkpoint records no run flags, so this "
                         "command cannot be checked against it; add --resume-changed to resume "
                         "it with this command's flags")
    changes = config_changes(old, config, default_of=default_of) if old is not None else {}
    fixed = {k: v for k, v in changes.items() if k in RESUME_FIXED}
    if fixed:
        raise ValueError(f"--resume {path}: the checkpoint holds another model "
                         f"({format_changes(fixed)}); start a new run with another --output "
                         "or --resume never")
    if changes and not resume_changed:
        raise ValueError(f"--resume {path}: this command would change the run "
                         f"({format_changes(changes)}); rerun with the checkpoint's flags, or "
                         f"add --resume-changed to apply the new values from epoch "
                         f"{ckpt.get('epoch')} on")
    return changes


def optimizer_settings(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Every param group's settings but its parameters (lr, initial_lr, weight_decay, betas,
    ...): taken before loading a checkpoint, they are the ones this command's flags give."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def apply_settings(state: "TrainState", settings: list[dict], steps_per_epoch: int) -> None:
    """After `state.load`: put this command's optimizer settings back (the checkpoint's were
    loaded with the optimizer state) and move the per-step schedule to the resumed epoch, so
    that every group's lr is its base lr x lr_factor(state.epoch) of this command's schedule
    (lr, warmup, milestones, gamma, epochs, batches per epoch). The scheduler is the LambdaLR
    of `make_scheduler`; with unchanged flags every value is the checkpoint's."""
    groups = state.optimizer.param_groups
    for group, values in zip(groups, settings):
        group.update(values)
    scheduler = state.scheduler
    scheduler.base_lrs = [group["initial_lr"] for group in groups]
    scheduler.last_epoch = state.epoch * steps_per_epoch
    for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in groups]


def resume_run(state: "TrainState", model: nn.Module, args: argparse.Namespace, meta: dict,
               info: DistInfo, steps_per_epoch: int, run_dir: Path,
               check: Callable[[dict, Path], None] | None = None,
               default_of: Callable[[str], object] | None = None,
               ckpt: dict | None = None) -> dict:
    """Resume from the checkpoint `--resume` names (auto: <run_dir>/last.pt), if any.

    The run's flags are compared with the checkpoint's (`check_resume_config`): a change is
    refused unless --resume-changed, and then really applied (`apply_settings`: learning
    rates, weight decay, schedule; every other flag acts through the rebuilt data, model and
    step function). `check(ckpt, path)` may refuse the checkpoint first; `default_of` (the
    parser's get_default) lets runs older than a new flag resume with it at its default;
    `ckpt`: the checkpoint at that path when the caller has already loaded it.
    Returns `meta` with `resumes` extended by {epoch, checkpoint, changed: flag -> [old, new],
    git_commit, command}, so config.json and the checkpoints say what the run does from
    which epoch on.
    """
    path = resume_path(args.resume, run_dir)
    if path is None:
        return meta
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    if check is not None:
        check(ckpt, path)
    check_resume_config(ckpt, path, meta["config"], args.resume_changed, default_of)
    settings = optimizer_settings(state.optimizer)
    state.load(model, ckpt, path)
    apply_settings(state, settings, steps_per_epoch)
    old_meta = ckpt.get("meta") or {}
    changed = config_changes(old_meta.get("config") or {}, meta["config"],
                             ignore=("resume", "resume_changed"), default_of=default_of)
    entry = {"epoch": state.epoch, "checkpoint": str(path),
             "changed": {k: list(v) for k, v in changed.items()},
             "git_commit": meta["git_commit"], "command": meta["command"]}
    log(info, f"resumed from {path} at epoch {state.epoch}"
        + (f" (changed: {format_changes(changed)})" if changed else ""))
    return {**meta, "resumes": [*old_meta.get("resumes", []), entry]}


# ----------------------------------------------------------------------------- features
@torch.no_grad()
def extract_features(encoder: nn.Module, loader, transform: Callable, device: torch.device,
                     dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Global features of every clip of an evaluation loader, in loader order.

    loader yields (clip (N, C, L, V, M), label (N,), index (N,)); transform(clip) -> encoder
    input (e.g. the stream conversion). Returns (features (S, Dt + Ds) float32 on the CPU,
    labels (S,) int64). The encoder is put in eval mode and restored afterwards. A progress
    bar of the batches on a terminal.
    """
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for clip, label, _ in progress_bar(loader, desc="features", total=len(loader), unit="batch",
                                       leave=False):
        with precision_context(dtype, device):
            out = encoder(transform(clip.to(device, non_blocking=True)))
        feats.append(out.global_feat.float().cpu())
        labels.append(label.long())
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


# ----------------------------------------------------------------------------- the training loop
class NonFiniteLoss(RuntimeError):
    """Raised by train() when the loss (or one of its terms) is NaN or infinite."""


@dataclass
class TrainState:
    """What train() needs besides the model and the step function."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    epoch: int = 0  # number of completed epochs

    def state_dict(self, model: nn.Module) -> dict:
        return {"model": unwrap(model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "rng": rng_state()}

    def load(self, model: nn.Module, ckpt: dict, path: Path | str = "checkpoint") -> None:
        """Restore a `state_dict` checkpoint; ValueError naming `path` when it does not fit."""
        try:
            unwrap(model).load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            detail = " ".join(str(err).split())
            raise ValueError(f"checkpoint {path} does not fit this run's model or optimizer: "
                             f"{detail[:300]}") from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        load_scaler_state(self.scaler, ckpt.get("scaler"))
        set_rng_state(ckpt["rng"])
        self.epoch = int(ckpt["epoch"])


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict | None) -> None:
    """Restore a GradScaler's state when the checkpoint holds one. A CPU or bf16 run's scaler
    is disabled and saves {}; resuming it with fp16 on CUDA keeps the fresh scaler (torch
    refuses an empty state: "The source state dict is empty"). A disabled scaler (resuming
    an fp16 CUDA run on the CPU) ignores the state."""
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)


def _check_finite(loss: torch.Tensor, scalars: dict, info: DistInfo, epoch: int, step: int) -> None:
    """Raise NonFiniteLoss on every process if any process has a non-finite loss. The message
    names the first non-finite entry of `scalars` (the step function returns them in the
    order they are computed, so that is where the NaN or inf appeared) and the later ones."""
    finite = bool(torch.isfinite(loss.detach()))
    bad = torch.tensor([0.0 if finite else 1.0], device=loss.device)
    if info.distributed:
        dist.all_reduce(bad)
    if not bad.item():
        return
    culprits = [(k, float(v)) for k, v in scalars.items() if not math.isfinite(float(v))]
    if culprits:
        (name, value), rest = culprits[0], [k for k, _ in culprits[1:]]
        detail = (f"the first non-finite term, in the order computed, is {name}={value}"
                  + (f" (then also {', '.join(rest)})" if rest else ""))
    elif not finite:
        detail = f"loss={float(loss.detach())} while every logged term is finite"
    else:
        detail = "on another process"
    raise NonFiniteLoss(f"non-finite loss at epoch {epoch} step {step} (rank {info.rank}): "
                        f"{detail}; stopping, last.pt of the previous epoch is left intact")


def format_duration(seconds: float) -> str:
    """3725 -> '1h02m05s', 83 -> '1m23s', 4.2 -> '4s'."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def append_log(output: Path | None, text: str, info: DistInfo | None = None) -> None:
    """Append one line `<UTC time>  <text>` to <output>/log.txt (rank 0; no-op without output)."""
    if output is None or (info is not None and not info.is_main):
        return
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    Path(output).mkdir(parents=True, exist_ok=True)
    with open(Path(output) / "log.txt", "a", encoding="utf-8") as f:
        f.write(f"{stamp}  {text}\n")


def epoch_line(epoch: int, epochs: int, means: dict, lr: float, samples_per_s: float,
               elapsed: float, eta: float, metrics: dict | None = None) -> str:
    """One readable line per epoch: every loss term (epoch means), lr, speed, elapsed, ETA."""
    terms = "  ".join(f"{k} {v:.4g}" for k, v in means.items())
    extra = "".join(f"  {k} {v:.4g}" for k, v in (metrics or {}).items())
    return (f"epoch {epoch}/{epochs}  {terms}  lr {lr:.3g}  samples/s {samples_per_s:.1f}  "
            f"elapsed {format_duration(elapsed)}  eta {format_duration(eta)}{extra}")


def train(model: nn.Module, step_fn: Callable, loader, state: TrainState, *, epochs: int,
          info: DistInfo, seed: int, output: Path | None = None, save_every: int = 0,
          extra_state: dict | None = None, on_epoch_end: Callable | None = None,
          log_every: int = 10, progress: bool | None = None) -> TrainState:
    """The training loop.

    step_fn(batch, epoch, step) -> (loss, scalars): the forward pass on one batch (the caller
    handles devices and autocast); `scalars` (name -> 0-d tensor or float) are logged.
    Each epoch: sampler/dataset `set_epoch`, torch RNG re-seeded from (seed, epoch, rank), then
    per step backward (through `state.scaler`), optimizer step, per-step scheduler step.
    After each epoch: `on_epoch_end(epoch) -> dict of metrics` (logged), then on rank 0
    `<output>/last.pt` and every `save_every` epochs `<output>/epoch_NNNN.pt` (NNNN = completed
    epochs). `extra_state` is stored in every checkpoint (e.g. run metadata).
    Rank 0 prints one line per epoch (`epoch_line`) and appends it, with the start / resume /
    stop events, to `<output>/log.txt`; the tqdm bar of the steps shows only on a terminal
    (`progress=None`; True / False force it).
    """
    writer = None
    if output is not None and info.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(Path(output) / "tb"))
    steps_per_epoch = len(loader)
    first, start = state.epoch, time.perf_counter()
    event = f"resume at epoch {first} of {epochs}" if first else f"start: {epochs} epochs"
    append_log(output, f"{event}, {steps_per_epoch} steps per epoch, {info.world_size} "
               f"process(es) on {info.device}", info)
    try:
        for epoch in range(state.epoch, epochs):
            for obj in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
                if hasattr(obj, "set_epoch"):
                    obj.set_epoch(epoch)
            seed_epoch(seed, epoch, info.rank)
            model.train()
            bar = progress if info.is_main else False  # None: on a terminal
            means, speed, lr = _train_epoch(model, step_fn, loader, state, info, epoch,
                                            steps_per_epoch, writer, log_every, bar)
            state.epoch = epoch + 1
            metrics = on_epoch_end(epoch) if on_epoch_end is not None else {}
            if writer is not None:
                for k, v in (metrics or {}).items():
                    writer.add_scalar(f"eval/{k}", v, state.epoch)
                writer.flush()
            if output is not None and info.is_main:
                ckpt = {**state.state_dict(model), **(extra_state or {})}
                save_checkpoint(Path(output) / "last.pt", ckpt)
                if save_every and state.epoch % save_every == 0:
                    save_checkpoint(Path(output) / f"epoch_{state.epoch:04d}.pt", ckpt)
            elapsed = time.perf_counter() - start
            eta = elapsed / (state.epoch - first) * (epochs - state.epoch)
            line = epoch_line(state.epoch, epochs, means, lr, speed, elapsed, eta, metrics)
            log(info, line)
            append_log(output, line, info)
            barrier(info)
    except BaseException as err:
        append_log(output, f"stopped at epoch {state.epoch} of {epochs} after "
                   f"{format_duration(time.perf_counter() - start)}: {type(err).__name__}: {err}",
                   info)
        raise
    finally:
        if writer is not None:
            writer.close()
    append_log(output, f"stop: epoch {state.epoch} of {epochs} done in "
               f"{format_duration(time.perf_counter() - start)}", info)
    return state


def _train_epoch(model, step_fn, loader, state: TrainState, info: DistInfo, epoch: int,
                 steps_per_epoch: int, writer, log_every: int, bar: bool | None
                 ) -> tuple[dict, float, float]:
    """One epoch of steps (a tqdm bar: see progress_bar's `enable`). Returns (the epoch means of
    the loss and the step scalars, samples/s over the epoch, the lr of the last step)."""
    steps = progress_bar(loader, desc=f"epoch {epoch}", total=steps_per_epoch, unit="step",
                         enable=bar, leave=False)
    tic, seen, sums = time.perf_counter(), 0, {}
    for step, batch in enumerate(steps):
        loss, scalars = step_fn(batch, epoch, step)
        _check_finite(loss, scalars, info, epoch, step)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        lr = state.optimizer.param_groups[0]["lr"]
        state.scheduler.step()
        seen += len(batch[0]) * info.world_size
        for k, v in {"loss": loss, **scalars}.items():  # summed on the device: no sync per step
            sums[k] = sums.get(k, 0.0) + (v.detach().float() if torch.is_tensor(v) else float(v))
        if step % log_every == 0 or step == steps_per_epoch - 1:
            speed = seen / (time.perf_counter() - tic)
            if hasattr(steps, "set_postfix"):
                steps.set_postfix(loss=f"{float(loss.detach()):.4g}", samples_s=f"{speed:.1f}")
            if writer is not None:
                global_step = epoch * steps_per_epoch + step
                for k, v in scalars.items():
                    writer.add_scalar(f"train/{k}", float(v), global_step)
                writer.add_scalar("train/lr", state.optimizer.param_groups[0]["lr"], global_step)
                writer.add_scalar("train/samples_per_s", speed, global_step)
    means = {k: float(v) / max(steps_per_epoch, 1) for k, v in sums.items()}
    return means, seen / max(time.perf_counter() - tic, 1e-9), lr

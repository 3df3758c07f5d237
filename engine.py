"""Training engine shared by pretraining and fine-tuning (docs/design.md, "engine").

- distributed setup from the `torchrun` environment (gloo on CPU, NCCL on CUDA),
- precision (`auto` = bf16 autocast on CPU, fp16 autocast + GradScaler on CUDA),
- batch statistics and gradient-preserving gathers across processes,
- learning-rate schedules (step, cosine, linear warmup, linear-scaling rule),
- atomic checkpoints and run metadata,
- `train(...)`: the one training loop (tqdm, TensorBoard, non-finite loss guard).

Batch size convention: `--batch-size` is the *global* batch; each of the W processes loads
batch_size / W samples per step, so a run means the same thing on 1 CPU or 8 GPUs.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import random
import subprocess
import sys
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

from feeders.dataset import NORMALIZATIONS
from feeders.streams import STREAMS
from models import list_encoders, list_presets

ROOT = Path(__file__).resolve().parent
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
                   help="evaluation split (default: --split with _train -> _val)")
    g.add_argument("--stream", choices=STREAMS, default="j", help="input stream")
    g.add_argument("--backbone", choices=list_encoders(), default="dste",
                   help="encoder (the registry, models/registry.py)")
    g.add_argument("--preset", choices=list_presets(), default="paper", help="encoder size")
    g.add_argument("--clip-len", type=int, default=64, help="frames per clip (L)")
    g.add_argument("--spatial-channels", type=int, default=None,
                   help="coordinate channels; default: the layout's dims (3 for Kinect layouts, 2 for "
                        "2D pose layouts, whose third channel is a confidence score)")
    g.add_argument("--normalize", choices=NORMALIZATIONS, default="first_frame",
                   help="coordinates: first_frame (subtract body 1's centre joint at its first "
                        "frame), view (also turn 3D skeletons about the vertical axis to face the "
                        "camera: for cross-view benchmarks), none")
    g.add_argument("--epochs", type=int, default=451)
    g.add_argument("--batch-size", type=int, default=356,
                   help="global batch size, split evenly over the processes")
    g.add_argument("--lr", type=float, default=5e-4)
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 autocast on CPU, fp16 autocast + GradScaler on CUDA")
    g.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help="DataLoader workers per process (default: min(4, CPU cores - 1))")
    g.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per process (0: torch's default, one per core). On a "
                        "CPU shared with other jobs, or for tiny/small presets, 1 can be several "
                        "times faster: every parallel region waits for its slowest thread")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--output", type=Path, required=True, help="run directory (checkpoints, tb)")
    g.add_argument("--resume", default="auto",
                   help="auto (resume from <output>/last.pt when it exists) | never | PATH")
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
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)
    return DistInfo(0, 1, 0, device)


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
def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision flag on a device; None for fp32."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_context(dtype: torch.dtype | None, device: torch.device):
    """autocast(dtype) on `device`, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 on CUDA (a disabled one passes everything through)."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and dtype == torch.float16)


# ----------------------------------------------------------------------------- schedules
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
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
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


def atomic_write_bytes_via(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` then rename tmp onto `path` (readers never see a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes_via(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file, then os.replace onto `path`."""
    atomic_write_bytes_via(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """torch.load(weights_only=True) with an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(f"checkpoint {path} could not be loaded: {err}") from err


def changed_flags(old: dict, new: dict,
                  ignore=("epochs", "resume", "workers", "output", "knn_every", "save_every",
                          "log_every")) -> list[str]:
    """Flags whose value differs between two `run_metadata(...)["config"]` dicts."""
    return sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))


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


# ----------------------------------------------------------------------------- features
@torch.no_grad()
def extract_features(encoder: nn.Module, loader, transform: Callable, device: torch.device,
                     dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Global features of every clip of an evaluation loader, in loader order.

    loader yields (clip (N, C, L, V, M), label (N,), index (N,)); transform(clip) -> encoder
    input (e.g. the stream conversion). Returns (features (S, Dt + Ds) float32 on the CPU,
    labels (S,) int64). Multi-clip items (N, K, C, L, V, M) give features (S, K, Dt + Ds).
    The encoder is put in eval mode and restored afterwards.
    """
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for clip, label, _ in loader:
        clips = clip.flatten(0, 1) if clip.dim() == 6 else clip
        with precision_context(dtype, device):
            out = encoder(transform(clips.to(device, non_blocking=True)))
        feat = out.global_feat.float().cpu()
        feats.append(feat.view(*clip.shape[:2], -1) if clip.dim() == 6 else feat)
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

    def load(self, model: nn.Module, ckpt: dict) -> None:
        unwrap(model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.epoch = int(ckpt["epoch"])


def _check_finite(loss: torch.Tensor, scalars: dict, info: DistInfo, epoch: int, step: int) -> None:
    """Raise NonFiniteLoss on every process if any process has a non-finite loss."""
    finite = bool(torch.isfinite(loss.detach()))
    bad = torch.tensor([0.0 if finite else 1.0], device=loss.device)
    if info.distributed:
        dist.all_reduce(bad)
    if not bad.item():
        return
    culprits = {k: float(v) for k, v in scalars.items() if not math.isfinite(float(v))}
    if not finite:
        culprits.setdefault("loss", float(loss.detach()))
    detail = ", ".join(f"{k}={v}" for k, v in culprits.items()) or "on another process"
    raise NonFiniteLoss(f"non-finite loss at epoch {epoch} step {step} (rank {info.rank}): {detail}; "
                        "stopping, last.pt of the previous epoch is left intact")


def train(model: nn.Module, step_fn: Callable, loader, state: TrainState, *, epochs: int,
          info: DistInfo, seed: int, output: Path | None = None, save_every: int = 0,
          extra_state: dict | None = None, on_epoch_end: Callable | None = None,
          log_every: int = 10, progress: bool = True) -> TrainState:
    """The training loop.

    step_fn(batch, epoch, step) -> (loss, scalars): the forward pass on one batch (the caller
    handles devices and autocast); `scalars` (name -> 0-d tensor or float) are logged.
    Each epoch: sampler/dataset `set_epoch`, torch RNG re-seeded from (seed, epoch, rank), then
    per step backward (through `state.scaler`), optimizer step, per-step scheduler step.
    After each epoch: `on_epoch_end(epoch) -> dict of metrics` (logged), then on rank 0
    `<output>/last.pt` and every `save_every` epochs `<output>/epoch_NNNN.pt` (NNNN = completed
    epochs). `extra_state` is stored in every checkpoint (e.g. run metadata).
    """
    writer = None
    if output is not None and info.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(Path(output) / "tb"))
    steps_per_epoch = len(loader)
    try:
        for epoch in range(state.epoch, epochs):
            for obj in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
                if hasattr(obj, "set_epoch"):
                    obj.set_epoch(epoch)
            seed_epoch(seed, epoch, info.rank)
            model.train()
            _train_epoch(model, step_fn, loader, state, info, epoch, steps_per_epoch, writer,
                         log_every, progress and info.is_main)
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
            barrier(info)
    finally:
        if writer is not None:
            writer.close()
    return state


def _train_epoch(model, step_fn, loader, state: TrainState, info: DistInfo, epoch: int,
                 steps_per_epoch: int, writer, log_every: int, progress: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch}", disable=not progress,
               dynamic_ncols=True, leave=False)
    tic, seen = time.perf_counter(), 0
    for step, batch in enumerate(bar):
        loss, scalars = step_fn(batch, epoch, step)
        _check_finite(loss, scalars, info, epoch, step)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        seen += len(batch[0]) * info.world_size
        if step % log_every == 0 or step == steps_per_epoch - 1:
            speed = seen / (time.perf_counter() - tic)
            bar.set_postfix(loss=f"{float(loss.detach()):.4g}", samples_s=f"{speed:.1f}")
            if writer is not None:
                global_step = epoch * steps_per_epoch + step
                for k, v in scalars.items():
                    writer.add_scalar(f"train/{k}", float(v), global_step)
                writer.add_scalar("train/lr", state.optimizer.param_groups[0]["lr"], global_step)
                writer.add_scalar("train/samples_per_s", speed, global_step)

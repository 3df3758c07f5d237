"""Distributed helpers: the process group from `torchrun`'s environment (gloo on the CPU, NCCL
on CUDA), a watcher that ends a rank whose launcher died, rank-0 logging, gradient-preserving
gathers, batch statistics over all processes, DDP wrapping."""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.nn.parallel import DistributedDataParallel


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


def leave_process_group() -> None:
    """Destroy this process's group, if it joined one, before the program exits: left to the
    interpreter's shutdown, gloo's threads were torn down in arbitrary order and a rank could
    abort ("terminate called without an active exception", exit -6) after a finished run."""
    if dist.is_initialized():
        dist.destroy_process_group()


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
        x = x if x.dtype == torch.float64 else x.float()   # statistics in fp32 at least
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

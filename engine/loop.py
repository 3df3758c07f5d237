"""The training loop shared by pretraining and fine-tuning: `train(...)` (tqdm on a terminal,
<output>/log.txt, TensorBoard, a non-finite loss guard naming the first bad term), the state
it checkpoints (`TrainState`) and the per-step learning-rate schedules.

Batch size convention: `--batch-size` is the *global* batch; each of the W processes loads
batch_size / W samples per step, so a run means the same thing on 1 CPU or 8 GPUs."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from engine.distributed import DistInfo, barrier, log, unwrap
from engine.randomness import rng_state, seed_epoch, set_rng_state
from engine.runs import save_checkpoint
from progress import progress_bar


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



class NonFiniteLoss(RuntimeError):
    """Raised by train() when the loss (or one of its terms) is NaN or infinite."""


class WeightEMA:
    """An exponential moving average of a model's weights and buffers (Polyak averaging, as
    timm's ModelEmaV2), updated by train() after every optimizer step.

    After update t (t = 1, 2, ...) every floating-point entry of the state dict is
    ``avg = d_t * avg + (1 - d_t) * current`` with ``d_t = min(decay, (1 + t) / (10 + t))``:
    the warm-up lets the average leave the starting weights within the first few dozen steps
    of a short fine-tune; integer entries (e.g. BatchNorm's step count) are copied. The average
    starts from the model's weights at construction."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.weights = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}

    def rate(self) -> float:
        """The decay d_t of the next update."""
        t = self.updates + 1
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.rate()
        for k, v in unwrap(model).state_dict().items():
            avg = self.weights[k]
            if avg.is_floating_point():
                avg.mul_(d).add_(v.detach().to(avg.dtype), alpha=1.0 - d)
            else:
                avg.copy_(v)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        if set(state["weights"]) != set(self.weights):
            raise KeyError("the EMA weights do not have the model's keys")
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for k, v in state["weights"].items():
            self.weights[k].copy_(v)


@dataclass
class TrainState:
    """What train() needs besides the model and the step function."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    epoch: int = 0  # number of completed epochs
    ema: WeightEMA | None = None  # a moving average of the weights, updated after each step

    def state_dict(self, model: nn.Module) -> dict:
        state = {"model": unwrap(model).state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "epoch": self.epoch, "rng": rng_state()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load(self, model: nn.Module, ckpt: dict, path: Path | str = "checkpoint") -> None:
        """Restore a `state_dict` checkpoint; ValueError naming `path` when it does not fit."""
        try:
            unwrap(model).load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.ema is not None:
                if "ema" not in ckpt:
                    raise ValueError("it holds no moving average of the weights (the run "
                                     "was started without one)")
                self.ema.load_state_dict(ckpt["ema"])
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
    per step backward (through `state.scaler`), optimizer step, `state.ema` update (when set),
    per-step scheduler step.
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
        if state.ema is not None:
            state.ema.update(model)
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

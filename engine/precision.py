"""Precision: `--precision auto` on the CPU is the faster of fp32 and bf16 in a timed trial of
the run's own step (cached per CPU model, torch version, threads and workload); on CUDA bf16
where supported, else fp16 autocast with a GradScaler; TF32 for autocast runs on CUDA.

Before any step is timed, a matrix-product screen (`product_screen`, about 0.1 s) drops a
precision whose products run over PRODUCT_CUTOFF times slower than the fastest one's (bf16
emulated on an AVX2-only CPU: 80x); when one precision is left it is kept without timing steps.

Evaluations (linear probe, fine-tune, KNN, detection) take their checkpoint's choice when it
was made on this kind of CPU (`evaluation_precision`), else a cached timed trial of a small
layer's training step in both precisions (`layer_trial`): a checkpoint pretrained where bf16 is
fast must not run bf16 where it is emulated (on an AMD EPYC with AVX2 only, bf16 trained the
small DSTE at 0.7 samples/s against fp32's 11.9)."""
from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

try:
    import fcntl
except ImportError:  # Windows: the cache is written without a lock
    fcntl = None

from engine.distributed import DistInfo
from engine.randomness import rng_state, set_rng_state
from engine.runs import write_json

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cuda_auto_precision(device: torch.device) -> str:
    """`--precision auto` on a GPU: bf16 where the GPU supports it (Ampere and later), else fp16
    (with a GradScaler, make_scaler)."""
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def autocast_dtype(precision: str, device: torch.device,
                   recorded: str | None = None) -> torch.dtype | None:
    """The autocast dtype of a precision flag on a device; None for fp32.

    `auto` is `recorded` when given (the precision a pretraining run chose and recorded, see
    `choose_precision`), else on CUDA `cuda_auto_precision`, on the CPU bf16. The entry points
    resolve `auto` first (choose_precision, evaluation_precision), by measurement on the CPU."""
    if precision == "auto":
        precision = recorded or (cuda_auto_precision(device) if device.type == "cuda" else "bf16")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def recorded_choice(ckpt: dict | None) -> dict | None:
    """A checkpoint's run's precision record (`choose_precision`'s), or None."""
    meta = (ckpt or {}).get("meta") or {}
    return meta.get("precision_choice") or None


def recorded_precision(ckpt: dict | None) -> str | None:
    """The precision a checkpoint's run trained in (`choose_precision`'s record), or None."""
    return (recorded_choice(ckpt) or {}).get("precision")


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


def cpuinfo_text() -> str:
    """/proc/cpuinfo, or "" where there is none (macOS, Windows)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpuinfo_field(name: str) -> str | None:
    """The first value of a /proc/cpuinfo field ("model name", "flags"), or None."""
    for line in cpuinfo_text().splitlines():
        if line.split(":", 1)[0].strip() == name:
            return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or platform.processor()."""
    return (cpuinfo_field("model name") or platform.processor() or platform.machine()
            or "unknown cpu")


# CPU flags that decide which precision is fast: a generic model name ("Intel(R) Xeon(R)
# Processor" on many cloud machines) covers CPUs with and without AMX.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def cpu_speed_features() -> str:
    """The SPEED_FLAGS this CPU has (/proc/cpuinfo), plus oneDNN's ISA cap when
    ONEDNN_MAX_CPU_ISA is set (it turns off AMX or AVX-512 for bf16 kernels), e.g.
    "avx2 avx512f avx512_bf16" or "avx2 avx512f avx512_bf16 amx_bf16 amx_tile
    onednn<=AVX512_CORE_BF16"; "" where neither is known."""
    flags = set((cpuinfo_field("flags") or "").split())
    parts = [f for f in SPEED_FLAGS if f in flags]
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if cap:
        parts.append(f"onednn<={cap}")
    return " ".join(parts)


def precision_cache_path() -> Path:
    """$SKELSSL_CACHE_DIR/precision.json (default ~/.cache/skelssl/precision.json)."""
    root = os.environ.get("SKELSSL_CACHE_DIR", Path.home() / ".cache" / "skelssl")
    return Path(root) / "precision.json"


def cpu_signature() -> str:
    """What decides which precision is fast here: CPU model, speed features
    (cpu_speed_features) and torch version, e.g. "AMD EPYC [avx2] | torch 2.13.0+cpu"."""
    return f"{cpu_model()} [{cpu_speed_features()}] | torch {torch.__version__}"


# Raised when the suite's own kernels change which precision is fast, so that cached trials are
# measured again (2: bf16 attention written out on the CPU, models.base.attention).
TRIAL_VERSION = 2


def precision_cache_key(workload: str) -> str:
    """Cache key of a CPU precision trial: cpu_signature, TRIAL_VERSION, threads and the
    workload (model preset / backbone, clip length, per-process batch)."""
    return (f"{cpu_signature()} | trial v{TRIAL_VERSION} | {torch.get_num_threads()} threads"
            f" | {workload}")


def read_precision_cache() -> dict:
    """The cached trial results (precision_cache_path); {} when missing or unreadable (an
    unreadable cache is measured again)."""
    path = precision_cache_path()
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def cache_precision(key: str, entry: dict) -> None:
    """Add one trial result to the cache. The file is read again just before the write, under
    an exclusive lock where the platform has one (fcntl), so that two runs measuring at the same
    time (a joint and a GCN pretraining started together) both keep their entries instead of
    the later write dropping the earlier one."""
    path = precision_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        write_json(path, {**read_precision_cache(), key: entry})


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
                 steps: int = 2, warmup: int = 1, cutoff: float = 8.0,
                 screen_loss: Callable[[torch.dtype | None], torch.Tensor] | None = None
                 ) -> dict[str, float]:
    """samples/s of the run's own training step on the CPU in each precision.

    step_loss(dtype) -> loss of one forward pass of the run on a fixed batch of `samples`
    samples; each precision runs `warmup` untimed then `steps` timed steps (backward +
    optimizer step). On a CPU where bf16 is emulated (AVX2 only: 16x slower) its three steps
    would cost minutes, so a precision far slower than the first is stopped early:
    - with `screen_loss` (the same step on a few samples), every precision first runs one
      screen step; a later one whose screen step takes over `cutoff` times the first's is
      not run on the full batch, its speed estimated as the first's scaled by the two screen
      times;
    - without it, a later precision whose first warmup step alone takes over `cutoff` times
      the first's timed step is stopped there, its speed that step's.
    A first step is at most a few times slower than the steady ones (one-time kernel setup),
    so the cut-off does not change a choice. Weights, optimizer state and RNG streams are
    restored afterwards (`states_restored`), so the run continues exactly as without the
    trial."""
    def one_step(loss_fn, dtype) -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(dtype).backward()
        optimizer.step()
        return time.perf_counter() - start

    speeds, screens, first = {}, {}, precisions[0]
    with states_restored(model, optimizer):
        for precision in precisions:
            dtype = autocast_dtype(precision, torch.device("cpu"))
            if screen_loss is not None:
                screens[precision] = one_step(screen_loss, dtype)
                if precision != first and screens[precision] > cutoff * screens[first]:
                    speeds[precision] = speeds[first] * screens[first] / screens[precision]
                    continue
            fastest_step = samples / speeds[first] if speeds else None
            for i in range(warmup + steps):
                if i == warmup:
                    tic = time.perf_counter()
                took = one_step(step_loss, dtype)
                if i == 0 and fastest_step is not None and took > cutoff * fastest_step:
                    speeds[precision] = samples / took
                    break
            else:
                speeds[precision] = samples * steps / (time.perf_counter() - tic)
    return speeds


def matmul_gflops(device: torch.device, dtype: torch.dtype | None, n: int = 1024,
                  seconds: float = 0.5, min_repeats: int = 1) -> float:
    """The measured rate of an (n x n) @ (n x n) matrix product in `dtype` (None: fp32) on
    `device`, GFLOP/s (2 n^3 per product): the best of repeated timings after one warm-up,
    repeated for about `seconds` and at least `min_repeats` times."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device, dtype or torch.float32) for _ in range(2))
    out = a @ b  # warm-up
    best, spent, repeats = float("inf"), 0.0, 0
    while spent < seconds or repeats < min_repeats:
        sync()
        tic = time.perf_counter()
        torch.matmul(a, b, out=out)
        sync()
        took = time.perf_counter() - tic
        best, spent, repeats = min(best, took), spent + took, repeats + 1
    return 2 * n ** 3 / best / 1e9


# A precision whose matrix products run this many times slower than the fastest precision's is
# not given a timed training step: a step is mostly products (83 % of the small DSTE's fp32 step
# on an AVX2-only CPU). Measured ratios: bf16 emulated on AVX2 80-85x slower than fp32; AMX bf16
# 9x faster than fp32 (both still timed); AVX-512 bf16 without AMX 0.4-4.5x.
PRODUCT_CUTOFF = 16.0
SCREEN_SIZE = 256   # the screen's product: SCREEN_SIZE x SCREEN_SIZE, about 1 ms in fp32


def product_screen(precisions=("fp32", "bf16"), cutoff: float = PRODUCT_CUTOFF,
                   rates: dict[str, float] | None = None) -> tuple[list[str], dict[str, float]]:
    """(kept precisions, matrix-product GFLOP/s per precision) on the CPU with the current
    threads: SCREEN_SIZE^2 products (matmul_gflops, best of at least 3), a precision kept
    unless its rate is under 1/`cutoff` of the fastest's. `rates` replaces the measurement
    (tests)."""
    if rates is None:
        cpu = torch.device("cpu")
        rates = {p: matmul_gflops(cpu, autocast_dtype(p, cpu), n=SCREEN_SIZE, seconds=0.02,
                                  min_repeats=3) for p in precisions}
    fastest = max(rates[p] for p in precisions)
    kept = [p for p in precisions if rates[p] * cutoff >= fastest]
    return kept, {p: rates[p] for p in precisions}


def layer_trial(width: int = 256, rows: int = 2048,
                precisions=("fp32", "bf16")) -> dict[str, float]:
    """samples/s (rows/s) of a small training step in fp32 and in bf16 autocast: two linear
    layers (width -> 4 width -> width, GELU), forward, backward and an Adam step on `rows`
    rows; about 0.1 s in all where both are fast. The trial of evaluations that have no
    choice of their checkpoint made on this CPU (evaluation_precision)."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(rows, width, generator=gen)

    def step_loss(dtype):
        with precision_context(dtype, torch.device("cpu")):
            return model(x).float().pow(2).mean()
    return trial_speeds(step_loss, model, optimizer, rows, precisions=tuple(precisions), steps=3)


def choose_precision(requested: str, device: torch.device, *, workload: str,
                     trial: Callable[[], dict[str, float]] | None = None,
                     recorded: dict | None = None, info: DistInfo | None = None) -> dict:
    """The precision a run trains in, as a record for its config:
    {"precision", "source", "device", "samples_per_s" (CPU trial), "key" (cache key)}.

    - not `auto`: the flag (source `flag`);
    - `recorded` (a resumed run's choice, recorded_choice): kept with its key (source
      `resumed`);
    - CUDA: `cuda_auto_precision` (source `cuda`);
    - CPU: the cached trial result of this CPU model, torch version, threads and `workload`
      (source `cache`), else the product screen then `trial(precisions=...)` -> samples/s per
      precision, the faster kept, printed and cached in precision_cache_path() (source
      `trial`; cached_trial). In a multi-process CPU run the
      run's own step cannot be timed by one process (its loss gathers over all of them): rank 0
      decides by the cached `layer_trial` instead and the choice is broadcast.
    """
    if requested != "auto":
        return {"precision": requested, "source": "flag", "device": device.type}
    if recorded:
        return {**{k: recorded[k] for k in ("key", "device") if k in recorded},
                "precision": recorded["precision"], "source": "resumed"}
    if device.type == "cuda":
        return {"precision": cuda_auto_precision(device), "source": "cuda", "device": "cuda"}
    if info is not None and info.distributed:
        choice = cached_trial(LAYER_TRIAL, layer_trial) if info.is_main else None
        if choice is not None:
            choice["source"] = f"{choice['source']} of the layer trial (multi-process)"
        shared = [choice]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]
    return cached_trial(workload, trial)


LAYER_TRIAL = "layer trial 256x1024 rows 2048"


def cached_trial(workload: str, trial: Callable[..., dict[str, float]],
                 screen: Callable[[], tuple[list[str], dict[str, float]]] | None = None
                 ) -> dict:
    """The faster precision for `workload` on this CPU, from the cache (source `cache`) or
    measured and cached (source `trial`): `screen()` (product_screen) -> the precisions worth
    a timed step and the product rates; with two or more left, `trial(precisions=kept)` ->
    samples/s per precision and the faster is kept; with one left it is kept untimed. The record
    carries the product rates (`matmul_gflops`) and, per precision dropped by the screen, why
    (`screened_out`)."""
    key = precision_cache_key(workload)
    cache = read_precision_cache()
    if key in cache:
        return {**cache[key], "source": "cache", "device": "cpu", "key": key}
    kept, rates = (screen or product_screen)()
    entry = {"matmul_gflops": {k: round(v, 2) for k, v in rates.items()}}
    fastest = max(kept, key=rates.get)
    dropped = {p: f"{SCREEN_SIZE}x{SCREEN_SIZE} products {rates[p]:.3g} GFLOP/s, "
                  f"{rates[fastest] / rates[p]:.0f}x slower than {fastest}'s {rates[fastest]:.3g}"
               for p in rates if p not in kept}
    if dropped:
        entry["screened_out"] = dropped
    if len(kept) > 1:
        speeds = trial(precisions=tuple(kept))
        entry["samples_per_s"] = {k: round(v, 2) for k, v in speeds.items()}
        best = max(speeds, key=speeds.get)
    else:
        best = kept[0]
    entry = {"precision": best, **entry,
             "measured": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    cache_precision(key, entry)
    return {**entry, "source": "trial", "device": "cpu", "key": key}


def made_here(choice: dict, device: torch.device) -> bool:
    """Whether a run's recorded precision choice holds for `device` on this machine: a CUDA
    choice on CUDA; on the CPU a choice measured on this CPU kind (its cache key starts with
    cpu_signature) or an explicit flag of a CPU run. Records from before the "device" field:
    by their key alone (a flag or resumed record without one counts as made here)."""
    kind = choice.get("device")
    if kind is not None and kind != device.type:
        return False
    key = choice.get("key")
    return key is None or key.startswith(cpu_signature() + " |")


def evaluation_precision(requested: str, device: torch.device, ckpt: dict | None = None,
                         info: DistInfo | None = None) -> dict:
    """The precision of an evaluation (linear probe, fine-tune, KNN, detection), as a record:
    the flag when not `auto`; the checkpoint's choice when it was made for this device and CPU
    kind (made_here; source `checkpoint`), so that an encoder is probed in the precision it
    was trained in; else on CUDA `cuda_auto_precision` and on the CPU the faster in
    `layer_trial` (cached; rank 0 decides in a multi-process run)."""
    if requested != "auto":
        return {"precision": requested, "source": "flag", "device": device.type}
    recorded = recorded_choice(ckpt)
    if recorded and made_here(recorded, device):
        return {"precision": recorded["precision"], "source": "checkpoint",
                "device": device.type}
    if device.type == "cuda":
        return {"precision": cuda_auto_precision(device), "source": "cuda", "device": "cuda"}
    return choose_precision("auto", device, workload=LAYER_TRIAL, trial=layer_trial, info=info)


def describe_precision(choice: dict) -> str:
    """One line: 'precision bf16 (trial: fp32 12.1, bf16 30.8 samples/s)', or where the product
    screen dropped a precision 'precision fp32 (trial: bf16 not timed: 256x256 products 1.3
    GFLOP/s, 85x slower than fp32's 111)'."""
    parts = []
    speeds = choice.get("samples_per_s")
    if speeds:
        parts.append(", ".join(f"{k} {v:.1f}" for k, v in speeds.items()) + " samples/s")
    parts += [f"{k} not timed: {why}" for k, why in (choice.get("screened_out") or {}).items()]
    detail = ": " + "; ".join(parts) if parts else ""
    return f"precision {choice['precision']} ({choice['source']}{detail})"


def precision_context(dtype: torch.dtype | None, device: torch.device):
    """autocast(dtype) on `device`, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 on CUDA (a disabled one passes everything through)."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and dtype == torch.float16)

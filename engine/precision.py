"""Precision: `--precision auto` on the CPU is the faster of fp32 and bf16 in a timed trial of
the run's own step (cached per CPU model, torch version, threads and workload); on CUDA bf16
where supported, else fp16 autocast with a GradScaler; TF32 for autocast runs on CUDA."""
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


def precision_cache_key(workload: str) -> str:
    """Cache key of a CPU precision trial: CPU model and its speed features
    (cpu_speed_features), torch version, threads and the workload (model preset / backbone,
    clip length, per-process batch)."""
    return (f"{cpu_model()} [{cpu_speed_features()}] | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads | {workload}")


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

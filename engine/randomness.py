"""Randomness: every draw of a run derives from its seed (`derive_seed`); the global RNG states
are saved in checkpoints as plain tensors (loadable with weights_only=True) and restored on
resume."""
from __future__ import annotations

import random

import numpy as np
import torch


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

"""Process-wide settings of a training or evaluation program: glibc's malloc tuning and the
torch CPU thread count. Applied by the entry points when they run as programs
(`engine.flags.run_program`), never by a library call: a test or notebook that calls an entry
point's `main(argv)` keeps its own process settings."""
from __future__ import annotations

import argparse
import ctypes

import torch


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


def apply_process_settings(args: argparse.Namespace) -> dict:
    """The settings of a program's flags for this whole process: `--threads N` (N > 0:
    torch.set_num_threads(N); 0: torch's default, one per core) and `keep_freed_memory()`.
    Raises ValueError naming the flag for a negative thread count. Returns what was applied,
    {"threads": torch.get_num_threads(), "malloc": "keep" | "system"}."""
    threads = getattr(args, "threads", 0) or 0
    if threads < 0:
        raise ValueError(f"--threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)
    malloc = "keep" if keep_freed_memory() else "system"
    return {"threads": torch.get_num_threads(), "malloc": malloc}

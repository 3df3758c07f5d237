"""Run directories and their files: run metadata (flags, commit, versions, command), atomic
writes and checkpoints (loaded with weights_only=True), run directories claimed (never a folder
the suite did not write), locked (one writer per job) and cleaned of killed writers' temporary
files, and honest resume (changed flags refused, or applied and recorded with
--resume-changed)."""
from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from engine.distributed import DistInfo, log

if TYPE_CHECKING:
    from engine.loop import TrainState

ROOT = Path(__file__).resolve().parent.parent   # the repository


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
                 "cache_dir", "no_cache", "defaults", "print_config", "num_clips", "clip_fraction",
                 # derived from flags compared themselves (lr, batch size, study flags)
                 "lr_used", "encoder_overrides")
# Flags that define the model's shape: a checkpoint with other values cannot be resumed.
RESUME_FIXED = ("backbone", "preset", "clip_len", "proj_mult", "spatial_channels",
                "partition", "edge_importance", "residual",          # the ST-GCN study's
                "neck", "branches", "branch_weights", "mutual_stream")  # fine-tuning variants


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

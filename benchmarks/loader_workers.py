"""CPU pretraining with and without DataLoader workers, and how the workers start.

    python benchmarks/loader_workers.py --data data/demo [--epochs 3] [--precision fp32]
        [--configs 0 1:fork 1:forkserver] [--threads 0] [-- more pretrain.py flags]

Each configuration is a fresh child process running ``pretrain.py`` (the data's recipe,
``--defaults auto``) for ``--epochs`` epochs with ``--workers N`` and the workers started by
``fork`` or ``forkserver`` (``feeders.dataset.loader_options`` picks forkserver on the CPU;
``fork`` is what it did before). Reported per configuration: wall seconds, the trainer's user
and kernel (sys) CPU seconds, the forked workers' CPU seconds (a forkserver's workers are not
the trainer's children: nan), and samples/s of the last epoch.

A forked worker shares the trainer's heap copy-on-write: while it lives, every heap page a
training step writes is copied by the kernel first, which shows as the trainer's sys time.
On the CPU the step already uses every core, so a worker can only take time from it when a
sample loads in a fraction of a millisecond (``--workers``' CPU default is 0). Prints one
table; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_SAMPLES = re.compile(r"samples/s (\S+)")


def parse_config(text: str) -> tuple[int, str | None]:
    """'0' -> (0, None); '1:fork' -> (1, 'fork'); a bare N > 0 is N:forkserver."""
    workers, _, context = text.partition(":")
    if not workers.isdigit():
        raise ValueError(f"--configs {text!r}: expected N or N:fork / N:forkserver")
    n = int(workers)
    context = context or (None if n == 0 else "forkserver")
    if n > 0 and context not in ("fork", "forkserver"):
        raise ValueError(f"--configs {text!r}: the start method must be fork or forkserver")
    return n, context if n > 0 else None


def child(args) -> None:
    """One configuration in this process: pretrain.py's run with the loader's start method
    forced, then one JSON line of timings on stdout."""
    import feeders.dataset
    import pretrain
    from engine.process import apply_process_settings

    workers, context = parse_config(args.child)
    options = feeders.dataset.loader_options

    def forced(n, device):
        out = options(n, device)
        if n > 0:
            out["multiprocessing_context"] = context
        return out

    pretrain.loader_options = forced
    with tempfile.TemporaryDirectory() as out:
        run_args = pretrain.parse_args([
            "--data", str(args.data), "--defaults", "auto", "--precision", args.precision,
            "--epochs", str(args.epochs), "--milestones", str(args.epochs + 1),
            "--workers", str(workers), "--threads", str(args.threads), "--output", out,
            *args.pretrain_flags])
        apply_process_settings(run_args)
        start = time.perf_counter()
        pretrain.run(run_args)
        wall = time.perf_counter() - start
        lines = (Path(out) / "log.txt").read_text().splitlines()
    speeds = [float(m.group(1)) for line in lines if (m := _SAMPLES.search(line))]
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"wall s": wall, "user s": me.ru_utime, "sys s": me.ru_stime,
                      "workers' CPU s": (kids.ru_utime + kids.ru_stime if context == "fork"
                                         else float("nan")),
                      "last epoch samples/s": speeds[-1] if speeds else float("nan")}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset directory")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    parser.add_argument("--threads", type=int, default=0, help="pretrain.py --threads")
    parser.add_argument("--configs", nargs="+", default=["0", "1:fork", "1:forkserver"],
                        help="N (no workers when 0, else forkserver) or N:fork / N:forkserver")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("pretrain_flags", nargs="*", help="after --: more pretrain.py flags")
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    for config in args.configs:   # fail before the first run
        try:
            parse_config(config)
        except ValueError as err:
            parser.error(str(err))
    print(format_table(args, [run_config(args, config) for config in args.configs]))


def run_config(args, config: str) -> dict:
    """One configuration in a fresh child process -> its row."""
    cmd = [sys.executable, __file__, "--data", str(args.data), "--epochs", str(args.epochs),
           "--precision", args.precision, "--threads", str(args.threads), "--child", config,
           "--", *args.pretrain_flags]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        sys.exit(f"configuration {config} failed:\n{done.stderr[-2000:]}")
    return {"workers": config, **json.loads(done.stdout.strip().splitlines()[-1])}


def format_table(args, rows: list[dict]) -> str:
    lines = [f"pretraining of {args.data}, {args.epochs} epochs, precision {args.precision}, "
             f"threads {args.threads or 'one per core'}"]
    keys = list(rows[0])
    lines.append("  ".join(f"{k:>20}" for k in keys))
    for row in rows:
        lines.append("  ".join(f"{row[k]:>20}" if isinstance(row[k], str) else
                               f"{row[k]:>20.2f}" for k in keys))
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Data pipeline benchmark: converter throughput and the feeder's memory and speed.

(a) ``python -m feeders.prepare --format ntu`` on NTU-format input: the real samples of
    ``../shared/data/ntu_samples`` are copied ``--num-files`` times under distinct
    ``SsssCcccPpppRrrrAaaa`` names (the action code of the source file is kept), then
    converted with each of ``--convert-workers``; sequences/s and the peak RSS of the largest
    process (the converter or one of its readers).
(b) Iterating an NTU-120-sized synthetic dataset (``--num-sequences`` 114,480, generated with
    ``feeders.synthetic``, or ``--data DIR`` to reuse one) through ``PretrainDataset`` and
    ``make_loader`` with ``--loader-workers`` workers, for ``--batches`` batches and, with
    ``--full-epoch``, for a whole epoch. Each run is a fresh child process; reported: samples/s
    (each sample = 4 views), peak RSS of the largest process (``wait4`` maxrss: the main
    process or one worker) and the peak total PSS of the process tree (sampled every 0.5 s
    from ``/proc/*/smaps_rollup``; PSS splits shared pages between processes, so the sum is
    the real footprint). ``--compare-memmap`` adds the same runs reading through the store's
    memmap (``store.sequence``) instead of ``os.pread``, to show why the feeder reads.

Goal: under 2 GB peak whatever the dataset size. Prints one table; asserts nothing.

    .venv/bin/python benchmarks/data_bench.py [--num-files 2000] [--data DIR] [--full-epoch]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NTU_SAMPLES = ROOT.parent / "shared" / "data" / "ntu_samples"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------- process memory


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _tree_pss_kb(pid: int) -> int:
    """Sum of PSS (kB) over ``pid`` and all its descendants (0 for vanished processes)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack.extend(_children(p))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def run_measured(cmd: list[str], cwd: Path) -> dict:
    """Run ``cmd``; wall time, largest-process maxrss (MB), sampled peak tree PSS (MB), output."""
    out = tempfile.TemporaryFile()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    peak_pss = [0]
    done = threading.Event()

    def sample():
        while not done.wait(0.5):
            peak_pss[0] = max(peak_pss[0], _tree_pss_kb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)  # usage covers the child and its waited children
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    text = out.read().decode(errors="replace")
    return {"wall": wall, "maxrss_mb": usage.ru_maxrss / 1024, "pss_mb": peak_pss[0] / 1024,
            "rc": proc.returncode, "output": text}


# ----------------------------------------------------------------------------- (a) converter


def replicate_ntu(dst: Path, num_files: int) -> int:
    """Copy the NTU samples ``num_files`` times with distinct S/C/P/R codes; returns the count."""
    sources = sorted(NTU_SAMPLES.rglob("*.skeleton"))
    if not sources:
        raise FileNotFoundError(f"no .skeleton files under {NTU_SAMPLES}")
    dst.mkdir(parents=True)
    for i in range(num_files):
        src = sources[i % len(sources)]
        j = i // len(sources)  # distinct (setup, camera, performer, replication) per copy
        setup, camera, performer, rep = 1 + j % 32, 1 + (j // 32) % 3, 1 + (j // 96) % 106, 1 + j // 10176
        action = src.name[-12:-9]  # "Aaaa" -> "aaa"
        shutil.copyfile(src, dst / f"S{setup:03d}C{camera:03d}P{performer:03d}R{rep:03d}A{action}.skeleton")
    return num_files


def bench_converter(tmp: Path, num_files: int, workers_list: list[int]) -> list[dict]:
    src = tmp / "ntu_raw"
    replicate_ntu(src, num_files)
    rows = []
    for workers in workers_list:
        out = tmp / f"ntu_store_w{workers}"
        cmd = [sys.executable, "-m", "feeders.prepare", "--format", "ntu", "--src", str(src),
               "--out", str(out), "--workers", str(workers)]
        r = run_measured(cmd, ROOT)
        ok = r["rc"] == 0
        rows.append({"what": "convert ntu (feeders.prepare)",
                     "setting": f"{num_files} files, {workers} worker(s)",
                     "time_s": r["wall"], "rate": f"{num_files / r['wall']:.1f} seq/s" if ok else
                     f"FAILED rc={r['rc']}: {r['output'].strip().splitlines()[-1:]}",
                     "maxrss_mb": r["maxrss_mb"], "pss_mb": r["pss_mb"]})
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    return rows


# ----------------------------------------------------------------------------- (b) feeder memory


def iterate_child(spec: dict) -> None:
    """Child process: iterate the loader as ``spec`` says and print a JSON summary."""
    import numpy as np

    from feeders.dataset import PretrainDataset, make_loader

    class MemmapPretrainDataset(PretrainDataset):
        """Reads through the store's memmap instead of os.pread (for comparison only)."""

        def read_sequence(self, seq_index):
            from feeders.dataset import normalize_first_frame

            seq = np.array(self.store.sequence(seq_index), dtype=np.float32)
            return normalize_first_frame(seq, self.store.layout.center, self.spatial_channels)

    kind = MemmapPretrainDataset if spec["reader"] == "memmap" else PretrainDataset
    dataset = kind(spec["data"], None, spec["clip_len"], seed=0)
    loader = make_loader(dataset, spec["batch_size"], shuffle=True, seed=0, epoch=0,
                         workers=spec["workers"], drop_last=False)
    limit = spec["batches"] or len(loader)
    samples, start = 0, time.perf_counter()
    for step, (views, _) in enumerate(loader):
        samples += views.shape[0]
        if step + 1 >= limit:
            break
    elapsed = time.perf_counter() - start
    print(json.dumps({"samples": samples, "batches": min(limit, len(loader)), "seconds": elapsed,
                      "dataset": len(dataset)}))


def bench_feeder(data: Path, runs: list[tuple[str, int, int]], args) -> list[dict]:
    """runs: (reader, workers, batches or 0 for a full epoch)."""
    rows = []
    for reader, workers, batches in runs:
        spec = {"data": str(data), "reader": reader, "workers": workers, "batches": batches,
                "batch_size": args.batch_size, "clip_len": args.clip_len}
        r = run_measured([sys.executable, __file__, "--child", json.dumps(spec)], ROOT)
        if r["rc"] != 0:
            rate, setting = f"FAILED rc={r['rc']}: {r['output'].strip().splitlines()[-1:]}", ""
            time_s = r["wall"]
        else:
            res = json.loads(r["output"].strip().splitlines()[-1])
            rate = f"{res['samples'] / res['seconds']:.0f} samples/s"
            time_s = res["seconds"]
            span = "full epoch" if batches == 0 else f"{res['batches']} batches"
            setting = (f"{res['dataset']} seqs, {span} of {args.batch_size}, "
                       f"{workers} worker(s), {reader}")
        rows.append({"what": "PretrainDataset + make_loader", "setting": setting,
                     "time_s": time_s, "rate": rate, "maxrss_mb": r["maxrss_mb"],
                     "pss_mb": r["pss_mb"]})
    return rows


def ensure_synthetic(args, tmp: Path) -> Path:
    if args.data:
        return Path(args.data)
    out = tmp / "synthetic"
    cmd = [sys.executable, "-m", "feeders.synthetic", "--out", str(out),
           "--num-sequences", str(args.num_sequences), "--workers", str(args.gen_workers)]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"generated {args.num_sequences} synthetic sequences in {time.perf_counter() - start:.0f} s",
          flush=True)
    return out


# ----------------------------------------------------------------------------- main


def print_table(rows: list[dict]) -> None:
    header = ("benchmark", "setting", "time s", "throughput", "peak RSS MB (largest proc)",
              "peak PSS MB (all procs)")
    cells = [header] + [(r["what"], r["setting"], f"{r['time_s']:.1f}", r["rate"],
                         f"{r['maxrss_mb']:.0f}", f"{r['pss_mb']:.0f}") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    for k, c in enumerate(cells):
        print("| " + " | ".join(s.ljust(w) for s, w in zip(c, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-files", type=int, default=2000, help="NTU files to convert (0: skip)")
    p.add_argument("--convert-workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--data", help="existing dataset directory for (b) (default: generate one)")
    p.add_argument("--num-sequences", type=int, default=114480, help="synthetic size (0: skip b)")
    p.add_argument("--gen-workers", type=int, default=2,
                   help="processes generating the synthetic set (default: %(default)s)")
    p.add_argument("--loader-workers", default="1,2", help="comma-separated DataLoader workers")
    p.add_argument("--batches", type=int, default=100, help="batches per fixed-length run")
    p.add_argument("--full-epoch", action="store_true", help="also iterate one whole epoch")
    p.add_argument("--compare-memmap", action="store_true",
                   help="also run with memmap reads (the largest worker count)")
    p.add_argument("--batch-size", type=int, default=64, help="loader batch size (default: %(default)s)")
    p.add_argument("--clip-len", type=int, default=64, help="frames per clip (default: %(default)s)")
    p.add_argument("--tmp", help="scratch directory (default: the system temp dir)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        iterate_child(json.loads(args.child))
        return

    tmp = Path(tempfile.mkdtemp(prefix="data_bench_", dir=args.tmp))
    rows = []
    try:
        if args.num_files > 0:
            rows += bench_converter(tmp, args.num_files,
                                    [int(w) for w in args.convert_workers.split(",")])
        if args.data or args.num_sequences > 0:
            data = ensure_synthetic(args, tmp)
            workers = [int(w) for w in args.loader_workers.split(",")]
            runs = [("pread", w, args.batches) for w in workers]
            if args.full_epoch:
                runs.append(("pread", max(workers), 0))
            if args.compare_memmap:
                runs.append(("memmap", max(workers), 0 if args.full_epoch else args.batches))
            rows += bench_feeder(data, runs, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows)


if __name__ == "__main__":
    main()

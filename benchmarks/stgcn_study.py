"""The ST-GCN study's tables on NW-UCLA, supervised from scratch (prints tables, asserts nothing).

The KTH reimplementation study of ST-GCN (METHOD.md section 9) compares partition strategies,
edge importance and the residual unit; its KTH skeletons are not obtainable, so the shape of its
tables is reproduced on NW-UCLA. Every candidate is an ST-GCN trained from random weights
(`action_recognition.py --mode finetune --pretrained none`) with the study's augmentation
(`--study-augment`) and dropout 0 (the study's best setting), on view 1 of xview_train, and
evaluated (last epoch) on view 2: partitions (uniform, distance, spatial, symmetric) x residual
unit (original, preact) x edge importance (on, off) = 16 rows. Issue 18's other seed systems are
then added one at a time to the best of those rows, on the same split (a second table): the TPN
neck (`--neck tpn`), DTN-style multi-scale branches (`--branches 16,32,48`) and 3-clip testing
(`--num-clips 3`). The best view-2 configuration of both tables (an addition only where it beats
the row it was added to) is then trained on the whole of xview_train (views 1 and 2) and
reported on view 3 (xview_val, the benchmark's test split), the only run that sees view 3.

    python benchmarks/stgcn_study.py [--data runs/nwucla/data/ucla] [--out runs/nwucla/stgcn_study]
        [--src ../shared/data/nw_ucla] [--epochs N] [--preset small] [--threads N] [--quick]

The view split store comes from benchmarks/nwucla_select.py (`view_split_store`); the store is
converted from --src first when --data does not exist. A finished candidate is read back instead
of re-run. --quick: a dry run end to end (tiny preset, 1 epoch, 2 candidates and the additions)
that checks the pipeline, not the numbers.
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from feeders.layouts import STRATEGIES  # noqa: E402
from nwucla_select import TRAIN_VIEW, VAL_VIEW, view_split_store  # noqa: E402

RESIDUALS = ("original", "preact")
# The study's optimiser is Adam lr 1e-4 at batch 16; ours is the fine-tuning AdamW + warmup +
# cosine of action_recognition.py (evaluation/finetune.py) at a rate for training from scratch.
SCHEDULE = ["--mode", "finetune", "--pretrained", "none", "--backbone", "stgcn",
            "--clip-len", "32", "--normalize", "view", "--batch-size", "16", "--lr", "1e-3",
            "--warmup-epochs", "2", "--layer-decay", "1.0", "--label-smoothing", "0.1",
            "--study-augment", "--gcn-dropout", "0", "--precision", "auto"]


def candidates() -> list[tuple[str, list[str]]]:
    """(name, flags) for partitions x residual x edge importance."""
    rows = []
    for partition, residual, importance in itertools.product(STRATEGIES, RESIDUALS, (True, False)):
        name = f"{partition}, {residual}, edge importance {'on' if importance else 'off'}"
        flags = ["--partition", partition, "--residual", residual,
                 "--edge-importance" if importance else "--no-edge-importance"]
        rows.append((name, flags))
    return rows


# issue 18's other seed systems, each added alone to the best row of candidates()
ADDITIONS = [("TPN neck", ["--neck", "tpn"]),
             ("multi-scale branches 16,32,48", ["--branches", "16,32,48"]),
             ("3 test clips", ["--num-clips", "3"])]


def slug_of(flags: list[str]) -> str:
    """--partition spatial --neck tpn -> partition_spatial_neck_tpn (a run's folder name)."""
    return "_".join(f.lstrip("-").replace("-", "").replace(",", "_") for f in flags)


def run(out: Path, store: Path, split: str, eval_split: str, flags: list[str], args) -> dict:
    """One action_recognition.py run (or its finished result)."""
    result = out / "finetune.json"
    if result.is_file():
        return {**json.loads(result.read_text()), "minutes": float("nan")}
    cmd = [sys.executable, "action_recognition.py", "--data", str(store), "--split", split,
           "--eval-split", eval_split, "--output", str(out), *SCHEDULE, "--preset", args.preset,
           "--epochs", str(args.epochs), "--seed", "0", *flags, "--workers", str(args.workers),
           "--threads", str(args.threads)]
    print(f"== {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return {**json.loads(result.read_text()), "minutes": (time.time() - start) / 60}


def ensure_store(data: Path, src: Path) -> None:
    if (data / "manifest.json").is_file():
        return
    if not src.is_dir():
        raise SystemExit(f"--data {data} does not exist and --src {src} is not the NW-UCLA folder")
    subprocess.run([sys.executable, "-m", "feeders.prepare", "--format", "nwucla", "--src",
                    str(src), "--out", str(data)], cwd=ROOT, check=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / "runs/nwucla/data/ucla",
                   help="the prepared NW-UCLA dataset directory")
    p.add_argument("--src", type=Path, default=ROOT.parent / "shared/data/nw_ucla",
                   help="the raw NW-UCLA folder")
    p.add_argument("--out", type=Path, default=None,
                   help="default runs/nwucla/stgcn_study (runs/nwucla/stgcn_study_quick)")
    p.add_argument("--epochs", type=int, default=60,
                   help="supervised training epochs per candidate")
    p.add_argument("--preset", default="small",
                   help="ST-GCN preset")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: torch default)")
    p.add_argument("--workers", type=int, default=1,
                   help="data loader workers")
    p.add_argument("--quick", action="store_true",
                   help="dry run: tiny preset, 1 epoch, 2 candidates and the additions")
    args = p.parse_args(argv)
    rows = candidates()
    if args.quick:
        args.preset, args.epochs, rows = "tiny", 1, [rows[0], rows[3]]
    out = args.out or ROOT / ("runs/nwucla/stgcn_study_quick" if args.quick
                              else "runs/nwucla/stgcn_study")
    ensure_store(args.data, args.src)
    store = view_split_store(args.data)
    splits = (f"view{TRAIN_VIEW}_train", f"view{VAL_VIEW}_val")
    results = []
    for name, flags in rows:
        r = run(out / "view2" / slug_of(flags), store, *splits, flags, args)
        results.append((name, flags, r["top1"], r["minutes"]))
    best = max(results, key=lambda row: row[2])
    added = []
    for name, flags in ADDITIONS:
        r = run(out / "view2" / slug_of(best[1] + flags), store, *splits, best[1] + flags, args)
        added.append((name, flags, r["top1"], r["minutes"]))
    winner = max(added, key=lambda row: row[2])
    chosen_name, chosen, folder = best[0], best[1], "view3"
    if winner[2] > best[2]:
        chosen_name, chosen = f"{best[0]}, {winner[0]}", best[1] + winner[1]
        folder = f"view3_{slug_of(winner[1])}"
    final = run(out / folder, store, "xview_train", "xview_val", chosen, args)
    print(f"\nST-GCN study on NW-UCLA, supervised from scratch, {args.preset} preset, "
          f"{args.epochs} epochs; flags: {' '.join(SCHEDULE)}")
    print(f"\nSelection: train view {TRAIN_VIEW}, evaluate view {VAL_VIEW} (last epoch)")
    print("| partition, residual unit, edge importance | view-2 top-1 % | minutes |")
    print("|---|---:|---:|")
    for name, _, top1, minutes in results:
        print(f"| {name} | {top1:.1f} | {minutes:.1f} |")
    print(f"\nAdded alone to the best row ({best[0]}: {best[2]:.1f} %), same split")
    print("| addition | flags | view-2 top-1 % | minutes |")
    print("|---|---|---:|---:|")
    for name, flags, top1, minutes in added:
        print(f"| {name} | `{' '.join(flags)}` | {top1:.1f} | {minutes:.1f} |")
    print(f"\nChosen: {chosen_name}; trained on views 1-2 (xview_train), tested on view 3 "
          f"(xview_val): top-1 {final['top1']:.1f} % (last epoch, {final['minutes']:.1f} min)")


if __name__ == "__main__":
    main()

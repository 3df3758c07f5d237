"""Does the --defaults auto recipe generalise? One table over every dataset the suite has.

For each dataset: prepare it (feeders.prepare, or feeders.synthetic), pretrain with the
`--defaults auto` recipe through scripts/pretrain.sh, then linear probe (recog.sh), KNN-1
(knn.sh), fine-tune (finetune.sh), and print one row beside the learning-free floor
(`python -m evaluation.baseline`, raw-coordinate cosine 1-NN) and a supervised baseline trained
from scratch with the fine-tune's budget (finetune.sh RUN scratch). Every hyperparameter comes
from the recipe, chosen on training splits only; every number is of the last epoch on the test
split, which nothing here selects on. Prints nothing but the table at the end (asserts nothing).

Datasets (each skipped with a note when its source is missing):
  ucla      NW-UCLA, ../shared/data/nw_ucla (cross-view, 3D; protocol xv)
  penn      Penn Action, ../shared/data/penn_action (2D; tv)
  utkinect  UTKinect-Action3D labelled segments as clips, ../shared/data/utkinect (cross-subject,
            frontal, 3D), when feeders.prepare has a `utkinect` reader
  synth     the synthetic set (feeders.synthetic, 1200 sequences, xs), under a name of its own
            so that --defaults auto chooses its recipe from the manifest

    python benchmarks/recipes_bench.py [--only ucla penn] [--out runs/recipes] [--gpus cpu]
    python benchmarks/recipes_bench.py --quick     # a few minutes: tiny settings, to check it runs

Budget: the full run pretrains each dataset for the small-set recipe's 1800 steps (40-45 minutes
each on 2 CPU cores) plus its evaluations (a small-set fine-tune runs twice: LP-FT's guard
first fine-tunes on 80 % of the training split): about 4 hours for the four. --quick runs a
tiny DSTE for 1 epoch, 2-epoch linear probes, 1-epoch fine-tunes on at most --quick-sequences sequences
of the synthetic set; its numbers mean nothing. Outputs in <out>/data and <out>/checkpoint;
re-running resumes every stage that has a checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import engine  # noqa: E402
import recipes  # noqa: E402
from feeders.formats import FORMATS  # noqa: E402
from feeders.store import Record, StoreWriter, open_store  # noqa: E402

# name -> (prepare command after `python -m`, source folder, preferred protocol)
DATASETS = {
    "ucla": (["feeders.prepare", "--format", "nwucla", "--src", str(SHARED / "nw_ucla")],
             SHARED / "nw_ucla", "xv"),
    "penn": (["feeders.prepare", "--format", "penn", "--src", str(SHARED / "penn_action")],
             SHARED / "penn_action", "tv"),
    "utkinect": (["feeders.prepare", "--format", "utkinect", "--src",
                  str(SHARED / "utkinect" / "joints")], SHARED / "utkinect", "xs"),
    "synth": (["feeders.synthetic", "--num-sequences", "1200"], None, "xs"),
}
QUICK = {  # tiny settings for --quick: flags after the run name win over the recipe
    "pretrain": ["--preset", "tiny", "--epochs", "1", "--clip-len", "16", "--batch-size", "16",
                 "--save-every", "0"],
    "linear": ["--epochs", "2"],
    "finetune": ["--epochs", "1", "--lp-epochs", "2"],
    "scratch": ["--preset", "tiny", "--clip-len", "16", "--epochs", "1", "--lp-epochs", "2"],
}


def sh(cmd: list[str], env: dict) -> str:
    """Run a command from the repository root; its stdout, or SystemExit with its stderr."""
    print("$", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    if res.returncode:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}")
    return res.stdout


def prepare(name: str, data: Path, args, env: dict) -> bool:
    """Create <out>/data/<name> unless it is there; False (with a note) when it cannot be."""
    if (data / "manifest.json").is_file():
        return True
    command, source, _ = DATASETS[name]
    if command[0] == "feeders.prepare" and command[2] not in FORMATS:
        print(f"[skip] {name}: feeders.prepare has no '{command[2]}' reader")
        return False
    if source is not None and not source.exists():
        print(f"[skip] {name}: {source} not found")
        return False
    if name == "synth" and args.quick:
        command = ["feeders.synthetic", "--num-sequences", str(args.quick_sequences)]
    if name == "utkinect":   # whole streams first, then their labelled segments as clips
        streams = data.with_name("utkstreams")
        if not (streams / "manifest.json").is_file():
            sh([sys.executable, "-m", *command, "--out", str(streams)], env)
        segments_as_clips(streams, data)
        return True
    sh([sys.executable, "-m", *command, "--out", str(data)], env)
    return True


def segments_as_clips(streams: Path, out: Path) -> Path:
    """UTKinect's labelled segments as clips: every maximal run of one action label (1..K, 0 is
    background) of each untrimmed stream of ``streams`` (per-frame ``frame_labels``) becomes one
    sequence of class label - 1, in the split of its stream (cross-subject)."""
    src = open_store(streams)
    split_of = {int(i): name for name, idx in src.splits.items() for i in idx}
    names = src.class_names[1:]
    splits: dict[str, list[int]] = {name: [] for name in src.splits}
    with StoreWriter(out, src.layout, len(names), names, channels=src.channels,
                     bodies=src.bodies, source_format="utkinect-segments") as writer:
        for i in range(len(src)):
            labels = np.asarray(src.frame_array("frame_labels", i)).reshape(-1)
            change = np.flatnonzero(np.diff(labels)) + 1
            for start, end in zip(np.r_[0, change], np.r_[change, labels.size]):
                if labels[start] <= 0 or i not in split_of:
                    continue
                splits[split_of[i]].append(len(writer))
                writer.add(Record(f"{src.names[i]}_{start}", int(labels[start]) - 1,
                                  np.array(src.sequence(i)[start:end]),
                                  subject=int(src.subjects[i]), view=int(src.views[i])))
        writer.close(splits)
    return out


def top1(path: Path) -> float:
    return json.loads(path.read_text())["top1"]


def run_dataset(name: str, args, env: dict) -> dict | None:
    data = args.out / "data" / name
    if not prepare(name, data, args, env):
        return None
    available = recipes.protocols(data)
    protocol = DATASETS[name][2] if DATASETS[name][2] in available else sorted(available)[0]
    run = f"{name}_{protocol}_j_dste"
    train, test = available[protocol]
    ckpt = args.out / "checkpoint" / run
    gpus = args.gpus
    extra = (lambda stage: QUICK[stage]) if args.quick else (lambda stage: [])
    runtime = ["--workers", str(args.workers)]
    start = time.time()
    sh(["bash", "scripts/pretrain.sh", gpus, run, *runtime, *extra("pretrain")], env)
    sh(["bash", "scripts/recog.sh", gpus, run, "last", *runtime, *extra("linear")], env)
    sh(["bash", "scripts/knn.sh", gpus, run, "last", *runtime], env)
    sh(["bash", "scripts/finetune.sh", gpus, run, "last", *runtime, *extra("finetune")], env)
    sh(["bash", "scripts/finetune.sh", gpus, run, "scratch", *runtime, *extra("scratch"),
        "--output", str(ckpt / "scratch")], env)
    floor = float(sh([sys.executable, "-m", "evaluation.baseline", str(data), "--train", train,
                      "--test", test, "--value"], env).strip().splitlines()[-1])
    config = json.loads((ckpt / "config.json").read_text())["config"]
    return {"dataset": name, "protocol": protocol, "recipe": config["defaults"]["name"],
            "floor": floor, "scratch": top1(ckpt / "scratch" / "finetune.json"),
            "linear": top1(ckpt / "linear.json"), "knn1": top1(ckpt / "knn.json"),
            "finetune": top1(ckpt / "finetune.json"), "minutes": (time.time() - start) / 60}


def table(rows: list[dict], command: str) -> str:
    lines = [f"`{command}`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {engine.cpu_model()}, "
             f"{os.cpu_count()} cores", "",
             "| dataset | recipe | floor | scratch | linear | KNN-1 | fine-tune | all above the "
             "floor | minutes |", "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        above = all(r[k] > r["floor"] for k in ("linear", "knn1", "finetune"))
        lines.append(f"| {r['dataset']} ({r['protocol']}) | {r['recipe']} | {r['floor']:.1f} | "
                     f"{r['scratch']:.1f} | {r['linear']:.1f} | {r['knn1']:.1f} | "
                     f"{r['finetune']:.1f} | {'yes' if above else 'no'} | {r['minutes']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(DATASETS), default=list(DATASETS),
                        help="datasets to run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "recipes",
                        help="folder of the prepared data and the runs")
    parser.add_argument("--gpus", default="cpu", help="the scripts' GPUS argument")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings (a few minutes) to check the pipeline end to end")
    parser.add_argument("--quick-sequences", type=int, default=96,
                        help="--quick: sequences of the synthetic set")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    env = {**os.environ, "SKEL_DATA": str(args.out / "data"),
           "SKEL_CHECKPOINTS": str(args.out / "checkpoint"), "SKEL_PYTHON": sys.executable}
    rows = [row for name in args.only if (row := run_dataset(name, args, env)) is not None]
    given = argv if argv is not None else sys.argv[1:]
    command = "python benchmarks/recipes_bench.py " + " ".join(given)
    print("\n" + table(rows, command.strip()))
    if args.quick:
        print("\n(--quick: tiny settings, the numbers mean nothing)")


if __name__ == "__main__":
    main()

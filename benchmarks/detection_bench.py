"""Dense extraction speed and peak memory of the detection pipeline over whole streams.

    python benchmarks/detection_bench.py                         # DSTE small and paper
    python benchmarks/detection_bench.py --presets small --lengths 256 1024 --batch-size 16

For each preset and stream length, one fresh process writes a store holding one synthetic
untrimmed stream of that length (NTU layout, feeders.synthetic streams concatenated and cut),
then runs what action_detection.py runs at test time on a fine-tuned model
(action_detection.predict_streams): WindowDataset windows of L frames every --stride frames,
batched, through the encoder, dense_features and a per-frame linear head, the probabilities
added into running per-frame sums. It prints frames/s (stream frames over the wall time) and
the process's peak resident memory (CPU) or peak allocated CUDA memory, which stay flat as the
stream grows: one batch of windows is in memory at a time. CPU with bf16
autocast (the pipeline's default precision), and CUDA with fp16 autocast when present.
Random weights: speed does not depend on them. Prints one table; never asserts.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python benchmarks/...
import action_detection  # noqa: E402
import engine  # noqa: E402
from evaluation.features import stream_transform  # noqa: E402
from feeders import synthetic  # noqa: E402
from feeders.store import Record, StoreWriter, open_store  # noqa: E402
from feeders.untrimmed import WindowDataset  # noqa: E402
from models import build_encoder  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["small", "paper"], help="DSTE presets")
    p.add_argument("--lengths", type=int, nargs="+", default=[1000, 4000],
                   help="stream lengths in frames")
    p.add_argument("--clip-len", type=int, default=64, help="window length L")
    p.add_argument("--stride", type=int, default=16, help="test window stride (L / 4)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per forward pass")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    return p.parse_args(argv)


def write_stream(root: Path, length: int) -> Path:
    """A store with one untrimmed synthetic stream of exactly ``length`` frames."""
    subjects = synthetic.subject_table(0, 2)
    parts, labels, i = [], [], 0
    while sum(len(p) for p in parts) < length:
        s = synthetic.generate_stream(0, i, subjects)
        parts.append(s.data)
        labels.append(s.label)
        i += 1
    data, frame_labels = np.concatenate(parts)[:length], np.concatenate(labels)[:length]
    with StoreWriter(root, "ntu25", len(synthetic.UNTRIMMED_CLASS_NAMES),
                     list(synthetic.UNTRIMMED_CLASS_NAMES), channels=3, bodies=2,
                     source_format="benchmark") as writer:
        writer.add(Record("stream", 1, data, frame_arrays={"frame_labels": frame_labels}))
        return writer.close({"all": [0]})


def measure(job: tuple) -> dict:
    """In a fresh process: extraction + stitching of one stream; speed and peak memory."""
    preset, length, device_name, args = job
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(device_name)
    dtype = engine.autocast_dtype(engine.evaluation_precision("auto", device)["precision"],
                                  device)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(write_stream(Path(tmp) / "s", length))
        dataset = WindowDataset(store, "all", args.clip_len, args.stride)
        encoder = build_encoder("dste", preset, layout="ntu25", clip_len=args.clip_len,
                                channels=3, bodies=2).to(device)
        head = torch.nn.Linear(encoder.feature_dim, store.num_classes).to(device)
        transform = stream_transform("j", store.layout.parents, 3)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        out = action_detection.predict_streams(encoder, head, dataset, transform, device, dtype,
                                               args.batch_size)[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"preset": preset, "frames": length, "device": device_name,
            "windows": len(dataset), "fps": out.shape[0] / seconds, "seconds": seconds,
            "peak_mb": peak}


def main(argv=None) -> None:
    args = parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ctx = mp.get_context("spawn")
    print(f"| preset | device | stream frames | windows (L={args.clip_len}, stride "
          f"{args.stride}) | frames/s | seconds | peak memory MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for preset in args.presets:
        for device in devices:
            for length in args.lengths:
                with ctx.Pool(1) as pool:   # a fresh process: its peak memory is this case's
                    try:
                        r = pool.apply(measure, ((preset, length, device, args),))
                    except Exception as err:  # a failing cell reads 'error', the table goes on
                        print(f"| {preset} | {device} | {length} | error: {err} | | | |")
                        continue
                print(f"| {r['preset']} | {r['device']} | {r['frames']} | {r['windows']} | "
                      f"{r['fps']:.0f} | {r['seconds']:.1f} | {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()

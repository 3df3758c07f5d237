"""Encoder benchmark: parameters, forward GFLOPs per clip and throughput of every registered encoder.

    python benchmarks/encoders.py                       # all encoders, paper preset, NTU shape
    python benchmarks/encoders.py --presets small tiny --encoders dste sttr --batch-size 8

Throughput is clips/s for forward (eval mode, no grad) and forward+backward (train mode, a
scalar loss on the global feature) on this CPU in fp32 and bf16 autocast, and on CUDA in fp16
and bf16 autocast when available. Prints one table; never asserts (a failing cell reads 'error').
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python benchmarks/encoders.py
from feeders.layouts import get_layout  # noqa: E402
from models import build_encoder, list_encoders  # noqa: E402
from models.base import count_forward_flops, count_parameters  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoders", nargs="+", default=list_encoders(), choices=list_encoders(),
                   help="encoders to time (default: %(default)s)")
    p.add_argument("--presets", nargs="+", default=["paper"], help="encoder sizes (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per step (default: %(default)s)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations (after one warm-up)")
    p.add_argument("--layout", default="ntu25",
                   help="built-in layout name or layout JSON file (default: %(default)s)")
    p.add_argument("--clip-len", type=int, default=64, help="frames per clip (default: %(default)s)")
    p.add_argument("--channels", type=int, default=3, help="input channels (default: %(default)s)")
    p.add_argument("--bodies", type=int, default=2, help="bodies per clip (default: %(default)s)")
    return p.parse_args(argv)


def settings() -> list[tuple[str, torch.dtype | None]]:
    """(device, autocast dtype or None for fp32) pairs to time."""
    cases = [("cpu", None), ("cpu", torch.bfloat16)]
    if torch.cuda.is_available():
        cases += [("cuda", torch.float16), ("cuda", torch.bfloat16)]
    return cases


PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def label(device: str, dtype: torch.dtype | None) -> str:
    return f"{device} {PRECISION_NAMES[dtype]}"


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def clips_per_second(model, x, dtype, train: bool, iters: int) -> float:
    """Mean throughput over `iters` timed steps after one warm-up step."""
    device = x.device.type
    model.train(train)

    def step():
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            with torch.set_grad_enabled(train):
                out = model(x)
        if train:
            out.global_feat.float().square().mean().backward()
            model.zero_grad(set_to_none=True)

    step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(device)
    return iters * x.shape[0] / (time.perf_counter() - start)


def measure(name: str, preset: str, args) -> dict[str, str]:
    """One table row: sizes and every throughput cell, as strings."""
    layout = get_layout(args.layout)
    shape = (args.channels, args.clip_len, layout.num_joints, args.bodies)
    model = build_encoder(
        name, preset, layout=layout, clip_len=args.clip_len, channels=args.channels, bodies=args.bodies
    )
    row = {"encoder": name, "preset": preset, "params (M)": f"{count_parameters(model) / 1e6:.2f}"}
    row["GFLOPs/clip"] = f"{count_forward_flops(model.eval(), torch.randn(1, *shape)) / 1e9:.2f}"
    for device, dtype in settings():
        model = model.to(device)
        x = torch.randn(args.batch_size, *shape, device=device)
        for train, kind in ((False, "fwd"), (True, "fwd+bwd")):
            try:
                value = f"{clips_per_second(model, x, dtype, train, args.iters):.1f}"
            except RuntimeError as err:  # e.g. out of memory: report and go on
                value = "error"
                print(f"{name}/{preset} {label(device, dtype)} {kind}: {err}")
            row[f"{label(device, dtype)} {kind}"] = value
    return row


def print_table(rows: list[dict[str, str]]) -> None:
    columns = list(rows[0])
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in columns]
    print(" | ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(r[c].rjust(w) for c, w in zip(columns, widths)))


def main(argv=None) -> None:
    args = parse_args(argv)
    print(
        f"shape (C, L, V, M) = ({args.channels}, {args.clip_len}, {get_layout(args.layout).num_joints}, "
        f"{args.bodies}), batch {args.batch_size}, {args.iters} iters, {torch.get_num_threads()} CPU threads; "
        "throughput in clips/s"
    )
    rows = [measure(name, preset, args) for preset in args.presets for name in args.encoders]
    print_table(rows)


if __name__ == "__main__":
    main()

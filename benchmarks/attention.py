"""Self-attention on the CPU: torch's fused kernel against the written-out form of models.base.

    python benchmarks/attention.py [--precisions fp32 bf16] [--threads 1] [--step]

models.base.attention computes softmax(q k^T / sqrt(d)) v in bf16 / fp16 on the CPU as two
batched products (models.base.attention_products, softmax in fp32) instead of
F.scaled_dot_product_attention, and keeps the fused kernel in fp32: this measures both forms in
both precisions, the numbers behind that choice. For each attention call of a DSTE
pretraining step (batch 64 x 4 views; the DSA branch doubles it; tokens: the clip's frames and
M * V joint tokens; one head of the preset's width) it prints the milliseconds of forward +
backward of both forms, their ratio and the largest difference of the outputs and of q's
gradient. `--step` also times whole pretraining steps of benchmarks/pretrain_step.py with each
form (alternated, so that the machine's drift falls on both), as samples/s and a ratio. Prints
a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
import models.base  # noqa: E402
from feeders.layouts import get_layout  # noqa: E402
from models.dste import PRESETS  # noqa: E402
import pretrain_step as ps  # noqa: E402  (benchmarks/, the script's folder, is on sys.path)
from pretrain_step import print_table  # noqa: E402

BODIES = 2   # as benchmarks/pretrain_step.py builds its encoder

CHOSEN = models.base.attention
WRITTEN_OUT = models.base.attention_products


def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torch's fused kernel, (B, heads, S, d) -> (B, heads, S, d)."""
    return F.scaled_dot_product_attention(q, k, v)


def time_call(fn, q, k, v, dtype, reps: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Best milliseconds of forward + backward of fn(q, k, v) under autocast `dtype` over `reps`
    repetitions (after one warm-up); returns (ms, output, q's gradient) of the last."""
    best = float("inf")
    for _ in range(reps + 1):
        q.grad = None
        tic = time.perf_counter()
        with engine.precision_context(dtype, q.device):
            out = fn(q, k, v)
        out.float().square().sum().backward()
        best = min(best, time.perf_counter() - tic)
    return best * 1e3, out.detach().float(), q.grad.detach().clone()


def call_shapes(preset: str, clip_len: int, joints: int, bodies: int, batch: int) -> list[tuple]:
    """(name, B, S, d) of the attention calls of a DSTE step (CA: B sequences; DSA: 2B)."""
    width = PRESETS[preset]["hidden"]
    rows = []
    for stream, tokens in (("temporal", clip_len), ("spatial", joints * bodies)):
        for branch, b in (("CA", batch), ("DSA", 2 * batch)):
            rows.append((f"{stream} {branch}", b, tokens, width))
    return rows


def kernel_rows(args) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    shapes = call_shapes(args.preset, args.clip_len, get_layout(args.layout).num_joints, BODIES,
                         4 * args.batch_size)
    rows = []
    for precision in args.precisions:
        dtype = engine.autocast_dtype(precision, torch.device("cpu"))
        for name, b, s, d in shapes:
            q, k, v = (torch.randn(b, 1, s, d, generator=gen).requires_grad_() for _ in range(3))
            t_fused, out_f, grad_f = time_call(fused, q, k, v, dtype, args.reps)
            t_mine, out_m, grad_m = time_call(WRITTEN_OUT, q, k, v, dtype, args.reps)
            rows.append({"precision": precision, "call": name, "B x S x d": f"{b} x {s} x {d}",
                         "fused ms": t_fused, "written-out ms": t_mine,
                         "speed-up": t_fused / t_mine,
                         "max |out diff|": f"{(out_f - out_m).abs().max().item():.2e}",
                         "max |grad diff|": f"{(grad_f - grad_m).abs().max().item():.2e}"})
    return rows


def step_rows(args) -> list[dict]:
    """Whole pretraining steps with each form, alternated `args.rounds` times."""
    step_args = ps.build_parser().parse_args(
        ["--preset", args.preset, "--batch-size", str(args.batch_size),
         "--clip-len", str(args.clip_len), "--layout", args.layout])
    device = torch.device("cpu")
    rows = []
    for precision in args.precisions:
        dtype = engine.autocast_dtype(precision, device)
        layout, model, optimizer, views = ps.build(step_args, device)
        scaler = engine.make_scaler(dtype, device)
        model.train()
        spent = {"fused": 0.0, "written-out": 0.0}
        for round_ in range(args.rounds + 1):   # round 0 warms both up, untimed
            for form, fn in (("fused", fused), ("written-out", WRITTEN_OUT)):
                models.base.attention = fn
                try:
                    tic = time.perf_counter()
                    ps.step(model, optimizer, scaler, views, layout, dtype, device, lambda: None)
                    if round_:
                        spent[form] += time.perf_counter() - tic
                finally:
                    models.base.attention = CHOSEN
        rates = {form: args.rounds * args.batch_size / t for form, t in spent.items()}
        rows.append({"precision": precision, "layout": args.layout,
                     "fused samples/s": rates["fused"],
                     "written-out samples/s": rates["written-out"],
                     "speed-up": rates["written-out"] / rates["fused"]})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=("fp32", "bf16"), help="autocast precisions to time")
    parser.add_argument("--preset", default="small", choices=list(PRESETS),
                        help="DSTE preset: the attention's width")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per step (x 4 views)")
    parser.add_argument("--clip-len", type=int, default=32, help="frames: the temporal tokens")
    parser.add_argument("--layout", default="ntu25",
                        help="joints of the clips (2 bodies, as benchmarks/pretrain_step.py)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions of each call")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--step", action="store_true", help="also time whole pretraining steps")
    parser.add_argument("--rounds", type=int, default=3, help="--step: timed steps of each form")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"attention on the CPU, DSTE {args.preset}, {args.threads} thread(s), torch {torch.__version__}")
    print_table(kernel_rows(args))
    if args.step:
        print()
        print_table(step_rows(args))


if __name__ == "__main__":
    main()

"""Throughput of one full USDRL pretraining step (4 views, loss, optimizer).

    python benchmarks/pretrain_step.py [--batch-size 16] [--backbone dste] [--preset paper]
        [--precisions fp32 auto] [--steps 3] [--profile]

For each device (CPU, and CUDA when present) and precision: samples/s, seconds per step,
GFLOP per step (torch.utils.flop_counter over the whole step, forward + backward) and achieved
GFLOP/s beside the machine's measured 1024 x 1024 matrix-product rate in the step's precision
(`matmul GFLOP/s`) and the fractions of that rate and of the faster precision's rate
(`of matmul`, `of faster matmul`; goal: 0.8 or more), plus the time of each phase: augment + stream, forward (encoder + projectors), loss,
backward, optimizer, the CPU time spent in the kernel per step, the warm-up steps' seconds and
the process's peak RSS; `--compile` wraps the encoder in torch.compile. Inputs are random clips of NTU shape (3, L, 25, 2); the step is the one of
pretrain.py. `--profile` prints the top operators of one step (torch.profiler).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from feeders.augment import augment_views  # noqa: E402
from feeders.layouts import get_layout  # noqa: E402
from feeders.streams import to_stream  # noqa: E402
from models import build_encoder  # noqa: E402
from models.usdrl import USDRL, usdrl_loss  # noqa: E402

PHASES = ("augment", "forward", "loss", "backward", "optimizer")
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_MATMUL: dict[str, dict[str, float]] = {}


def matmul_rates(device: torch.device) -> dict[str, float]:
    """engine.matmul_gflops (1024 x 1024) of each precision the device's autocast offers (measured once)."""
    if device.type not in _MATMUL:
        dtypes = [None, torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
        _MATMUL[device.type] = {PRECISION_NAMES[d]: engine.matmul_gflops(device, d)
                                 for d in dtypes}
    return _MATMUL[device.type]


def build(args, device: torch.device):
    layout = get_layout(args.layout)
    encoder = build_encoder(args.backbone, args.preset, layout=layout, clip_len=args.clip_len,
                            channels=3, bodies=2, seed=0)
    model = USDRL(encoder).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-5, fused=True)
    views = torch.randn(args.batch_size, 4, 3, args.clip_len, layout.num_joints, 2,
                        generator=torch.Generator().manual_seed(0)).to(device)
    return layout, model, optimizer, views


def step(model, optimizer, scaler, views, layout, dtype, device, sync, times=None):
    """One pretraining step; adds each phase's seconds to `times` when given."""
    marks = [time.perf_counter()]

    def mark():
        if times is not None:
            sync()
            marks.append(time.perf_counter())

    x = augment_views(views, torch.Generator().manual_seed(1))
    b, k = x.shape[:2]
    x = to_stream(x.transpose(0, 1).reshape(k * b, *x.shape[2:]), "j", layout.parents)
    mark()
    with engine.precision_context(dtype, device):
        z = model(x, num_views=k)
    mark()
    loss, _ = usdrl_loss(z)
    mark()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    mark()
    scaler.step(optimizer)
    scaler.update()
    mark()
    if times is not None:
        for name, t0, t1 in zip(PHASES, marks, marks[1:]):
            times[name] += t1 - t0


def count_step_flops(model, optimizer, scaler, views, layout, dtype, device) -> int:
    """FLOPs of one whole step; the CPU fused attention kernels are mapped to torch's formulas."""
    from torch.utils.flop_counter import (FlopCounterMode, sdpa_backward_flop_count,
                                          sdpa_flop_count)

    def forward_flops(q, k, v, *args, out_shape=None, **kwargs):  # arguments arrive as shapes
        return sdpa_flop_count(q, k, v)

    def backward_flops(grad_out, q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, q, k, v)

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: forward_flops,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        step(model, optimizer, scaler, views, layout, dtype, device, lambda: None)
    return counter.get_total_flops()


def bench(args, device: torch.device, precision: str) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # auto: what an evaluation without a checkpoint would take (a cached layer trial on the CPU)
    dtype = engine.autocast_dtype(engine.evaluation_precision(precision, device)["precision"],
                                  device)
    layout, model, optimizer, views = build(args, device)
    scaler = engine.make_scaler(dtype, device)
    model.train()
    flops = count_step_flops(model, optimizer, scaler, views, layout, dtype, device)
    if args.compile:   # after the FLOP count, which runs the eager encoder
        model.encoder = torch.compile(model.encoder)
    warmup_start = time.perf_counter()
    for _ in range(args.warmup):
        step(model, optimizer, scaler, views, layout, dtype, device, sync)
    warmup_s = time.perf_counter() - warmup_start
    times = dict.fromkeys(PHASES, 0.0)
    sync()
    start, kernel = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
    for _ in range(args.steps):
        step(model, optimizer, scaler, views, layout, dtype, device, sync, times)
    elapsed = time.perf_counter() - start
    kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime - kernel
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            step(model, optimizer, scaler, views, layout, dtype, device, sync)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"\n[{device.type} {precision}] top operators of one step")
        print(prof.key_averages().table(sort_by=key, row_limit=args.profile_rows))
    per_step = elapsed / args.steps
    achieved = flops / 1e9 / per_step
    rates = matmul_rates(device)
    own = rates[PRECISION_NAMES[dtype]]
    return {"device": device.type, "threads": torch.get_num_threads() if device.type == "cpu" else "-",
            "precision": f"{precision} ({str(dtype).replace('torch.', '') if dtype else 'fp32'})"
                         + (" compiled" if args.compile else ""),
            "samples/s": args.batch_size / per_step, "s/step": per_step,
            "GFLOP/step": flops / 1e9, "GFLOP/s": achieved,
            "matmul GFLOP/s": own, "of matmul": achieved / own,
            "of faster matmul": achieved / max(rates.values()),
            **{f"{p} s": times[p] / args.steps for p in PHASES},
            "kernel s": kernel / args.steps,  # CPU time in the kernel (page faults, zeroing)
            "warm-up s": warmup_s,   # the untimed steps, torch.compile's compilation included
            "peak RSS GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    cells = [[f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16,
                        help="samples per step (x 4 views) (default: %(default)s)")
    parser.add_argument("--backbone", default="dste", help="encoder (default: %(default)s)")
    parser.add_argument("--preset", default="paper", help="encoder size (default: %(default)s)")
    parser.add_argument("--layout", default="ntu25",
                        help="built-in layout name or layout JSON file (default: %(default)s)")
    parser.add_argument("--clip-len", type=int, default=64, help="frames per clip (default: %(default)s)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"],
                        choices=engine.PRECISIONS, help="precisions to time (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (on a CPU shared with other jobs, 1 can beat all cores: "
                             "every parallel region waits for its slowest, descheduled thread)")
    parser.add_argument("--malloc", choices=("keep", "system"), default="keep",
                        help="keep: engine.keep_freed_memory(), as pretrain.py does; system: "
                             "glibc's defaults (large blocks unmapped on free)")
    parser.add_argument("--compile", action="store_true",
                        help="wrap the encoder in torch.compile (its compilation falls in the "
                             "warm-up steps, column `warm-up s`)")
    parser.add_argument("--no-cuda", action="store_true", help="skip CUDA even when present")
    parser.add_argument("--no-cpu", action="store_true", help="only the CUDA rows")
    parser.add_argument("--profile", action="store_true", help="print the top operators")
    parser.add_argument("--profile-rows", type=int, default=25, help="operators listed by --profile (default: %(default)s)")
    return parser


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    engine.keep_freed_memory(args.malloc == "keep")
    devices = [] if args.no_cpu else [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    print(f"USDRL pretraining step: {args.backbone}/{args.preset}, batch {args.batch_size} x 4 "
          f"views, clip {args.clip_len}, {torch.get_num_threads()} CPU threads, malloc {args.malloc}, torch {torch.__version__}")
    rows = [bench(args, d, p) for d in devices for p in args.precisions]
    if not rows:
        raise SystemExit("pretrain_step.py: no device to time (--no-cpu without CUDA)")
    for device in devices:
        print(f"{device.type} matrix product 1024 x 1024: " + ", ".join(
            f"{k} {v:.0f} GFLOP/s" for k, v in matmul_rates(device).items()))
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()

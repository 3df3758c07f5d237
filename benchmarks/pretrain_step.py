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
pretrain.py. `--profile` prints the top operators of one step (torch.profiler) and, on the CPU,
the matrix products' share of the step's time, their achieved fraction of the 1024 x 1024 rate
and their slowest shapes: whether a step below the 0.8 goal loses in its products or elsewhere.
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
    """engine.matmul_gflops (1024 x 1024) of each precision the device's autocast offers
    (measured once)."""
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


PRODUCT_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def product_operands(name: str, shapes: list) -> list:
    """The two factors' shapes of a matrix-product operator's input shapes: mm / bmm take
    (a, b), addmm / baddbmm (bias, a, b)."""
    return shapes[:2] if name in ("aten::mm", "aten::bmm") else shapes[1:3]


def product_flops(name: str, shapes: list) -> int:
    """FLOPs of one call of a matrix-product operator from its input shapes: mm (m, k) @ (k, n)
    and addmm (bias, (m, k), (k, n)): 2 m k n; bmm (b, m, k) @ (b, k, n) and baddbmm: 2 b m k n."""
    a, b = product_operands(name, shapes)
    return 2 * a[-1] * b[-1] * (a[0] * a[1] if len(a) == 3 else a[0])


def product_summary(events) -> dict:
    """Where a CPU step's time goes between matrix products and the rest, from a profile's
    key_averages(group_by_input_shape=True): {"step_ms" (self CPU time of all operators),
    "product_ms", "product_gflops" (their achieved rate), "shapes": [(name, shapes, calls, ms,
    GFLOP/s)] slowest rate first}."""
    total, product_ms, flops, shapes = 0.0, 0.0, 0, []
    for e in events:
        ms = e.self_cpu_time_total / 1e3
        total += ms
        if e.key in PRODUCT_OPS and e.input_shapes and ms > 0:
            f = product_flops(e.key, e.input_shapes) * e.count
            product_ms, flops = product_ms + ms, flops + f
            shapes.append((e.key, e.input_shapes, e.count, ms, f / ms / 1e6))
    shapes.sort(key=lambda row: row[4])
    return {"step_ms": total, "product_ms": product_ms,
            "product_gflops": flops / product_ms / 1e6 if product_ms else 0.0, "shapes": shapes}


def format_products(summary: dict, rate: float, rows: int = 5) -> str:
    """The step's products against the 1024 x 1024 `rate` (GFLOP/s): their share of the step's
    time, their achieved fraction of the rate, and the `rows` slowest shapes that took over 1 %
    of the step. The whole step's fraction of the rate is about share x fraction (plus what
    the rest, e.g. fused attention, computes)."""
    step_ms, product_ms = summary["step_ms"], summary["product_ms"]
    lines = [f"matrix products: {product_ms:.0f} of {step_ms:.0f} ms self CPU time "
             f"({product_ms / step_ms:.0%}), {summary['product_gflops']:.0f} GFLOP/s = "
             f"{summary['product_gflops'] / rate:.2f} of the 1024 x 1024 rate ({rate:.0f}); "
             f"the rest {step_ms - product_ms:.0f} ms"]
    slow = [r for r in summary["shapes"] if r[3] > 0.01 * step_ms][:rows]
    for name, shapes, calls, ms, gflops in slow:
        factors = " @ ".join("x".join(map(str, shape)) for shape in product_operands(name, shapes))
        lines.append(f"  {name[6:]:7s} {factors}  {calls} calls  {ms:.1f} ms  {gflops:.0f} GFLOP/s")
    return "\n".join(lines)


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
        with profile(activities=acts, record_shapes=device.type == "cpu") as prof:
            step(model, optimizer, scaler, views, layout, dtype, device, sync)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"\n[{device.type} {precision}] top operators of one step")
        print(prof.key_averages().table(sort_by=key, row_limit=args.profile_rows))
        if device.type == "cpu":
            print(format_products(product_summary(prof.key_averages(group_by_input_shape=True)),
                                  matmul_rates(device)[PRECISION_NAMES[dtype]]))
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

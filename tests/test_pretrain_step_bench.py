"""benchmarks/pretrain_step.py: the products' FLOPs from operator shapes, the split of a
profiled step between matrix products and the rest, and the whole benchmark on a tiny DSTE."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("pretrain_step_bench",
                                                  ROOT / "benchmarks" / "pretrain_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_product_flops_from_shapes(bench):
    assert bench.product_flops("aten::mm", [[64, 32], [32, 16]]) == 2 * 64 * 32 * 16
    assert bench.product_flops("aten::addmm", [[16], [64, 32], [32, 16], [], []]) == 2 * 64 * 32 * 16
    assert bench.product_flops("aten::bmm", [[5, 64, 32], [5, 32, 16]]) == 5 * 2 * 64 * 32 * 16
    assert bench.product_flops("aten::baddbmm", [[5, 64, 16], [5, 64, 32], [5, 32, 16], [], []]) \
        == 5 * 2 * 64 * 32 * 16


def test_product_summary_of_a_profile_counts_every_product_and_the_rest(bench):
    a, b, bias = torch.randn(256, 128), torch.randn(128, 64), torch.randn(64)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(3):
            torch.mm(a, b)
        torch.addmm(bias, a, b)
        torch.exp(a)
    summary = bench.product_summary(prof.key_averages(group_by_input_shape=True))
    calls = {(name, str(shapes[:3])): n for name, shapes, n, _, _ in summary["shapes"]}
    assert calls[("aten::mm", str([[256, 128], [128, 64]]))] == 3
    assert calls[("aten::addmm", str([[64], [256, 128], [128, 64]]))] == 1
    flops = 4 * 2 * 256 * 128 * 64
    assert summary["product_gflops"] == pytest.approx(flops / summary["product_ms"] / 1e6)
    assert 0 < summary["product_ms"] < summary["step_ms"]        # exp is the rest
    rates = [row[4] for row in summary["shapes"]]
    assert rates == sorted(rates)                                # slowest first
    line = bench.format_products(summary, rate=100.0).splitlines()[0]
    assert line.startswith(f"matrix products: {summary['product_ms']:.0f} of ")
    assert f"= {summary['product_gflops'] / 100.0:.2f} of the 1024 x 1024 rate (100)" in line


def test_the_benchmark_on_a_tiny_dste_prints_the_product_split(bench, capsys):
    rows = bench.main(["--preset", "tiny", "--batch-size", "2", "--clip-len", "8", "--steps", "1",
                       "--warmup", "0", "--precisions", "fp32", "--profile", "--profile-rows", "2",
                       "--no-cuda"])
    out = capsys.readouterr().out
    assert "matrix products: " in out and "of the 1024 x 1024 rate" in out
    (row,) = rows
    assert row["samples/s"] > 0 and row["GFLOP/step"] > 0
    assert row["of matmul"] == pytest.approx(row["GFLOP/s"] / row["matmul GFLOP/s"])

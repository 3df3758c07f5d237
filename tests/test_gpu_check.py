"""benchmarks/gpu_check.sh --dry-run passes on a CPU machine: every command of the GPU check
parses with its entry point's own parser; a flag that does not parse fails it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "SKEL_PYTHON": sys.executable, "GPU_CHECK_DIR": str(tmp_path / "gc")}
    out = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "dry run: every command parses" in out.stdout
    for name in ("pretrain_fp16", "pretrain_bf16", "resumed_on_cuda", "nccl_syncbn_ddp",
                 "knn_on_gpu", "pretrain_step_bench", "pretrain_step_compiled", "encoders_bench"):
        assert f"dry-run ok   {name}" in out.stdout
    assert not (tmp_path / "gc" / "data").exists()  # nothing was run
    bad = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--bogus"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage:" in bad.stderr


def test_a_flag_that_does_not_parse_fails_the_dry_run(tmp_path):
    listing = tmp_path / "commands.txt"
    listing.write_text("good pretrain.py --data d --output o --precision bf16\n"
                       "bad pretrain.py --data d --output o --precision fp8\n")
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "parse", str(listing)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "dry-run ok   good" in out.stdout and "dry-run FAIL bad" in out.stdout

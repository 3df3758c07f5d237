"""Every Python entry point and benchmark prints its --help (exit 0) with its own usage line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["pretrain.py", "action_recognition.py", "action_retrieval.py", "action_detection.py",
           "benchmarks/data_bench.py", "benchmarks/encoders.py", "benchmarks/eval_bench.py",
           "benchmarks/nwucla_select.py", "benchmarks/pretrain_step.py",
           "benchmarks/detection_speed.py"]
MODULES = ["evaluation.baseline", "evaluation.fusion", "evaluation.report", "feeders.export",
           "feeders.inspect", "feeders.prepare", "feeders.synthetic", "evaluation.detection_floor",
           "feeders.untrimmed"]


@pytest.mark.parametrize("target", SCRIPTS + MODULES)
def test_help(target):
    cmd = [sys.executable, target] if target.endswith(".py") else [sys.executable, "-m", target]
    out = subprocess.run([*cmd, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:") and "--help" in out.stdout
    assert out.stderr == ""

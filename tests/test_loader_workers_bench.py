"""benchmarks/loader_workers.py: its configurations, and a whole run on a tiny DSTE whose
table has one row per configuration with the fork row's workers measured."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from feeders.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("loader_workers_bench",
                                                  ROOT / "benchmarks" / "loader_workers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configurations(bench):
    assert bench.parse_config("0") == (0, None)
    assert bench.parse_config("2") == (2, "forkserver")
    assert bench.parse_config("1:fork") == (1, "fork")
    assert bench.parse_config("3:forkserver") == (3, "forkserver")
    for bad in ("x", "1:spawn", "-1"):
        with pytest.raises(ValueError, match="--configs"):
            bench.parse_config(bad)
    with pytest.raises(SystemExit):
        bench.main(["--data", "unused", "--configs", "1:spawn"])


def test_whole_benchmark_on_a_tiny_dste(bench, tmp_path, capsys):
    data = write_synthetic(tmp_path / "demo", num_sequences=24, seed=0)
    bench.main(["--data", str(data), "--epochs", "2", "--threads", "1",
                "--configs", "0", "1:fork", "1:forkserver", "--",
                "--preset", "tiny", "--clip-len", "8", "--batch-size", "4"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"pretraining of {data}, 2 epochs, precision fp32, threads 1")
    header = lines[1].split()
    assert header[:3] == ["workers", "wall", "s"]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[2:]}
    assert list(rows) == ["0", "1:fork", "1:forkserver"]
    for name, (wall, user, sys_, workers_cpu, speed) in rows.items():
        assert wall > 0 and user > 0 and sys_ >= 0 and speed > 0
        assert math.isnan(workers_cpu) == (name != "1:fork")   # forkserver's are not children
    assert rows["1:fork"][3] > 0

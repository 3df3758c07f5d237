"""`--precision auto`: on the CPU a timed trial of the run's own step in fp32 and bf16, the
faster kept, recorded in the run's config and cached; the trial leaves the run exactly as it
would be without it; a resumed run keeps its precision; CUDA picks bf16 or fp16."""
from __future__ import annotations

import json

import pytest
import torch

import engine
import pretrain
from feeders.synthetic import write_synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synthetic") / "demo", num_sequences=16, seed=0)


def flags(data, out, *extra):
    return ["--data", str(data), "--output", str(out), "--backbone", "dste", "--preset", "tiny",
            "--clip-len", "8", "--batch-size", "4", "--workers", "0", "--seed", "2",
            "--milestones", "1", *extra]


def test_auto_trial_is_recorded_cached_and_leaves_the_run_unchanged(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SKELSSL_CACHE_DIR", str(tmp_path / "cache"))
    pretrain.main(flags(data, tmp_path / "auto", "--epochs", "1"))
    choice = json.loads((tmp_path / "auto" / "config.json").read_text())["precision_choice"]
    assert choice["source"] == "trial" and choice["precision"] in ("fp32", "bf16")
    speeds = choice["samples_per_s"]
    assert set(speeds) == {"fp32", "bf16"} and all(v > 0 for v in speeds.values())
    assert choice["precision"] == max(speeds, key=speeds.get)  # the faster one
    cache = json.loads((tmp_path / "cache" / "precision.json").read_text())
    entry = cache[choice["key"]]
    assert entry["precision"] == choice["precision"] and engine.cpu_model() in choice["key"]
    assert torch.__version__ in choice["key"] and "dste/tiny" in choice["key"]
    # the same run with the chosen precision given as a flag: identical weights (the trial
    # changed neither the weights, nor the optimizer state, nor any random stream)
    pretrain.main(flags(data, tmp_path / "flag", "--epochs", "1", "--precision", choice["precision"]))
    got = engine.load_checkpoint(tmp_path / "auto" / "last.pt")
    want = engine.load_checkpoint(tmp_path / "flag" / "last.pt")
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
    assert torch.equal(got["rng"]["torch"], want["rng"]["torch"])
    # a second run finds the cache and skips the trial
    pretrain.main(flags(data, tmp_path / "again", "--epochs", "1"))
    again = json.loads((tmp_path / "again" / "config.json").read_text())["precision_choice"]
    assert again["source"] == "cache" and again["precision"] == choice["precision"]


def test_resume_keeps_the_precision_of_the_run(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SKELSSL_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    pretrain.main(flags(data, out, "--epochs", "1"))  # auto: a trial decides
    first = engine.recorded_precision(engine.load_checkpoint(out / "last.pt"))
    assert first in ("fp32", "bf16")
    (tmp_path / "cache" / "precision.json").unlink()  # a trial now would be seen

    def no_trial(*args, **kwargs):
        raise AssertionError("a resumed run must not time its precision again")

    monkeypatch.setattr(engine, "trial_speeds", no_trial)
    pretrain.main(flags(data, out, "--epochs", "2"))  # the same command resumes
    choice = json.loads((out / "config.json").read_text())["precision_choice"]
    assert choice == {"precision": first, "source": "resumed"}
    assert engine.recorded_precision(engine.load_checkpoint(out / "last.pt")) == first


def test_cache_key_tells_cpus_with_and_without_amx_apart(monkeypatch):
    """A generic model name ("Intel(R) Xeon(R) Processor") covers CPUs with and without AMX,
    where bf16 is 10x faster or 2x slower than fp32: the key holds the CPU's speed flags and
    oneDNN's ISA cap, so neither machine reads the other's trial from a shared cache."""
    cpuinfo = {"amx": "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse2 avx2 "
                      "avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8\n",
               "no amx": "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse2 avx2 "
                         "avx512f avx512bw avx512_bf16\n"}
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    keys = {}
    for kind in cpuinfo:
        monkeypatch.setattr(engine.precision, "cpuinfo_text", lambda kind=kind: cpuinfo[kind])
        keys[kind] = engine.precision_cache_key("dste/small")
        assert engine.cpu_model() == "Intel(R) Xeon(R) Processor"
    assert engine.cpu_speed_features() == "avx2 avx512f avx512_bf16"  # the last one read
    assert keys["amx"].startswith("Intel(R) Xeon(R) Processor [avx2 avx512f avx512_bf16 "
                                  "amx_bf16 amx_tile] | torch ")
    assert keys["amx"] != keys["no amx"]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # AMX turned off for oneDNN
    assert engine.precision_cache_key("dste/small") != keys["no amx"]
    assert engine.cpu_speed_features().endswith("onednn<=AVX512_CORE_BF16")


def test_trial_speeds_restore_states():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    x = torch.randn(16, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    def step_loss(dtype):
        with engine.precision_context(dtype, torch.device("cpu")):
            return (model(x) + torch.rand(1)).float().square().mean()

    speeds = engine.trial_speeds(step_loss, model, opt, samples=16)
    assert set(speeds) == {"fp32", "bf16"} and min(speeds.values()) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert opt.state_dict()["state"] == {} and torch.equal(torch.get_rng_state(), rng)


def test_cuda_choice_and_flags(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert engine.choose_precision("auto", cuda, workload="w") == {"precision": "bf16", "source": "cuda"}
    assert engine.autocast_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert engine.choose_precision("auto", cuda, workload="w")["precision"] == "fp16"
    assert engine.autocast_dtype("auto", cuda) == torch.float16
    assert engine.choose_precision("fp32", cuda, workload="w") == {"precision": "fp32", "source": "flag"}
    assert engine.autocast_dtype("auto", torch.device("cpu"), recorded="fp32") is None
    assert not engine.enable_tf32(torch.device("cpu"), "bf16")

"""`--precision auto`: on the CPU a timed trial of the run's own step in fp32 and bf16, the
faster kept, recorded in the run's config and cached; the trial leaves the run exactly as it
would be without it and stops a precision that is far slower after one step; two runs
measuring at once both keep their cache entries; a resumed run keeps its precision;
evaluations take their checkpoint's choice only where it was made; CUDA picks bf16 or fp16."""
from __future__ import annotations

import json
import time

import pytest
import torch

import engine
import pretrain
from feeders.synthetic import write_synthetic


REAL_SCREEN = engine.precision.product_screen


@pytest.fixture(autouse=True)
def both_precisions_timed(monkeypatch):
    """The product screen as on a CPU where fp32 and bf16 products are both fast, so that the
    tests' trials (real steps or fakes) run in both precisions on any CPU; the tests of the
    screen itself call REAL_SCREEN or give it rates."""
    monkeypatch.setattr(engine.precision, "product_screen",
                        lambda: (["fp32", "bf16"], {"fp32": 100.0, "bf16": 300.0}))


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
    recorded = engine.recorded_choice(engine.load_checkpoint(out / "last.pt"))
    # the first choice's key and device stay, so evaluations can tell where it was made
    assert choice == {"precision": first, "source": "resumed", "device": "cpu",
                      "key": recorded["key"]} and recorded["key"].startswith(engine.cpu_signature())
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
    assert engine.choose_precision("auto", cuda, workload="w") == {"precision": "bf16", "source": "cuda",
                                                                    "device": "cuda"}
    assert engine.autocast_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert engine.choose_precision("auto", cuda, workload="w")["precision"] == "fp16"
    assert engine.autocast_dtype("auto", cuda) == torch.float16
    assert engine.choose_precision("fp32", cuda, workload="w") == {"precision": "fp32", "source": "flag",
                                                                    "device": "cuda"}
    assert engine.autocast_dtype("auto", torch.device("cpu"), recorded="fp32") is None
    assert not engine.enable_tf32(torch.device("cpu"), "bf16")


def test_a_far_slower_precision_is_stopped_after_its_first_step():
    """bf16 emulated on an AVX2-only CPU (0.7 against fp32's 11.9 samples/s): its three trial
    steps would cost minutes, one tells. A precision within the cut-off gets all its steps."""
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = {"fp32": 0, "bf16": 0}

    def timed(seconds):
        def step_loss(dtype):
            name = "fp32" if dtype is None else "bf16"
            calls[name] += 1
            time.sleep(seconds[name])
            return model(torch.ones(2, 4)).sum()
        return step_loss

    speeds = engine.trial_speeds(timed({"fp32": 0.01, "bf16": 0.2}), model, opt, samples=8)
    assert calls == {"fp32": 3, "bf16": 1}            # warmup + 2 timed; the first step only
    assert speeds["bf16"] < 8 / 0.2 and speeds["fp32"] > 10 * speeds["bf16"]
    calls.update(fp32=0, bf16=0)
    speeds = engine.trial_speeds(timed({"fp32": 0.01, "bf16": 0.03}), model, opt, samples=8)
    assert calls == {"fp32": 3, "bf16": 3} and speeds["fp32"] > speeds["bf16"]
    # with a screen step on a few samples first (what pretraining gives): the slow precision
    # never runs the whole batch, its speed scaled from the two screen steps
    screens = {"fp32": 0, "bf16": 0}

    def screen(dtype):
        screens["fp32" if dtype is None else "bf16"] += 1
        time.sleep(0.005 if dtype is None else 0.1)
        return model(torch.ones(1, 4)).sum()

    calls.update(fp32=0, bf16=0)
    speeds = engine.trial_speeds(timed({"fp32": 0.01, "bf16": 0.2}), model, opt, samples=8,
                                 screen_loss=screen)
    assert calls == {"fp32": 3, "bf16": 0} and screens == {"fp32": 1, "bf16": 1}
    assert speeds["fp32"] / 30 < speeds["bf16"] < speeds["fp32"] / 8   # about 1/20
    calls.update(fp32=0, bf16=0)
    speeds = engine.trial_speeds(timed({"fp32": 0.01, "bf16": 0.005}), model, opt, samples=8,
                                 screen_loss=lambda dtype: time.sleep(0.005) or
                                 model(torch.ones(1, 4)).sum())
    assert calls == {"fp32": 3, "bf16": 3} and speeds["bf16"] > speeds["fp32"]


def test_two_runs_measuring_at_once_both_keep_their_cache_entry(tmp_path, monkeypatch):
    """A joint and a GCN pretraining started together on a fresh machine: the GCN run's trial
    result was lost because the other run wrote the cache it had read before its trial."""
    monkeypatch.setenv("SKELSSL_CACHE_DIR", str(tmp_path))
    cpu = torch.device("cpu")

    def trial_while_another_run_writes(precisions):
        engine.choose_precision("auto", cpu, workload="other run",
                                trial=lambda precisions: {"fp32": 2.0, "bf16": 1.0})
        return {"fp32": 1.0, "bf16": 3.0}

    choice = engine.choose_precision("auto", cpu, workload="this run",
                                     trial=trial_while_another_run_writes)
    cache = json.loads((tmp_path / "precision.json").read_text())
    assert choice["precision"] == "bf16" and choice["source"] == "trial"
    assert {entry["precision"] for entry in cache.values()} == {"fp32", "bf16"}
    assert cache[engine.precision_cache_key("other run")]["precision"] == "fp32"


def test_a_trial_cached_before_the_kernels_changed_is_measured_again(tmp_path, monkeypatch):
    """The cache key carries TRIAL_VERSION: an entry of an older version of the suite's kernels
    (bf16 attention was slower before it was written out) is not reused."""
    monkeypatch.setenv("SKELSSL_CACHE_DIR", str(tmp_path))
    cpu = torch.device("cpu")
    key = engine.precision_cache_key("dste/small")
    version = f"trial v{engine.precision.TRIAL_VERSION}"
    assert version in key
    old_key = key.replace(version, f"trial v{engine.precision.TRIAL_VERSION - 1}")
    (tmp_path / "precision.json").write_text(json.dumps(
        {old_key: {"precision": "fp32", "samples_per_s": {"fp32": 2.0, "bf16": 1.0}}}))
    trials = []
    choice = engine.choose_precision("auto", cpu, workload="dste/small",
                                     trial=lambda precisions: trials.append(1) or {"fp32": 1.0, "bf16": 3.0})
    assert trials == [1] and choice["precision"] == "bf16" and choice["source"] == "trial"
    again = engine.choose_precision("auto", cpu, workload="dste/small", trial=lambda precisions: 1 / 0)
    assert again["precision"] == "bf16" and again["source"] == "cache"


def test_evaluations_take_the_checkpoint_choice_only_where_it_was_made(tmp_path, monkeypatch):
    """A checkpoint pretrained in bf16 on a CPU where bf16 is fast must not be probed in bf16
    where it is emulated: its choice holds on the same CPU kind; elsewhere the cached layer
    trial decides (here a fake one that finds fp32 faster)."""
    monkeypatch.setenv("SKELSSL_CACHE_DIR", str(tmp_path))
    trials = []
    monkeypatch.setattr(engine.precision, "layer_trial",
                        lambda precisions: trials.append(1) or {"fp32": 5.0, "bf16": 1.0})
    cpu = torch.device("cpu")

    def ckpt(**choice):
        return {"meta": {"precision_choice": choice}}

    here = ckpt(precision="bf16", source="trial", device="cpu",
                key=engine.precision_cache_key("pretrain dste/small"))
    assert engine.evaluation_precision("auto", cpu, here) == {
        "precision": "bf16", "source": "checkpoint", "device": "cpu"}
    elsewhere = ckpt(precision="bf16", source="trial", device="cpu",
                     key="Intel(R) Xeon(R) Platinum [avx2 avx512f avx512_bf16 amx_bf16 amx_tile]"
                         " | torch 2.13.0+cpu | 1 threads | pretrain dste/small")
    on_gpu = ckpt(precision="bf16", source="cuda", device="cuda")
    for other in (elsewhere, on_gpu, None):
        choice = engine.evaluation_precision("auto", cpu, other)
        assert choice["precision"] == "fp32" and choice["source"] in ("trial", "cache")
        assert choice["key"].endswith(engine.precision.LAYER_TRIAL)
    assert len(trials) == 1                                  # measured once, then cached
    # an explicit flag of a CPU run, and a flag given to the evaluation, are kept
    assert engine.evaluation_precision("auto", cpu, ckpt(precision="bf16", source="flag",
                                                         device="cpu"))["precision"] == "bf16"
    assert engine.evaluation_precision("bf16", cpu, elsewhere) == {
        "precision": "bf16", "source": "flag", "device": "cpu"}


def test_feature_cache_keys_differ_by_precision(data):
    """Features extracted in bf16 are not those of fp32: the linear probe's feature cache must
    not hand one to a run in the other."""
    from evaluation.features import cache_key
    from feeders.store import open_store
    from models import build_encoder
    store = open_store(data)
    encoder = build_encoder("dste", "tiny", layout=store.layout, clip_len=8,
                            channels=store.channels, bodies=store.bodies, seed=0)
    keys = {cache_key(encoder, store, "xsub_train", "j", 8, None, dtype=dtype)
            for dtype in (None, torch.float32, torch.bfloat16)}
    assert len(keys) == 2   # None is fp32


def test_the_product_screen_keeps_a_precision_from_a_timed_step_only_when_far_slower():
    """Rates as measured: bf16 emulated on an AVX2-only EPYC (fp32 111, bf16 1.3 GFLOP/s) is
    dropped; AMX (bf16 9x faster than fp32) and AVX-512 bf16 without AMX (bf16 2x slower) keep
    both for the step trial, which decides."""
    screen = REAL_SCREEN
    assert screen(rates={"fp32": 111.0, "bf16": 1.3}) == (["fp32"], {"fp32": 111.0, "bf16": 1.3})
    assert screen(rates={"fp32": 157.0, "bf16": 1407.0})[0] == ["fp32", "bf16"]
    assert screen(rates={"fp32": 92.0, "bf16": 50.0})[0] == ["fp32", "bf16"]
    assert screen(rates={"fp32": 10.0, "bf16": 170.0})[0] == ["bf16"]       # 17x: fp32 dropped
    assert screen(rates={"fp32": 111.0, "bf16": 1.3}, cutoff=100.0)[0] == ["fp32", "bf16"]
    kept, rates = screen()                      # measured on this CPU: both rates real
    assert set(rates) == {"fp32", "bf16"} and all(r > 0 for r in rates.values())
    assert kept and set(kept) <= set(rates) and max(rates, key=rates.get) in kept


def test_matmul_gflops_counts_two_n_cubed_per_product(monkeypatch):
    """GFLOP/s = 2 n^3 / the best time: with perf_counter advancing 0.25 ms per call (so each
    timed product takes 0.25 ms) the rate of a 100 x 100 product is 2e6 / 2.5e-4 = 8 GFLOP/s,
    whatever the machine."""
    clock = iter(i * 2.5e-4 for i in range(1000))
    monkeypatch.setattr(engine.precision.time, "perf_counter", lambda: next(clock))
    rate = engine.matmul_gflops(torch.device("cpu"), None, n=100, seconds=0.0, min_repeats=3)
    assert rate == pytest.approx(2 * 100 ** 3 / 2.5e-4 / 1e9)


def test_a_precision_the_screen_drops_never_runs_a_step(tmp_path, monkeypatch):
    """On an AVX2-only CPU the bf16 step of the demo cost 13-56 s and the fp32 steps 15 s more
    to confirm what the products already say: with one precision left no step is timed; the
    record and the printed line say which was dropped and why."""
    monkeypatch.setenv("SKELSSL_CACHE_DIR", str(tmp_path))
    cpu = torch.device("cpu")
    avx2 = {"fp32": 111.0, "bf16": 1.3}
    monkeypatch.setattr(engine.precision, "product_screen", lambda: REAL_SCREEN(rates=avx2))
    choice = engine.choose_precision("auto", cpu, workload="pretrain dste/small",
                                     trial=lambda precisions: 1 / 0)   # never called
    assert choice["precision"] == "fp32" and choice["source"] == "trial"
    assert choice["matmul_gflops"] == avx2 and "samples_per_s" not in choice
    assert "85x slower than fp32's 111" in choice["screened_out"]["bf16"]
    line = engine.describe_precision(choice)
    assert line.startswith("precision fp32 (trial: bf16 not timed: 256x256 products 1.3 GFLOP/s")
    cached = engine.choose_precision("auto", cpu, workload="pretrain dste/small",
                                     trial=lambda precisions: 1 / 0)
    assert cached["source"] == "cache" and cached["screened_out"] == choice["screened_out"]
    # both kept: the trial is asked for both and its faster one kept, rates recorded beside
    monkeypatch.setattr(engine.precision, "product_screen",
                        lambda: REAL_SCREEN(rates={"fp32": 100.0, "bf16": 400.0}))
    asked = []
    choice = engine.choose_precision(
        "auto", cpu, workload="other", trial=lambda precisions: asked.append(precisions) or
        {"fp32": 20.0, "bf16": 10.0})
    assert asked == [("fp32", "bf16")] and choice["precision"] == "fp32"
    assert choice["samples_per_s"] == {"fp32": 20.0, "bf16": 10.0}
    assert "screened_out" not in choice and choice["matmul_gflops"]["bf16"] == 400.0
    assert engine.describe_precision(choice) == "precision fp32 (trial: fp32 20.0, bf16 10.0 samples/s)"

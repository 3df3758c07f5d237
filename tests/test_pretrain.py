"""pretrain.py end to end on a tiny synthetic dataset: resume replays exactly, the stream reaches
the encoder, a non-finite loss stops cleanly, run metadata is written."""
import json

import pytest
import torch

import engine
import pretrain
from feeders.streams import to_stream
from feeders.synthetic import write_synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synthetic") / "demo", num_sequences=24, seed=0)


def flags(data, out, *extra):
    return ["--data", str(data), "--output", str(out), "--backbone", "dste", "--preset", "tiny",
            "--clip-len", "16", "--batch-size", "4", "--workers", "0", "--seed", "3",
            "--milestones", "1", "--save-every", "1", *extra]


def weights(path):
    return engine.load_checkpoint(path)["model"]


def test_kill_and_resume_replays_exactly(data, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain.main(flags(data, straight, "--epochs", "2"))
    pretrain.main(flags(data, resumed, "--epochs", "1"))          # the run stops after epoch 1
    assert engine.load_checkpoint(resumed / "last.pt")["epoch"] == 1
    state = pretrain.main(flags(data, resumed, "--epochs", "2"))  # same command: resumes
    assert state.epoch == 2
    want, got = weights(straight / "last.pt"), weights(resumed / "last.pt")
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    # training moved the weights, and epoch 2 differs from epoch 1
    first = weights(straight / "epoch_0001.pt")
    assert not all(torch.equal(first[k], want[k]) for k in want)

    meta = json.loads((straight / "config.json").read_text())
    assert meta["config"]["stream"] == "j" and meta["seed"] == 3
    assert meta["versions"]["torch"] == torch.__version__ and meta["git_commit"]
    ckpt = engine.load_checkpoint(straight / "last.pt")
    assert ckpt["meta"]["config"]["batch_size"] == 4
    assert {"optimizer", "scheduler", "scaler", "rng", "epoch"} <= set(ckpt)
    assert any((straight / "tb").iterdir())


def _first_encoder_input(monkeypatch, data, out, stream):
    seen = []
    build = pretrain.build_encoder

    def recording_build(*args, **kwargs):
        enc = build(*args, **kwargs)
        enc.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach().clone()))
        return enc

    monkeypatch.setattr(pretrain, "build_encoder", recording_build)
    pretrain.main(flags(data, out, "--epochs", "1", "--stream", stream))
    return seen[0]


def test_the_stream_reaches_the_encoder(monkeypatch, data, tmp_path):
    joints = _first_encoder_input(monkeypatch, data, tmp_path / "j", "j")
    bones = _first_encoder_input(monkeypatch, data, tmp_path / "b", "b")
    motion = _first_encoder_input(monkeypatch, data, tmp_path / "m", "m")
    from feeders.store import open_store
    parents = open_store(data).layout.parents
    assert not torch.allclose(joints, bones)
    torch.testing.assert_close(bones, to_stream(joints, "b", parents))
    torch.testing.assert_close(motion, to_stream(joints, "m", parents))


def test_non_finite_loss_stops_with_a_message(monkeypatch, data, tmp_path):
    import methods.usdrl
    real_loss = methods.usdrl.usdrl_loss
    calls = []

    def poisoned(z, w):
        total, terms = real_loss(z, w)
        calls.append(1)
        if len(calls) > 4:  # epoch 1 (0-based), step 1: 3 steps per epoch
            terms["xcorr_t"] = terms["xcorr_t"] * float("nan")
            total = total + terms["xcorr_t"]
        return total, terms

    monkeypatch.setattr(methods.usdrl, "usdrl_loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(engine.NonFiniteLoss, match=r"epoch 1 step 1 .*xcorr_t=nan.*last\.pt"):
        pretrain.main(flags(data, out, "--epochs", "3"))
    last = engine.load_checkpoint(out / "last.pt")
    assert last["epoch"] == 1
    first = weights(out / "epoch_0001.pt")
    assert all(torch.equal(first[k], last["model"][k]) for k in first)


def test_bad_flags_give_clear_errors(data, tmp_path):
    with pytest.raises(SystemExit):
        pretrain.main(flags(data, tmp_path, "--backbone", "resnet"))
    with pytest.raises(ValueError, match="fewer than one batch"):
        pretrain.main(flags(data, tmp_path, "--batch-size", "4000"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        pretrain.main(flags(data, tmp_path, "--resume", str(tmp_path / "nope.pt")))
    with pytest.raises(ValueError, match=r"--rotate must be in \[0, 180\] degrees, got -5"):
        pretrain.main(flags(data, tmp_path, "--rotate", "-5"))
    with pytest.raises(ValueError, match="--min-crop must be >= 1 frame, got 0"):
        pretrain.main(flags(data, tmp_path, "--min-crop", "0"))


def test_min_crop_reaches_the_dataset(monkeypatch, data, tmp_path):
    made = []

    class Recording(pretrain.PretrainDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(pretrain, "PretrainDataset", Recording)
    pretrain.main(flags(data, tmp_path / "a", "--epochs", "1", "--min-crop", "4"))
    pretrain.main(flags(data, tmp_path / "b", "--epochs", "1"))
    assert [d.min_crop for d in made] == [4, None]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["config"]["min_crop"] == 4


def test_rotate_turns_each_view_after_the_augmentations():
    """--rotate: every view (B x 4 clips) turned by its own rotation drawn after the method's
    augmentations from the step generator, before the stream conversion; --rotate 0 draws
    nothing, so runs without it are unchanged. (The usdrl method's inputs, as pretrain_step
    makes them.)"""
    import argparse

    from feeders.augment import augment_views, random_rotation
    from feeders.layouts import NTU25
    from feeders.streams import bones
    from methods.usdrl import USDRLMethod

    views = torch.randn(3, 4, 3, 8, 25, 2, generator=torch.Generator().manual_seed(1))

    def step(stream, rotate, augment=True):
        args = argparse.Namespace(augment=augment, rotate=rotate, seed=7, spatial_channels=3,
                                  stream=stream)
        gen = engine.step_generator(7, 2, 5, 0)
        return USDRLMethod.make_inputs(None, views, gen, args, NTU25.parents)

    def view_major(v):
        return v.transpose(0, 1).reshape(12, 3, 8, 25, 2)

    gen = engine.step_generator(7, 2, 5, 0)
    augmented = view_major(augment_views(views, gen, 3))
    turned = random_rotation(augmented, 30.0, gen, 3)
    assert torch.equal(step("j", 0.0), augmented)
    got = step("j", 30.0)
    torch.testing.assert_close(got, turned)
    assert not torch.allclose(got, augmented)
    # one rotation per clip: distances between joints are kept, clip by clip
    dist = lambda x: torch.linalg.vector_norm(x[:, :, :, :1] - x[:, :, :, 1:2], dim=1)  # noqa: E731
    torch.testing.assert_close(dist(got), dist(augmented), rtol=1e-4, atol=1e-5)
    # bones of the turned clip; without the method's augmentations, the raw views are turned
    torch.testing.assert_close(step("b", 30.0), bones(turned, NTU25.parents, 3))
    raw = random_rotation(view_major(views), 30.0, engine.step_generator(7, 2, 5, 0), 3)
    torch.testing.assert_close(step("j", 30.0, augment=False), raw)


def test_schedules():
    step = dict(schedule="step", epochs=10, milestones=[4, 8], gamma=0.1)
    assert [engine.lr_factor(e, **step) for e in (0, 3.9, 4, 8)] == pytest.approx([1, 1, 0.1, 0.01])
    cos = dict(schedule="cosine", epochs=10, warmup_epochs=2)
    assert [engine.lr_factor(e, **cos) for e in (0, 1, 2, 6, 10)] == pytest.approx([0, 0.5, 1, 0.5, 0])
    assert engine.scaled_lr(5e-4, 512, 256) == pytest.approx(1e-3)
    assert engine.scaled_lr(5e-4, 512, None) == 5e-4
    assert engine.eval_split_for("xview_train") == "xview_val"
    assert engine.eval_split_for("train") == "val"


def test_2d_score_data_keeps_its_confidence_channel(monkeypatch, tmp_path):
    """coco17 (x, y, score): only x, y are augmented and differenced; the score reaches the
    encoder untouched (in [0.1, 1]), and the resolved value is recorded in the config."""
    import numpy as np

    from feeders.store import Record, StoreWriter

    rng = np.random.default_rng(0)
    with StoreWriter(tmp_path / "coco", "coco17", 2, ["a", "b"], channels=3, bodies=1) as w:
        for i in range(8):
            seq = rng.normal(size=(20, 1, 17, 3)).astype(np.float32)
            seq[..., 2] = rng.uniform(0.1, 1.0, size=(20, 1, 17))
            w.add(Record(f"s{i}", i % 2, seq))
        w.close({"xsub_train": list(range(6)), "xsub_val": [6, 7]})
    seen = _first_encoder_input(monkeypatch, tmp_path / "coco", tmp_path / "out", "b")
    score = seen[:, 2]
    assert score.min() >= 0.1 - 1e-6 and score.max() <= 1.0 + 1e-6
    assert seen[:, :2].min() < 0  # the coordinates did change (bones, augmentation)
    meta = json.loads((tmp_path / "out" / "config.json").read_text())
    assert meta["config"]["spatial_channels"] == 2


def test_threads_flag_is_a_program_setting(data, tmp_path, capsys):
    """--threads changes the process only through engine.run_program (the entry points run as
    programs); a library call (main(argv), finish_common_args) leaves the caller's setting."""
    parser = pretrain.build_parser()
    torch.set_num_threads(2)
    engine.finish_common_args(parser.parse_args(flags(data, tmp_path, "--threads", "1")))
    pretrain.main(flags(data, tmp_path / "p", "--threads", "1") + ["--print-config"])
    assert torch.get_num_threads() == 2 and not (tmp_path / "p").exists()
    with pytest.raises(ValueError, match="--threads must be >= 0"):
        engine.finish_common_args(parser.parse_args(flags(data, tmp_path, "--threads", "-1")))
    applied = engine.apply_process_settings(parser.parse_args(flags(data, tmp_path, "--threads", "1")))
    assert torch.get_num_threads() == 1 and applied["threads"] == 1
    assert applied["malloc"] in ("keep", "system")
    torch.set_num_threads(2)
    engine.apply_process_settings(parser.parse_args(flags(data, tmp_path)))  # 0: left as it is
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="--threads must be >= 0"):
        engine.apply_process_settings(parser.parse_args(flags(data, tmp_path, "--threads", "-1")))


def test_workers_default_to_none_on_the_cpu(monkeypatch, data, tmp_path):
    """--workers' default: 0 on the CPU (the step uses every core; a forked or forkserver
    worker only takes time from it), min(4, cores - 1) with CUDA; a given value is kept."""
    parser = pretrain.build_parser()
    given = flags(data, tmp_path)
    at = given.index("--workers")
    base = given[:at] + given[at + 2:]
    assert parser.parse_args(base).workers is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine.finish_common_args(parser.parse_args(base)).workers == 0
    assert engine.finish_common_args(parser.parse_args(base + ["--workers", "3"])).workers == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert engine.finish_common_args(parser.parse_args(base)).workers == 4
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert engine.finish_common_args(parser.parse_args(base)).workers == 1
    with pytest.raises(ValueError, match="--workers must be >= 0"):
        engine.finish_common_args(parser.parse_args(base + ["--workers", "-1"]))


def test_run_program_applies_settings_then_runs(tmp_path):
    """run_program: parse the process's command line, apply --threads, run; a bad value is one
    line `prog: error: ...` with exit status 2, as run_cli."""
    import subprocess
    import sys

    script = """
import argparse, sys, torch, engine
def parse():
    p = argparse.ArgumentParser(); p.add_argument("--threads", type=int, default=0)
    return p.parse_args()
engine.run_program(parse, lambda args: print("threads", torch.get_num_threads()), "prog")
"""
    ok = subprocess.run([sys.executable, "-c", script, "--threads", "1"], capture_output=True,
                        text=True, cwd=engine.ROOT, timeout=120)
    assert ok.returncode == 0 and ok.stdout.split() == ["threads", "1"], ok.stderr
    bad = subprocess.run([sys.executable, "-c", script, "--threads", "-2"], capture_output=True,
                         text=True, cwd=engine.ROOT, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "prog: error: --threads must be >= 0, got -2"


def test_run_program_leaves_the_process_group(tmp_path):
    """A rank's process group is destroyed when its run returns (not left to the interpreter's
    shutdown, where gloo's threads could abort a finished rank)."""
    import argparse

    import torch.distributed as dist

    def run(args):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                                world_size=1)
        assert dist.is_initialized()
        return "done"

    engine.run_program(lambda: argparse.Namespace(threads=0), run, "prog")
    assert not dist.is_initialized()
    engine.leave_process_group()   # no group: nothing to do


def test_entry_points_run_as_programs():
    """Each training / evaluation entry point runs through engine.run_program(parse_args, run,
    ...) and its main(argv) is run(parse_args(argv)): the one place process settings apply."""
    import ast

    for name in ("pretrain.py", "action_recognition.py", "action_retrieval.py",
                 "action_detection.py"):
        tree = ast.parse((engine.ROOT / name).read_text())
        functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert {"parse_args", "run", "main"} <= set(functions), name
        guard = [node for node in tree.body if isinstance(node, ast.If)][-1]
        call = ast.unparse(guard.body[0])
        assert call.startswith("engine.run_program(parse_args, run, "), (name, call)
        returned = [ast.unparse(n.value) for n in ast.walk(functions["main"])
                    if isinstance(n, ast.Return)]
        assert returned == ["run(parse_args(argv))"], (name, returned)


@pytest.mark.parametrize("backbone", ["sttr", "stgcn", "msg3d"])
def test_every_encoder_pretrains_and_probes(backbone, data, tmp_path):
    """The USDRL objective trains each encoder (finite loss, weights move) and the linear probe
    runs on its checkpoint (DSTE is covered by the tests above)."""
    import action_recognition

    out = tmp_path / backbone
    pretrain.main(flags(data, out, "--epochs", "1") + ["--backbone", backbone])
    ckpt = engine.load_checkpoint(out / "last.pt")
    assert ckpt["meta"]["config"]["backbone"] == backbone
    from models import build_encoder
    from feeders.store import open_store
    store = open_store(data)
    init = build_encoder(backbone, "tiny", layout=store.layout, clip_len=16, channels=3,
                         bodies=2, seed=3).state_dict()
    trained = {k[len("encoder."):]: v for k, v in ckpt["model"].items() if k.startswith("encoder.")}
    moved = [k for k, v in init.items() if v.is_floating_point() and not torch.equal(v, trained[k])]
    assert moved, "pretraining changed no encoder weight"
    res = action_recognition.main(["--mode", "linear", "--data", str(data), "--output", str(out),
                                   "--pretrained", "last", "--epochs", "2", "--lr", "0.1",
                                   "--batch-size", "16", "--workers", "0"])
    assert 0.0 <= res["top1"] <= 100.0 and res["epochs"] == 2


def test_keep_freed_memory_cuts_page_faults():
    """keep_freed_memory() lets a training-like loop reuse its large freed blocks; with glibc's
    defaults every 64 MB activation is mapped, faulted in and unmapped again each step."""
    import subprocess
    import sys

    script = """
import resource, sys, torch, engine
torch.set_num_threads(1)
assert engine.keep_freed_memory(sys.argv[1] == 'keep')
def step():  # three large activations alive together, then freed
    a = torch.ones(16 << 20); b = a * 2; c = a + b
    return float(c[0])
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {mode: int(subprocess.run([sys.executable, "-c", script, mode], check=True,
                                        capture_output=True, text=True, cwd=engine.ROOT).stdout)
              for mode in ("keep", "system")}
    pages = 5 * 3 * (64 << 20) // 4096
    assert faults["system"] > 0.9 * pages  # every block faulted in again, every step
    assert faults["keep"] < 0.5 * pages

"""action_recognition.py end to end (linear, finetune, label fractions) and its errors."""
import csv
import json

import numpy as np
import pytest
import torch

import action_recognition as ar
import engine
from evaluation import finetune, recognition
from evaluation.features import CheckpointError
from evaluation.fusion import load_scores
from feeders.store import open_store
from feeders.synthetic import write_synthetic
from models import build_encoder
from models.usdrl import USDRL

TINY = ["--clip-len", "16", "--workers", "0", "--precision", "fp32"]
# finetune_step's flags of the fine-tuning variants (issue 18), all off
VARIANTS_OFF = dict(study_augment=False, neck="none", branches=None, mutual_stream=None,
                    epochs=10, rotate_axes="xyz")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("syn") / "data", 48, seed=0)


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    """A pretrain.py-style checkpoint: USDRL state dict + meta.config (tiny DSTE, bone stream)."""
    store = open_store(data)
    enc = build_encoder("dste", "tiny", layout=store.layout, clip_len=16, channels=3, bodies=2,
                        seed=123)
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    config = {"backbone": "dste", "preset": "tiny", "stream": "b", "clip_len": 16,
              "spatial_channels": None, "data": str(data)}
    engine.save_checkpoint(path, {"model": USDRL(enc).state_dict(), "epoch": 3,
                                  "meta": {"config": config}})
    return path, enc


def run(data, out, *flags):
    return ar.main(["--data", str(data), "--output", str(out), *TINY, *flags])


def test_linear_probe_with_pretrained_checkpoint(data, pretrained, tmp_path):
    path, enc = pretrained
    res = run(data, tmp_path, "--pretrained", str(path), "--epochs", "2", "--lr", "0.1",
              "--val-fraction", "0.5")
    # encoder flags came from the checkpoint
    assert (res["backbone"], res["preset"], res["stream"]) == ("dste", "tiny", "b")
    saved = json.loads((tmp_path / "linear.json").read_text())
    assert saved["top1"] == res["top1"] and saved["epochs"] == 2 and saved["mode"] == "linear"
    assert saved["checkpoint"] == str(path)
    assert (saved["num_train"], saved["num_val"]) == (12, 12)    # 2 per class, 1 to validation
    hist = [h["val_top1"] for h in saved["history"]]
    assert saved["best"]["epoch"] == 1 + hist.index(max(hist))
    assert saved["best"]["val_top1"] == max(hist)
    scores = load_scores(tmp_path / "linear.json")
    store = open_store(data)
    test = store.split_indices("xsub_val")
    assert scores.names.tolist() == np.asarray(store.names)[test].tolist()
    assert scores.labels.tolist() == store.labels[test].tolist()
    top1 = 100 * (scores.scores.argmax(1) == scores.labels).mean()
    assert res["top1"] == pytest.approx(top1)
    rows = list(csv.reader((tmp_path / "linear_confusion.csv").open()))
    assert rows[0][1:] == store.manifest["class_names"]
    cm = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    assert cm.sum(1).tolist() == np.bincount(scores.labels, minlength=12).tolist()
    assert np.trace(cm) == (scores.scores.argmax(1) == scores.labels).sum()
    assert list((tmp_path / "linear" / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "linear_confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the features were cached (train + test) and a second run reuses them
    cached = sorted((tmp_path / "features").glob("*.pt"))
    assert len(cached) == 2
    stamp = [p.stat().st_mtime_ns for p in cached]
    again = run(data, tmp_path, "--pretrained", str(path), "--epochs", "2", "--lr", "0.1",
                "--val-fraction", "0.5")
    assert again["top1"] == res["top1"]
    assert [p.stat().st_mtime_ns for p in cached] == stamp


def test_pretrained_weights_reach_the_encoder(data, pretrained, tmp_path):
    from evaluation.features import build_eval_encoder, read_checkpoint
    path, enc = pretrained
    store = open_store(data)
    loaded = build_eval_encoder({"backbone": "dste", "preset": "tiny", "clip_len": 16},
                                store, seed=0, ckpt=read_checkpoint(path), path=path)
    for (name, a), b in zip(enc.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_semi_supervised_finetune(data, tmp_path):
    res = run(data, tmp_path, "--mode", "finetune", "--backbone", "dste", "--preset", "tiny",
              "--epochs", "1", "--batch-size", "12", "--label-fraction", "0.5",
              "--layer-decay", "0.8", "--drop-path", "0.2")
    assert res["mode"] == "finetune" and res["label_fraction"] == 0.5
    assert res["protocol"] == {"kind": "finetune", "label_fraction": 0.5}
    assert (res["num_train"], res["num_val"]) == (12, 0) and "best" not in res
    labelled = (tmp_path / "finetune_0.5_labelled.txt").read_text().split()
    store = open_store(data)
    train_names = np.asarray(store.names)[store.split_indices("xsub_train")]
    assert len(labelled) == 12 and set(labelled) <= set(train_names)
    labels = dict(zip(train_names, store.labels[store.split_indices("xsub_train")]))
    assert sorted(labels[n] for n in labelled) == list(range(12))    # one per class
    ckpt = engine.load_checkpoint(tmp_path / "finetune_0.5" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["model"]["head.weight"].shape == (12, 64)
    # the same seed draws the same labelled subset
    rerun = recognition.training_positions(store.labels[store.split_indices("xsub_train")],
                                  ar.parse_args(["--data", "x", "--output", "y",
                                                 "--defaults", "none",
                                                 "--label-fraction", "0.5"]))
    assert train_names[rerun[0]].tolist() == labelled


def test_finetune_min_crop_reaches_the_training_crops(data):
    store = open_store(data)
    info = engine.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    cfg = {"clip_len": 16, "spatial_channels": 3, "normalize": "first_frame"}
    for flag, expected in (([], None), (["--min-crop", "4"], 4)):
        args = ar.parse_args(["--data", str(data), "--output", "y", "--mode", "finetune",
                              "--batch-size", "4", "--workers", "0", *flag])
        loader = finetune.finetune_loader(args, store, cfg, info, np.arange(8))
        assert loader.dataset.min_crop == expected and loader.dataset.num_views == 1


def test_confusion_matrix():
    cm = recognition.confusion_matrix(np.array([0, 1, 1, 2, 2]), np.array([0, 1, 2, 2, 0]), 3)
    assert cm.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 1]]


def test_checkpoint_errors(data, pretrained, tmp_path):
    path, _ = pretrained
    out = tmp_path / "run"  # the checkpoints below are the user's files in tmp_path
    with pytest.raises(CheckpointError, match="does not exist"):
        run(data, out, "--pretrained", str(tmp_path / "nope.pt"))
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt.pt could not be loaded"):
        run(data, out, "--pretrained", str(bad))
    with pytest.raises(CheckpointError, match=r"--stream j conflicts .*stream='b'"):
        run(data, out, "--pretrained", str(path), "--stream", "j")
    # weights of another backbone without a config to warn first
    other = build_encoder("sttr", "tiny", layout="ntu25", clip_len=16, channels=3, bodies=2)
    foreign = tmp_path / "sttr.pt"
    engine.save_checkpoint(foreign, {"model": USDRL(other).state_dict()})
    with pytest.raises(CheckpointError, match="does not hold weights of this dste encoder"):
        run(data, out, "--pretrained", str(foreign), "--preset", "tiny")


def test_finetune_may_change_the_stream(data, pretrained, tmp_path, capsys):
    """Fine-tuning starts from the checkpoint's encoder, so --stream may differ from the
    pretraining stream (a bone-pretrained encoder fine-tuned on joints here); the linear probe,
    which keeps the encoder frozen, still refuses (test_checkpoint_errors)."""
    path, enc = pretrained
    res = run(data, tmp_path, "--mode", "finetune", "--pretrained", str(path), "--stream", "j",
              "--epochs", "1", "--batch-size", "12")
    assert (res["stream"], res["pretrained_stream"]) == ("j", "b")
    saved = json.loads((tmp_path / "finetune.json").read_text())
    assert (saved["stream"], saved["pretrained_stream"], saved["preset"]) == ("j", "b", "tiny")
    assert "stream j, clip 16 (the encoder was pretrained on stream b)" in capsys.readouterr().out
    # the other encoder flags still may not differ
    with pytest.raises(CheckpointError, match=r"--clip-len 8 conflicts .*clip_len=16"):
        run(data, tmp_path, "--mode", "finetune", "--pretrained", str(path), "--stream", "j",
            "--clip-len", "8")
    # no stream flag: the checkpoint's, recorded as such
    res = run(data, tmp_path / "same", "--mode", "finetune", "--pretrained", str(path),
              "--epochs", "1", "--batch-size", "12")
    assert (res["stream"], res["pretrained_stream"]) == ("b", "b")
    scratch = run(data, tmp_path / "scratch", "--mode", "finetune", "--backbone", "dste",
                  "--preset", "tiny", "--epochs", "1", "--batch-size", "12")
    assert scratch["pretrained_stream"] is None


def test_free_fields_of_the_encoder_config():
    import argparse

    from evaluation.features import resolve_encoder_config

    ckpt = {"config": {"backbone": "dste", "preset": "tiny", "stream": "j", "clip_len": 16,
                       "spatial_channels": 3, "normalize": "view"}}
    args = argparse.Namespace(backbone=None, preset=None, stream="bm", clip_len=None,
                              spatial_channels=None, normalize=None)
    with pytest.raises(CheckpointError, match=r"--stream bm conflicts"):
        resolve_encoder_config(args, ckpt, "x.pt")
    cfg = resolve_encoder_config(args, ckpt, "x.pt", free_fields=("stream",))
    assert cfg == {**ckpt["config"], "stream": "bm", "encoder_overrides": {}}
    ckpt["config"]["encoder_overrides"] = {"hidden": 24}  # an imported model's width (models.convert)
    assert resolve_encoder_config(args, ckpt, "x.pt", free_fields=("stream",))["encoder_overrides"] == {"hidden": 24}
    args.stream = None  # unset: the checkpoint's
    assert resolve_encoder_config(args, ckpt, "x.pt", free_fields=("stream",))["stream"] == "j"


def test_finetune_validation_and_class_count_mismatch_on_resume(data, tmp_path):
    flags = ["--mode", "finetune", "--backbone", "stgcn", "--preset", "tiny", "--batch-size",
             "6", "--val-fraction", "0.5", "--epochs", "1"]
    res = run(data, tmp_path, *flags)
    assert res["best"]["epoch"] == 1 and "12 training samples" in res["best"]["selected_on"]
    assert engine.load_checkpoint(tmp_path / "finetune" / "best.pt")["epoch"] == 1
    assert (tmp_path / "finetune_best_scores.npz").is_file()
    last = tmp_path / "finetune" / "last.pt"
    ckpt = engine.load_checkpoint(last)
    ckpt["model"]["head.weight"] = ckpt["model"]["head.weight"][:5]
    engine.save_checkpoint(last, ckpt)
    with pytest.raises(CheckpointError, match="head for 5 classes but dataset .* has 12"):
        run(data, tmp_path, *flags[:-1], "2")


def test_finetune_resumes_a_run_older_than_a_flag_at_its_default(data, tmp_path):
    """main hands the parser's defaults to the fine-tune (evaluation.recognition.evaluate ->
    run_finetune -> engine.resume_run): a run from before --flip resumes without it."""
    flags = ["--mode", "finetune", "--backbone", "stgcn", "--preset", "tiny", "--batch-size",
             "6", "--epochs", "1"]
    run(data, tmp_path, *flags)
    last = tmp_path / "finetune" / "last.pt"
    ckpt = engine.load_checkpoint(last)
    del ckpt["meta"]["config"]["flip"]  # a run from before --flip existed
    engine.save_checkpoint(last, ckpt)
    with pytest.raises(ValueError, match="would change the run"):
        run(data, tmp_path, *flags[:-1], "2", "--flip", "0.5")
    assert run(data, tmp_path, *flags[:-1], "2")["epochs"] == 2   # at its default: fine
    assert engine.load_checkpoint(last)["epoch"] == 2


def test_bad_flags(data, tmp_path):
    with pytest.raises(ValueError, match="--label-fraction"):
        run(data, tmp_path, "--label-fraction", "0")
    with pytest.raises(ValueError, match="--min-crop must be >= 1 frame, got 0"):
        run(data, tmp_path, "--min-crop", "0")
    with pytest.raises(ValueError, match="--drop-path applies to dste/sttr"):
        run(data, tmp_path, "--mode", "finetune", "--backbone", "stgcn", "--preset", "tiny",
            "--drop-path", "0.2", "--batch-size", "8", "--epochs", "1")


def test_recog_and_finetune_scripts(data, pretrained, tmp_path):
    """scripts/recog.sh (checkpoint by epoch number) and finetune.sh scratch, on one CPU."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(ar.__file__).resolve().parent
    shutil.copytree(data, tmp_path / "data" / "demo")
    run_dir = tmp_path / "ckpt" / "demo_xs_b_dste"
    run_dir.mkdir(parents=True)
    shutil.copy(pretrained[0], run_dir / "epoch_0003.pt")
    env = {**os.environ, "SKEL_DATA": str(tmp_path / "data"),
           "SKEL_CHECKPOINTS": str(tmp_path / "ckpt")}

    def script(*argv):
        res = subprocess.run(["bash", *argv], cwd=root, env=env, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        return res

    script("scripts/recog.sh", "cpu", "demo_xs_b_dste", "3", "--epochs", "1", "--workers", "0")
    saved = json.loads((run_dir / "linear.json").read_text())
    assert saved["checkpoint"] == str(run_dir / "epoch_0003.pt")
    # the small-set linear recipe (recipes.py): lr 1.0 at batch 64, cut to the tiny set's size
    import recipes
    batch = recipes.small_batch(saved["num_train"])
    assert batch < 64 and saved["flags"]["defaults"]["name"] == "demo"
    assert (saved["lr"], saved["batch_size"], saved["epochs"], saved["stream"]) == (1.0, batch, 1, "b")
    script("scripts/finetune.sh", "cpu", "demo_xs_b_dste", "scratch", "--preset", "tiny",
           "--clip-len", "8", "--epochs", "1", "--batch-size", "12", "--workers", "0")
    saved = json.loads((run_dir / "finetune.json").read_text())
    assert (saved["checkpoint"], saved["preset"], saved["clip_len"]) == ("scratch", "tiny", 8)
    # the small-set fine-tune defaults (finetune_defaults): lr 1e-3, shear 1.0, on this
    # cross-view 3D set a rotation of up to 90 degrees about y, the whole training split (no
    # hold-out)
    assert saved["lr"] == 1e-3 and saved["num_val"] == 0 and "best" not in saved
    assert (saved["flags"]["shear"], saved["flags"]["rotate"], saved["flags"]["rotate_axes"]) \
        == (1.0, 90.0, "y")
    # another run name's stream from this run's (bone) pretraining, as benchmarks/nwucla.sh does
    script("scripts/finetune.sh", "cpu", "demo_xs_j_dste", str(run_dir / "epoch_0003.pt"),
           "--epochs", "1", "--batch-size", "12", "--workers", "0")
    saved = json.loads((tmp_path / "ckpt" / "demo_xs_j_dste" / "finetune.json").read_text())
    assert (saved["stream"], saved["pretrained_stream"], saved["preset"]) == ("j", "b", "tiny")


def test_unset_spatial_channels_come_from_the_layout(tmp_path):
    """From scratch on 2D+score data, only x, y are coordinates (the layout's dims)."""
    import argparse

    import numpy as np

    from evaluation.features import resolve_encoder_config
    from feeders.store import Record, StoreWriter, open_store

    with StoreWriter(tmp_path / "coco", "coco17", 2, ["a", "b"], channels=3, bodies=1) as w:
        w.add(Record("s0", 0, np.ones((4, 1, 17, 3), np.float32)))
        w.close({"train": [0]})
    args = argparse.Namespace(backbone=None, preset=None, stream=None, clip_len=None,
                              spatial_channels=None, normalize=None)
    cfg = resolve_encoder_config(args, None, None, open_store(tmp_path / "coco"))
    assert cfg["spatial_channels"] == 2
    args.spatial_channels = 3  # an explicit flag wins
    assert resolve_encoder_config(args, None, None, open_store(tmp_path / "coco"))["spatial_channels"] == 3


def test_normalisation_comes_from_the_checkpoint():
    """Evaluation reads clips the way the encoder was pretrained on them."""
    import argparse

    from evaluation.features import resolve_encoder_config

    args = argparse.Namespace(backbone=None, preset=None, stream=None, clip_len=None,
                              spatial_channels=None, normalize=None)
    ckpt = {"config": {"backbone": "dste", "preset": "tiny", "stream": "j", "clip_len": 16,
                       "spatial_channels": 3, "normalize": "view"}}
    assert resolve_encoder_config(args, ckpt)["normalize"] == "view"
    old = {"config": {k: v for k, v in ckpt["config"].items() if k != "normalize"}}
    assert resolve_encoder_config(args, old)["normalize"] == "first_frame"  # older checkpoints
    args.normalize = "first_frame"
    with pytest.raises(CheckpointError, match=r"--normalize first_frame conflicts .*'view'"):
        resolve_encoder_config(args, ckpt, "x.pt")


def test_finetune_shear_reaches_the_model():
    """--shear / --rotate: the model sees each clip times its drawn shear, then its drawn
    rotation (both seeded by seed, epoch, step)."""
    import argparse

    from feeders.augment import random_rotation, random_shear

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return torch.zeros(x.shape[0], 3, requires_grad=True)

    info = engine.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    clips = torch.randn(4, 3, 8, 25, 2, generator=torch.Generator().manual_seed(1))
    batch = (clips, torch.arange(4))
    cfg = {"stream": "j", "spatial_channels": 3}
    labels = torch.tensor([0, 1, 2, 0])
    from feeders.augment import random_flip
    from feeders.layouts import NTU25
    from feeders.streams import bones
    for shear, rotate in ((0.0, 0.0), (0.5, 0.0), (0.0, 30.0), (0.5, 30.0)):
        args = argparse.Namespace(shear=shear, rotate=rotate, flip=0.0, seed=7,
                                  label_smoothing=0.0, **VARIANTS_OFF)
        finetune.finetune_step(Probe(), labels, args, cfg, NTU25, info, None, batch, 2, 5)
    assert torch.equal(seen[0], clips)
    expected = random_shear(clips, 0.5, engine.step_generator(7, 2, 5, 0), 3)
    assert torch.allclose(seen[1], expected) and not torch.allclose(seen[1], clips)
    turned = random_rotation(clips, 30.0, engine.step_generator(7, 2, 5, 0), 3)
    assert torch.allclose(seen[2], turned) and not torch.allclose(seen[2], clips)
    gen = engine.step_generator(7, 2, 5, 0)  # one generator: the shear's draws, then the angles
    both = random_rotation(random_shear(clips, 0.5, gen, 3), 30.0, gen, 3)
    assert torch.allclose(seen[3], both, atol=1e-6)
    # the stream conversion comes after the augmentation: bones of the rotated clip
    args = argparse.Namespace(shear=0.0, rotate=30.0, flip=0.0, seed=7, label_smoothing=0.0,
                              **VARIANTS_OFF)
    finetune.finetune_step(Probe(), labels, args, {"stream": "b", "spatial_channels": 3},
                     NTU25, info, None, batch, 2, 5)
    assert torch.allclose(seen[4], bones(turned, NTU25.parents, 3), atol=1e-6)
    # --flip draws after the angles, from the same generator
    args = argparse.Namespace(shear=0.0, rotate=30.0, flip=0.5, seed=7, label_smoothing=0.0,
                              **VARIANTS_OFF)
    finetune.finetune_step(Probe(), labels, args, cfg, NTU25, info, None, batch, 2, 5)
    gen = engine.step_generator(7, 2, 5, 0)
    flipped = random_flip(random_rotation(clips, 30.0, gen, 3), 0.5, gen, NTU25.mirror)
    assert torch.allclose(seen[5], flipped, atol=1e-6)
    assert not torch.allclose(seen[5], turned)    # some clip of the four was mirrored
    # --rotate-axes y: the same draws, only the angle about the vertical axis applied
    args = argparse.Namespace(shear=0.0, rotate=30.0, flip=0.0, seed=7, label_smoothing=0.0,
                              **{**VARIANTS_OFF, "rotate_axes": "y"})
    finetune.finetune_step(Probe(), labels, args, cfg, NTU25, info, None, batch, 2, 5)
    yaw = random_rotation(clips, 30.0, engine.step_generator(7, 2, 5, 0), 3, axes="y")
    assert torch.allclose(seen[6], yaw, atol=1e-6) and not torch.allclose(seen[6], turned)
    torch.testing.assert_close(seen[6][:, 1], clips[:, 1])   # heights kept: a turn about y
    with pytest.raises(ValueError, match="--rotate-axes must be distinct letters of xyz"):
        ar.main(["--data", "x", "--output", "y", "--defaults", "none", "--rotate-axes", "yw"])
    with pytest.raises(ValueError, match="--flip must be a probability"):
        ar.main(["--data", "x", "--output", "y", "--defaults", "none", "--flip", "1.5"])
    with pytest.raises(ValueError, match="--shear must be in"):
        ar.main(["--data", "x", "--output", "y", "--defaults", "none", "--shear", "2"])
    with pytest.raises(ValueError, match="--rotate must be in"):
        ar.main(["--data", "x", "--output", "y", "--defaults", "none", "--rotate", "-5"])


@pytest.fixture(scope="module")
def usdrl_checkpoint(data, tmp_path_factory):
    """One epoch of tiny USDRL pretraining on the synthetic set (an encoder with features)."""
    import pretrain
    out = tmp_path_factory.mktemp("usdrl")
    pretrain.main(["--data", str(data), "--output", str(out), "--preset", "tiny", "--clip-len",
                   "16", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--save-every",
                   "0", "--precision", "fp32"])
    return out / "last.pt"


def test_guard_keeps_the_probe_only_beyond_chance():
    """LP-FT's guard rule: McNemar's exact one-sided test on the held-out samples the fine-tune
    and the probe classify differently, against binomial tail sums computed by hand; the
    default alpha 1 keeps the probe whenever it scores higher."""
    assert finetune.sign_test_p(0, 0) == 1.0
    assert finetune.sign_test_p(5, 0) == 1 / 32
    assert finetune.sign_test_p(3, 1) == (4 + 1) / 16
    assert finetune.sign_test_p(2, 0) == 1 / 4
    assert finetune.sign_test_p(6, 1) == (7 + 1) / 128

    def decide(probe_only, tuned_only, both=10, neither=3, alpha=0.05):
        probe = np.array([1] * probe_only + [0] * tuned_only + [1] * both + [0] * neither, bool)
        tuned = np.array([0] * probe_only + [1] * tuned_only + [1] * both + [0] * neither, bool)
        return finetune.guard_decision(tuned, probe, alpha)

    # NW-UCLA's bone fine-tune: 155 of 203 against the probe's 156 (one sample): chance
    record = decide(6, 5, both=150, neither=42)
    assert record["kept"] == "finetune" and record["p_value"] == pytest.approx(0.5)
    assert decide(6, 5, both=150, neither=42, alpha=1.0)["kept"] == "linear probe"
    assert ar.build_parser().get_default("guard_alpha") == 1.0
    assert record["probe_held_out_top1"] == pytest.approx(100 * 156 / 203)
    assert decide(2, 0)["kept"] == "finetune"              # 70 against 60 % of 20: p = 0.25
    assert decide(5, 0)["kept"] == "linear probe"          # p = 1/32
    assert decide(6, 1)["kept"] == "finetune"              # p = 8/128 = 0.0625
    assert decide(7, 1)["kept"] == "linear probe"          # p = 9/256 = 0.035
    assert decide(0, 0)["kept"] == "finetune"              # a tie
    assert decide(1, 0, alpha=1.0)["kept"] == "linear probe"   # alpha 1: any higher score
    assert decide(1, 1, alpha=1.0)["kept"] == "finetune"       # but a tie never
    assert decide(0, 4, alpha=1.0)["kept"] == "finetune"       # nor a loss
    assert set(record) >= {"probe_only_right", "finetune_only_right", "alpha", "held_out"}


def test_default_finetune_not_below_the_linear_probe(data, usdrl_checkpoint, tmp_path,
                                                       capsys):
    """The small-set recipe's fine-tune (the --lp-epochs probe and its held-out guard; this
    synthetic set is cross-view 3D, so the recipe's head starts random, --head-init random)
    ends at or above the linear probe of the same encoder; without LP (--lp-epochs 0) or
    without the guard (--no-lp-guard) the same short fine-tunes end below it, so each
    mechanism is what holds
    the line here. The guard decides on held-out training samples, not on training accuracy:
    it keeps a fine-tune that beats a useless probe there."""
    def top1(name, *flags):
        return ar.main(["--data", str(data), "--output", str(tmp_path / name), "--pretrained",
                        str(usdrl_checkpoint), "--workers", "0", "--precision", "fp32",
                        *flags])
    linear = top1("linear", "--mode", "linear")
    assert linear["top1"] > 100 / 12 + 10   # the probe is well above chance (12 classes)
    one = top1("ft1", "--mode", "finetune", "--epochs", "1")
    assert one["flags"]["lp_epochs"] == 160 and one["top1"] >= linear["top1"]
    no_lp = top1("ft1_no_lp", "--mode", "finetune", "--epochs", "1", "--lp-epochs", "0")
    assert no_lp["top1"] < linear["top1"]
    # --head-init random: the fine-tune starts from the seeded random head, as without LP (the
    # same scores without the guard), and the guard still holds it against the probe
    rand = top1("ft1_random", "--mode", "finetune", "--epochs", "1", "--head-init", "random",
                "--no-lp-guard")
    with np.load(tmp_path / "ft1_no_lp" / no_lp["scores_file"]) as a, \
            np.load(tmp_path / "ft1_random" / rand["scores_file"]) as b:
        assert np.allclose(a["scores"], b["scores"], atol=1e-5)
    rand = top1("ft1_random_guard", "--mode", "finetune", "--epochs", "1", "--head-init",
                "random")
    assert rand["flags"]["head_init"] == "random" and rand["top1"] >= linear["top1"]
    assert rand["history"][-1]["lp_guard"]["kept"] == "linear probe"
    two = top1("ft2", "--mode", "finetune", "--epochs", "2")
    guard = two["history"][-1]["lp_guard"]
    num_train = linear["num_train"]
    assert guard["kept"] == "linear probe" and two["top1"] >= linear["top1"]
    assert guard["finetune_held_out_top1"] < guard["probe_held_out_top1"]
    # held out by the selection fine-tune (<tag>/guard), stratified, at least one per class:
    # of 24 samples in 12 classes one of each class's two; then no full run
    assert num_train == 24 and guard["held_out"] == 12
    assert (tmp_path / "ft2" / "finetune" / "guard" / "last.pt").is_file()
    assert not (tmp_path / "ft2" / "finetune" / "last.pt").exists()
    again = top1("ft2", "--mode", "finetune", "--epochs", "2")   # resumes <tag>/guard, done
    assert again["top1"] == two["top1"] and again["history"][-1]["lp_guard"] == guard
    # the probe kept is the linear probe of all training samples: --mode linear's scores
    with np.load(tmp_path / "ft2" / two["scores_file"]) as a, \
            np.load(tmp_path / "linear" / linear["scores_file"]) as b:
        assert (a["scores"].argmax(1) == b["scores"].argmax(1)).mean() > 0.9
    no_guard = top1("ft2_no_guard", "--mode", "finetune", "--epochs", "2", "--no-lp-guard")
    # without the guard the fine-tuned model is kept: other scores, and not above the probe
    # (strictly below on an AMD EPYC; a tie on 24 test clips on an Intel Xeon with AMX)
    assert no_guard["top1"] <= linear["top1"]
    assert not any("lp_guard" in h for h in no_guard["history"])
    with np.load(tmp_path / "ft2" / two["scores_file"]) as a, \
            np.load(tmp_path / "ft2_no_guard" / no_guard["scores_file"]) as b:
        assert not np.allclose(a["scores"], b["scores"])
    # a probe that cannot learn (lr 1e-9): the guard keeps the fine-tune, which then runs on
    # all training samples
    kept = top1("ft_kept", "--mode", "finetune", "--epochs", "2", "--lp-lr", "1e-9")
    guard = kept["history"][-1]["lp_guard"]
    assert guard["kept"] == "finetune"
    assert guard["finetune_held_out_top1"] >= guard["probe_held_out_top1"]
    assert (tmp_path / "ft_kept" / "finetune" / "last.pt").is_file()
    # one labelled sample a class (--label-fraction): none can be held out, so the guard is
    # off, said so, and the fine-tune runs in full
    one_each = top1("ft_one_each", "--mode", "finetune", "--epochs", "1", "--label-fraction",
                    "0.01", "--batch-size", "8")
    assert one_each["num_train"] == 12
    assert not any("lp_guard" in h for h in one_each["history"])
    assert "LP-FT guard: off, no class" in capsys.readouterr().out
    assert (tmp_path / "ft_one_each" / "finetune_0.01" / "last.pt").is_file()
    # with a validation split the comparison is made on it, without a selection run
    val = top1("ft_val", "--mode", "finetune", "--epochs", "2", "--val-fraction", "0.25")
    guard = val["history"][-1]["lp_guard"]
    assert guard["held_out"] == val["num_val"] and guard["kept"] == "linear probe"
    assert not (tmp_path / "ft_val" / "finetune" / "guard").exists()


def test_no_lp_ft_from_random_weights(data, usdrl_checkpoint, capsys):
    """The small-set recipe's LP-FT needs pretrained features: without them (--pretrained none,
    a supervised run from scratch) the recipe's --lp-epochs is dropped, since its guard could
    keep a linear probe of random features in place of the trained model; a given
    --lp-epochs is kept, and with a checkpoint the recipe's applies."""
    base = ["--data", str(data), "--output", "unused", "--mode", "finetune"]
    scratch = ar.parse_args(base + ["--pretrained", "none"])
    assert scratch.lp_epochs == 0 and "lp_epochs" not in scratch.defaults["set"]
    assert "LP-FT (--lp-epochs) is not applied" in capsys.readouterr().out
    assert ar.parse_args(base + ["--pretrained", "none", "--lp-epochs", "5"]).lp_epochs == 5
    assert ar.parse_args(base).lp_epochs == 0   # no --pretrained: from scratch too
    pretrained = ar.parse_args(base + ["--pretrained", str(usdrl_checkpoint)])
    assert pretrained.lp_epochs == 160 and pretrained.defaults["set"]["lp_epochs"] == 160

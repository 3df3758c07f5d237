"""The ST-GCN study (issue 18 item 1): the pre-activation unit by hand, the study flags from the
command line into the model and the checkpoint and back, the study's augmentation by hand, and
the linear-scaling flag (item 5)."""

import pytest
import torch
import torch.nn.functional as F

import action_recognition
import action_retrieval
import engine
import pretrain
from evaluation.features import CheckpointError
from feeders.augment import (STUDY_ROTATE_DEGREES, STUDY_SCALE, STUDY_TRANSLATE, mirror_clips,
                             rotation_matrices, study_augment)
from feeders.layouts import NTU25, STRATEGIES, get_layout
from feeders.synthetic import write_synthetic
from models.param_groups import finetune_param_groups
from models.stgcn import PreActSTGCNBlock, build_stgcn


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("syn") / "data", 24, seed=0)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _bn(x, bn):
    """eval-mode BatchNorm2d by hand."""
    shape = (1, -1, 1, 1)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def test_preact_unit_is_bn_relu_weights_twice_plus_identity():
    parts = torch.from_numpy(get_layout("penn13").partitions("spatial"))
    block = PreActSTGCNBlock(4, 4, parts, stride=1, temporal_kernel=3, dropout=0.0,
                             residual=True, edge_importance=True).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    x = _randn(2, 4, 6, 13)
    bn1, bn2 = block.pre[0], block.tcn[0]
    gcn, conv = block.gcn, block.tcn[3]
    h = torch.relu(_bn(x, bn1))
    w = gcn.conv.weight[:, :, 0, 0].view(3, 4, 4)
    b = gcn.conv.bias.view(3, 4)
    g = sum((torch.einsum("oc,nctv->notv", w[k], h) + b[k][None, :, None, None])
            @ (parts[k] * gcn.importance[k]) for k in range(3))
    expected = F.conv2d(torch.relu(_bn(g, bn2)), conv.weight, conv.bias, padding=(1, 0)) + x
    assert isinstance(block.residual, torch.nn.Identity)
    torch.testing.assert_close(block(x), expected, atol=1e-4, rtol=1e-4)
    # the first block of an encoder is not pre-activated (raw coordinates in), and has no shortcut
    enc = build_stgcn("tiny", layout="ntu25", clip_len=8, channels=3, bodies=2, residual="preact")
    assert isinstance(enc.blocks[0].pre, torch.nn.Identity) and enc.blocks[0].residual is None
    assert enc.final_norm is not None


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_preact_encoder_shapes_and_groups(strategy):
    enc = build_stgcn("tiny", layout="ntu25", clip_len=8, channels=3, bodies=2,
                      residual="preact", partition=strategy, edge_importance=False, dropout=0.3)
    out = enc(_randn(2, 3, 8, 25, 2))
    assert out.global_feat.shape == (2, 32) and out.frames.shape == (2, 4, 16)
    assert enc.blocks[1].gcn.importance is None and enc.blocks[1].tcn[2].p == 0.3
    assert enc.layer_id("final_norm.0.weight") == enc.num_layers == 3
    groups = finetune_param_groups(enc, torch.nn.Linear(32, 5), 0.05, 0.8)
    assert sum(len(g["params"]) for g in groups) == len(list(enc.parameters())) + 2
    with pytest.raises(ValueError, match="residual must be one of"):
        build_stgcn("tiny", layout="ntu25", clip_len=8, channels=3, bodies=2, residual="post")


STUDY = ["--partition", "uniform", "--no-edge-importance", "--residual", "preact",
         "--gcn-dropout", "0.2"]
OVERRIDES = {"partition": "uniform", "edge_importance": False, "residual": "preact",
             "dropout": 0.2}


def test_study_flags_reach_the_model_the_checkpoint_and_the_evaluations(data, tmp_path):
    out = tmp_path / "pre"
    pretrain.main(["--data", str(data), "--output", str(out), "--backbone", "stgcn",
                   "--preset", "tiny", "--clip-len", "16", "--batch-size", "8", "--workers", "0",
                   "--epochs", "1", "--lr-scale-base", "16", "--defaults", "none", *STUDY])
    ckpt = engine.load_checkpoint(out / "last.pt")
    config = ckpt["meta"]["config"]
    assert config["encoder_overrides"] == OVERRIDES
    assert config["lr_used"] == pytest.approx(5e-4 * 8 / 16)            # the linear-scaling rule
    assert ckpt["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(2.5e-4)
    names = {k.split("encoder.", 1)[-1] for k in ckpt["model"]}
    assert "blocks.1.pre.0.weight" in names and "blocks.1.gcn.importance" not in names
    common = ["--data", str(data), "--output", str(tmp_path / "ev"), "--pretrained",
              str(out / "last.pt"), "--workers", "0", "--precision", "fp32", "--defaults", "none"]
    # restored from the checkpoint without any flag (the weights load strictly)
    res = action_recognition.main(common + ["--epochs", "1", "--lr-scale-base", "512",
                                            "--batch-size", "12"])
    assert res["encoder_overrides"] == OVERRIDES
    assert (res["lr_used"], res["lr_scale_base"]) == (pytest.approx(0.006 * 12 / 512), 512)
    knn = action_retrieval.main(common)
    assert knn["encoder_overrides"] == OVERRIDES
    # the dropout may change (no weights); the structure may not
    res = action_recognition.main(common + ["--epochs", "1", "--gcn-dropout", "0"])
    assert res["encoder_overrides"]["dropout"] == 0
    with pytest.raises(CheckpointError, match="--residual original conflicts .* residual='preact'"):
        action_recognition.main(common + ["--residual", "original"])
    with pytest.raises(CheckpointError, match="--partition spatial conflicts"):
        action_retrieval.main(common + ["--partition", "spatial"])


def test_study_flags_from_scratch_and_for_other_backbones(data, tmp_path):
    res = action_recognition.main(["--data", str(data), "--output", str(tmp_path), "--mode",
                                   "finetune", "--backbone", "stgcn", "--preset", "tiny",
                                   "--clip-len", "16", "--epochs", "1", "--batch-size", "12",
                                   "--workers", "0", "--precision", "fp32", "--study-augment",
                                   *STUDY])
    assert res["encoder_overrides"] == OVERRIDES and res["variant"]["study_augment"]
    saved = engine.load_checkpoint(tmp_path / "finetune" / "last.pt")
    assert saved["meta"]["config"]["encoder_overrides"] == OVERRIDES
    assert "encoder.final_norm.0.weight" in saved["model"]
    with pytest.raises(ValueError, match="--residual: ST-GCN study flags apply to --backbone"):
        pretrain.main(["--data", str(data), "--output", str(tmp_path / "x"), "--backbone", "dste",
                       "--preset", "tiny", "--residual", "preact"])
    with pytest.raises(ValueError, match="--gcn-dropout must be in"):
        action_recognition.main(["--data", str(data), "--output", str(tmp_path), "--backbone",
                                 "stgcn", "--preset", "tiny", "--gcn-dropout", "1.5"])
    with pytest.raises(ValueError, match="--lr-scale-base must be >= 1"):
        action_recognition.main(["--data", str(data), "--output", str(tmp_path),
                                 "--lr-scale-base", "0"])


def test_study_augment_by_hand():
    b, s = 6, 3
    x = _randn(b, 3, 5, 25, 2, seed=1)
    x[:, :, :, :, 1] = 0                    # body 2 absent: stays zero
    out = study_augment(x, torch.Generator().manual_seed(11), NTU25.mirror, 3)
    gen = torch.Generator().manual_seed(11)
    apply = torch.rand(b, generator=gen, dtype=torch.float64) < 0.5
    keys = torch.rand(b, 4, generator=gen, dtype=torch.float64)
    angles = (torch.rand(b, 3, generator=gen, dtype=torch.float64) * 2 - 1) \
        * STUDY_ROTATE_DEGREES * torch.pi / 180
    offsets = (torch.rand(b, s, generator=gen, dtype=torch.float64) * 2 - 1) * STUDY_TRANSLATE
    scales = 1 + (torch.rand(b, generator=gen, dtype=torch.float64) * 2 - 1) * STUDY_SCALE
    for i in range(b):
        clip = x[i:i + 1].clone()
        ops = set(keys[i].argsort()[:2].tolist()) if apply[i] else set()
        if 0 in ops:
            clip = mirror_clips(clip, NTU25.mirror)
        if 1 in ops:
            r = rotation_matrices(angles[i:i + 1])[0].float()
            clip = torch.einsum("ij,njlvm->nilvm", r, clip)
        if 2 in ops:
            clip[:, :, :, :, 0] += offsets[i].float()[:, None, None]
        if 3 in ops:
            clip = clip * float(scales[i])
        torch.testing.assert_close(out[i:i + 1], clip, atol=1e-5, rtol=1e-5)
        assert len(ops) in (0, 2)
    assert torch.equal(out[:, :, :, :, 1], torch.zeros_like(out[:, :, :, :, 1]))
    assert apply.any() and not apply.all()  # both cases occur with this seed


def test_resume_refuses_another_structure_and_ignores_derived_fields(tmp_path):
    old = {"backbone": "stgcn", "preset": "tiny", "residual": "original", "lr": 1e-3,
           "lr_used": 1e-3, "encoder_overrides": {}}
    ckpt = {"meta": {"config": old}}
    new = {**old, "residual": "preact", "encoder_overrides": {"residual": "preact"}}
    with pytest.raises(ValueError, match="holds another model .*--residual: original -> preact"):
        engine.check_resume_config(ckpt, tmp_path / "last.pt", new, resume_changed=True)
    for flag, value in (("neck", "tpn"), ("branches", (16, 32)), ("mutual_stream", "b")):
        with pytest.raises(ValueError, match="holds another model"):
            engine.check_resume_config(ckpt, tmp_path / "last.pt", {**old, flag: value},
                                       resume_changed=True)
    # a run from before --lr-scale-base / the study flags: their derived fields are no change
    older = {"meta": {"config": {k: v for k, v in old.items()
                                 if k not in ("lr_used", "encoder_overrides")}}}
    assert engine.check_resume_config(older, tmp_path / "last.pt", old, resume_changed=False) == {}

"""The TPN neck (issue 18 item 2), DTN-style branches and mutual distillation (item 3) and
multi-clip testing (item 4): shapes, losses and schedules by hand, and short end-to-end runs."""
import argparse
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import action_recognition as ar
import action_retrieval
import engine
from evaluation import finetune
from evaluation.dtn import (BranchClassifier, MutualClassifier, branch_loss, mutual_loss,
                            parse_branches, resample_time, teacher_temperature)
from evaluation.features import extract
from evaluation.knn import knn_evaluate
from evaluation.linear import average_clips
from feeders.augment import crop_windows, resample_frames
from feeders.dataset import EvalDataset
from feeders.store import open_store
from feeders.synthetic import write_synthetic
from models import build_encoder
from models.tpn import AUX_WEIGHT, TPNEncoder, pyramid_levels

INFO = engine.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
TINY = ["--clip-len", "16", "--workers", "0", "--precision", "fp32"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("syn") / "data", 24, seed=0)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _tiny(name, clip_len=16):
    return build_encoder(name, "tiny", layout="ntu25", clip_len=clip_len, channels=3, bodies=2)


# ----------------------------------------------------------------------------- TPN
def test_pyramid_levels():
    assert pyramid_levels((1, 2, 1)) == [0, 2]
    assert pyramid_levels((1, 2, 2)) == [0, 1, 2]
    assert pyramid_levels((1, 1, 1, 1, 2, 1, 1, 2, 1, 1)) == [3, 6, 9]


@pytest.mark.parametrize("backbone,levels", [("stgcn", 2), ("msg3d", 3)])
def test_tpn_shapes(backbone, levels):
    tpn = TPNEncoder(_tiny(backbone), num_classes=5)
    assert len(tpn.levels) == levels == len(tpn.neck.semantic)
    out, aux = tpn.forward_aux(_randn(2, 3, 16, 25, 2))
    width = tpn.encoder.stage_channels[-1]
    assert out.global_feat.shape == (2, 2 * width) and tpn.feature_dim == 2 * width
    assert out.frames.shape == (2, 16 // 2 ** (levels - 1), width)
    assert out.joints.shape == (2, 50, width) and aux.shape == (2, 5)
    assert torch.equal(tpn(_randn(2, 3, 16, 25, 2)).global_feat, tpn.forward_aux(
        _randn(2, 3, 16, 25, 2))[0].global_feat)
    assert tpn.layer_id("neck.fusion.0.weight") == tpn.num_layers
    first = "blocks" if backbone == "stgcn" else "stages"
    name = next(n for n, _ in tpn.named_parameters() if n.startswith(f"encoder.{first}.0."))
    assert tpn.layer_id(name) == 1
    with pytest.raises(ValueError, match="--neck tpn needs a GCN encoder"):
        TPNEncoder(_tiny("dste"), num_classes=5)


def test_tpn_auxiliary_loss_weight_and_gradients():
    model = finetune.Classifier(TPNEncoder(_tiny("stgcn"), num_classes=4), 4, seed=0)
    x, labels = _randn(4, 3, 16, 25, 2), torch.tensor([0, 1, 2, 3])
    args = argparse.Namespace(label_smoothing=0.0, neck="tpn", branches=None, mutual_stream=None)
    loss, logits, terms = finetune.variant_loss(model, x, labels, args, 0.0)
    model.eval()
    with torch.no_grad():   # the same numbers once more, by hand (eval: BN fixed both times)
        out, aux = model.encoder.forward_aux(x)
        main = F.cross_entropy(model.head(out.global_feat), labels)
        aux_ce = F.cross_entropy(aux, labels)
        loss2, _, terms2 = finetune.variant_loss(model, x, labels, args, 0.0)
    assert AUX_WEIGHT == 0.5
    torch.testing.assert_close(loss2, main + 0.5 * aux_ce)
    torch.testing.assert_close(terms2["aux_ce"], aux_ce)
    model.train()
    # the auxiliary loss alone reaches the stages that feed the pyramid
    model.zero_grad()
    _, aux = model.encoder.forward_aux(x)
    F.cross_entropy(aux, labels).backward()
    enc = model.encoder.encoder
    assert enc.blocks[0].gcn.conv.weight.grad.abs().sum() > 0
    assert model.encoder.neck.aux_head.weight.grad.abs().sum() > 0
    assert model.head.weight.grad is None            # the main head is not on the aux path
    model.zero_grad()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tpn_finetune_end_to_end(data, tmp_path):
    res = ar.main(["--data", str(data), "--output", str(tmp_path), "--mode", "finetune",
                   "--backbone", "stgcn", "--preset", "tiny", "--epochs", "1", "--batch-size",
                   "12", "--neck", "tpn", *TINY])
    assert res["variant"]["neck"] == "tpn" and 0 <= res["top1"] <= 100
    with pytest.raises(ValueError, match="--neck tpn applies to --mode finetune only"):
        ar.main(["--data", str(data), "--output", str(tmp_path), "--neck", "tpn", *TINY])
    # the small-set recipe's LP-FT is dropped for a variant; asked for explicitly, it is an error
    assert "lp_epochs" not in res["flags"]["defaults"]["set"] and res["flags"]["lp_epochs"] == 0
    with pytest.raises(ValueError, match="--lp-epochs applies to the plain fine-tune"):
        ar.main(["--data", str(data), "--output", str(tmp_path / "x"), "--mode", "finetune",
                 "--backbone", "stgcn", "--preset", "tiny", "--neck", "tpn", "--lp-epochs", "2",
                 *TINY])


# ----------------------------------------------------------------------------- DTN
def test_teacher_temperature_cosine_schedule():
    assert teacher_temperature(0.0) == pytest.approx(0.04)
    assert teacher_temperature(1.0) == pytest.approx(0.07)
    assert teacher_temperature(0.5) == pytest.approx(0.055)
    quarter = 0.07 - 0.03 * 0.5 * (1 + math.cos(math.pi / 4))
    assert teacher_temperature(0.25) == pytest.approx(quarter)
    assert teacher_temperature(2.0) == pytest.approx(0.07)


def test_branch_loss_by_hand():
    logits = _randn(3, 3, 5)                                     # (N, branches, classes)
    labels = torch.tensor([0, 4, 2])
    progress = 0.3
    loss, terms = branch_loss(logits, labels, progress)
    fused = logits.mean(1)
    t = teacher_temperature(progress)
    target = F.softmax(fused / t, dim=1)
    distill = sum(-(target * F.log_softmax(logits[:, b] / 0.1, dim=1)).sum(1).mean()
                  for b in range(3)) / 3
    expected = (1.0 * F.cross_entropy(fused, labels)
                + 0.5 * sum(F.cross_entropy(logits[:, b], labels) for b in range(3)) + distill)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(terms["distill"], distill)
    # the teacher (the fused prediction) is detached: the distillation's gradient moves each
    # branch towards the fused scores only through the student side
    logits.requires_grad_(True)
    _, terms = branch_loss(logits, labels, progress)
    terms["distill"].backward()
    assert logits.grad is not None


def test_mutual_loss_by_hand():
    a, b = _randn(4, 6, seed=1), _randn(4, 6, seed=2)
    labels = torch.tensor([0, 1, 2, 3])
    loss, terms = mutual_loss(a, b, labels, temperature=2.0)

    def kl(p_logits, q_logits):
        p = F.softmax(p_logits / 2, dim=1)
        return (p * (p.log() - F.log_softmax(q_logits / 2, dim=1))).sum(1).mean() * 4

    expected = F.cross_entropy(a, labels) + F.cross_entropy(b, labels) + kl(b, a) + kl(a, b)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_resample_time_matches_the_feeder_grid():
    seq = np.random.default_rng(0).standard_normal((20, 2, 25, 3)).astype(np.float32)
    clip = torch.from_numpy(resample_frames(seq, 20))[None]        # (1, C, 20, V, M)
    for length in (7, 16, 48):
        torch.testing.assert_close(resample_time(clip, length)[0],
                                   torch.from_numpy(resample_frames(seq, length)))
    assert parse_branches("16,32,48") == (16, 32, 48)
    for bad in ("16", "16,x", "0,8"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_branches(bad)


def test_branch_and_mutual_classifiers():
    enc = _tiny("stgcn")
    shared = BranchClassifier(enc, 4, (8, 16, 24), seed=0)
    assert shared(_randn(2, 3, 16, 25, 2)).shape == (2, 3, 4) and len(shared.encoders) == 1
    separate = BranchClassifier(_tiny("stgcn"), 4, (8, 16), seed=0, shared=False)
    assert len(separate.encoders) == 2
    assert torch.equal(separate.encoders[0].blocks[0].gcn.conv.weight,
                       separate.encoders[1].blocks[0].gcn.conv.weight)   # initialised alike
    groups = finetune.param_groups(separate, 0.05, 1.0)
    assert sum(len(g["params"]) for g in groups) == len(list(separate.parameters()))
    with pytest.raises(ValueError, match="any number of frames"):
        BranchClassifier(_tiny("dste"), 4, (8, 16), seed=0)
    from feeders.layouts import NTU25
    from feeders.streams import bones
    mutual = MutualClassifier(_tiny("stgcn"), 4, ("j", "b"), NTU25.parents, 3, seed=0).eval()
    x = _randn(2, 3, 16, 25, 2)
    two = mutual(x)
    with torch.no_grad():
        bone = mutual.heads[1](mutual.encoders[1](bones(x, NTU25.parents, 3)).global_feat)
    torch.testing.assert_close(two[:, 1], bone)
    torch.testing.assert_close(mutual.predict(x), torch.log(two.softmax(2).mean(1)))


def test_branches_and_mutual_finetune_end_to_end(data, tmp_path):
    common = ["--data", str(data), "--mode", "finetune", "--backbone", "stgcn", "--preset",
              "tiny", "--epochs", "1", "--batch-size", "12", *TINY]
    res = ar.main(common + ["--output", str(tmp_path / "br"), "--branches", "8,16,24"])
    assert res["variant"]["branches"] == [8, 16, 24]
    assert res["variant"]["branch_weights"] == "shared"
    res = ar.main(common + ["--output", str(tmp_path / "mu"), "--mutual-stream", "b"])
    assert res["variant"]["mutual_stream"] == "b"
    with pytest.raises(ValueError, match="choose one fine-tuning variant"):
        ar.main(common + ["--output", str(tmp_path), "--mutual-stream", "b", "--neck", "tpn"])


# ----------------------------------------------------------------------------- multi-clip
def test_crop_windows():
    assert crop_windows(50, 1) == [(0, 50)]
    assert crop_windows(50, 3, 0.8) == [(0, 40), (5, 45), (10, 50)]
    assert crop_windows(3, 2, 0.1) == [(0, 1), (2, 3)]
    with pytest.raises(ValueError, match="num_clips must be >= 1"):
        crop_windows(10, 0)


def test_multiclip_dataset_and_features_by_hand(data):
    store = open_store(data)
    one = EvalDataset(store, "xsub_val", 16)
    three = EvalDataset(store, "xsub_val", 16, num_clips=3, clip_fraction=0.5)
    clip, label, index = three[1]
    seq = one.read_sequence(int(one.sequence_indices[1]))
    for k, (a, b) in enumerate(crop_windows(len(seq), 3, 0.5)):
        torch.testing.assert_close(clip[k], torch.from_numpy(resample_frames(seq[a:b], 16)))
    enc = _tiny("stgcn").eval()
    kw = dict(stream="j", clip_len=16, spatial_channels=3, info=INFO, dtype=None)
    base, labels = extract(enc, store, "xsub_val", **kw)
    same, _ = extract(enc, store, "xsub_val", num_clips=1, **kw)
    assert torch.equal(base, same)                               # N = 1: the current result
    multi, labels3 = extract(enc, store, "xsub_val", num_clips=3, clip_fraction=0.5, **kw)
    assert multi.shape == (len(base), 3, base.shape[1]) and torch.equal(labels, labels3)
    with torch.no_grad():
        torch.testing.assert_close(multi[1], enc(clip).global_feat)
    logits = _randn(4, 3, 5)
    torch.testing.assert_close(average_clips(logits),
                               torch.log((logits.softmax(2)[:, 0] + logits.softmax(2)[:, 1]
                                          + logits.softmax(2)[:, 2]) / 3))


def test_multiclip_knn_and_probe(data, tmp_path):
    common = ["--data", str(data), "--backbone", "stgcn", "--preset", "tiny", "--no-cache",
              "--defaults", "none", *TINY]
    plain = action_retrieval.main(common + ["--output", str(tmp_path / "a")])
    one = action_retrieval.main(common + ["--output", str(tmp_path / "b"), "--num-clips", "1"])
    assert one["top1"] == plain["top1"] and one["num_clips"] == 1
    multi = action_retrieval.main(common + ["--output", str(tmp_path / "c"), "--num-clips", "3"])
    assert multi["num_clips"] == 3
    # by hand: the queries' three crop features averaged, then retrieval
    store = open_store(data)
    enc = build_encoder("stgcn", "tiny", layout=store.layout, clip_len=16, channels=3, bodies=2,
                        seed=0)
    kw = dict(stream="j", clip_len=16, spatial_channels=3, info=INFO, dtype=None)
    gallery, gl = extract(enc, store, "xsub_train", **kw)
    queries, ql = extract(enc, store, "xsub_val", num_clips=3, **kw)
    assert multi["top1"] == knn_evaluate(queries.mean(1), ql, gallery, gl, k=1)["top1"]
    lin = ["--epochs", "2", "--lr", "0.1"]
    a = ar.main(common + lin + ["--output", str(tmp_path / "la")])
    b = ar.main(common + lin + ["--output", str(tmp_path / "lb"), "--num-clips", "1"])
    assert a["top1"] == b["top1"]
    assert np.array_equal(np.load(tmp_path / "la" / "linear_scores.npz")["scores"],
                          np.load(tmp_path / "lb" / "linear_scores.npz")["scores"])
    c = ar.main(common + lin + ["--output", str(tmp_path / "lc"), "--num-clips", "3"])
    saved = json.loads((tmp_path / "lc" / "linear.json").read_text())
    assert saved["num_clips"] == 3 and c["clip_fraction"] == 0.8
    scores = np.load(tmp_path / "lc" / "linear_scores.npz")["scores"]
    np.testing.assert_allclose(np.exp(scores).sum(1), 1.0, rtol=1e-5)  # log of averaged scores

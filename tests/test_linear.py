"""Linear probe: schedule, initialisation, selection, and cached features == re-encoding."""
import pytest
import torch

import engine
from evaluation.features import ReEncoder, extract, stream_transform
from evaluation.linear import (accuracy, fold_standardization, make_head, predict, select_lr,
                               standardization, step_lr, train_linear)
from feeders.dataset import EvalDataset
from feeders.store import open_store
from feeders.synthetic import write_synthetic
from models import build_encoder

SINGLE = engine.DistInfo(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return open_store(write_synthetic(tmp_path_factory.mktemp("syn") / "data", 48, seed=0))


def test_step_lr_and_head_init():
    assert [step_lr(0.1, e, (120, 140)) for e in (0, 119, 120, 139, 140, 159)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    head = make_head(512, 60, seed=3)
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert head.bias.abs().max().item() == 0
    assert torch.equal(head.weight, make_head(512, 60, seed=3).weight)


def test_accuracy_hand_computed():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [0.4, 0.35, 0.25]])
    labels = torch.tensor([1, 0, 1, 2])
    assert accuracy(logits, labels, 1) == 50.0
    assert accuracy(logits, labels, 2) == 75.0


def blobs(n, dim=16, classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, dim, generator=gen)
    labels = torch.arange(n) % classes
    return centres[labels] + torch.randn(n, dim, generator=gen), labels


def test_probe_learns_and_selects_on_validation():
    all_feats, all_labels = blobs(500)
    feats, labels, val_feats, val_labels = all_feats[:400], all_labels[:400], all_feats[400:], all_labels[400:]
    out = train_linear(lambda idx: feats[idx], labels, 16, 4, epochs=8, lr=0.05,
                       batch_size=64, milestones=(6,), val=(val_feats, val_labels))
    hist = out["history"]
    assert [h["lr"] for h in hist] == pytest.approx([0.05] * 6 + [0.005] * 2)
    assert hist[-1]["loss"] < hist[0]["loss"]
    best = max(range(len(hist)), key=lambda i: hist[i]["val_top1"])  # first maximum
    assert out["best_epoch"] == best + 1
    assert accuracy(predict(out["best_head"], val_feats), val_labels) == hist[best]["val_top1"]
    assert accuracy(predict(out["head"], val_feats), val_labels) > 90


def test_cached_features_train_the_same_head_as_reencoding(store):
    """Same seed, same batch order: caching the frozen features changes nothing."""
    encoder = build_encoder("dste", "tiny", layout=store.layout, clip_len=16,
                            channels=store.channels, bodies=store.bodies, seed=0)
    kwargs = dict(stream="b", clip_len=16, spatial_channels=None, info=SINGLE, dtype=None)
    feats, labels = extract(encoder, store, "xsub_train", batch_size=7, **kwargs)
    assert feats.shape == (len(store.split_indices("xsub_train")), encoder.feature_dim)
    dataset = EvalDataset(store, "xsub_train", 16)
    reencode = ReEncoder(encoder, dataset, stream_transform("b", store.layout.parents, None),
                         SINGLE.device, None)
    calls = []

    def counting(idx):
        calls.append(len(idx))
        return reencode(idx)

    train = dict(labels=labels, feature_dim=encoder.feature_dim,
                 num_classes=store.num_classes, epochs=2, lr=0.5, batch_size=8, seed=7)
    cached = train_linear(lambda idx: feats[idx], **train)["head"]
    slow = train_linear(counting, **train)["head"]
    assert sum(calls) == 2 * len(labels)           # really re-encoded every epoch
    assert not torch.equal(cached.weight, make_head(encoder.feature_dim, 12, 7).weight)
    assert torch.allclose(cached.weight, slow.weight, atol=1e-5)
    assert torch.allclose(cached.bias, slow.bias, atol=1e-5)


def test_fold_standardization_is_the_same_head_on_raw_features():
    """A head of standardised features folded into a head of raw ones gives the same logits:
    W (x - m) / s + b == (W / s) x + (b - (W / s) m), by hand on 2 dimensions."""
    x = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 20.0]])
    mean, std = standardization(x)
    assert torch.allclose(mean, torch.tensor([3.0, 20.0]))
    assert torch.allclose(std, torch.tensor([(8 / 3) ** 0.5, (200 / 3) ** 0.5]))
    head = torch.nn.Linear(2, 3)
    expected = head((x - mean) / std)
    folded = fold_standardization(head, mean, std)
    assert torch.allclose(folded(x), expected, atol=1e-5)
    assert standardization(torch.ones(4, 2))[1].min() == pytest.approx(1e-6)   # constant


def test_standardized_probe_is_invariant_to_feature_scale():
    """With standardize the probe trains on the same standardised features whatever the
    features' scale and offset per dimension, so one lr fits all: features x * 1e3 + 5 give the
    same predictions as x, and the returned head scores the raw features directly."""
    feats, labels = blobs(400)
    scaled = feats * torch.linspace(1.0, 1e3, 16) + 5.0
    train = dict(epochs=20, lr=1.0, batch_size=64, milestones=(), seed=0, standardize=True)
    head = train_linear(lambda idx: feats[idx], labels, 16, 4, **train)["head"]
    head_scaled = train_linear(lambda idx: scaled[idx], labels, 16, 4, **train)["head"]
    assert accuracy(predict(head, feats), labels) > 95
    assert torch.allclose(predict(head_scaled, scaled), predict(head, feats), atol=1e-3,
                          rtol=1e-3)


def test_select_lr_picks_the_best_held_out_lr():
    """select_lr scores each lr of the grid on stratified fifths of the training samples only;
    an lr too small to move the head (1e-9) keeps its random initialisation (39 % there), so
    0.1 is chosen; the table holds every lr in grid order, and a tie keeps the first."""
    feats, labels = blobs(200, seed=2)
    kw = dict(epochs=10, batch_size=32, milestones=())
    lr, table = select_lr(feats, labels, 4, [1e-9, 0.1], folds=3, seed=0, **kw)
    assert lr == 0.1 and [row["lr"] for row in table] == [1e-9, 0.1]
    assert table[1]["held_out_top1"] > 90 and table[0]["held_out_top1"] < 60
    lr, table = select_lr(feats, labels, 4, [0.1, 0.1000001], folds=2, seed=0, **kw)
    assert lr == 0.1   # equal scores: the first

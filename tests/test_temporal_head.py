"""The temporal convolution head of frozen-encoder detection (evaluation/temporal_head.py,
action_detection.py --head tcn)."""
import json

import numpy as np
import pytest
import torch

import action_detection
from evaluation.temporal_head import (TemporalConvHead, smoothing_loss, stream_probabilities,
                                      train_temporal_head)
from feeders import synthetic
from feeders.store import open_store
from feeders.untrimmed import WindowDataset

COMMON = ["--preset", "tiny", "--clip-len", "16", "--workers", "0", "--threads", "1",
          "--eval-batch-size", "32"]


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    return synthetic.write_untrimmed(tmp_path_factory.mktemp("t") / "u", num_streams=4,
                                     num_subjects=4)


def test_shapes_and_receptive_field():
    """Two layers (dilations 1 and 2) and kernel 3: a frame sees 1 + 2 = 3 frames each side."""
    head = TemporalConvHead(5, 4, hidden=8, layers=2, dropout=0.0, seed=0).eval()
    x = torch.randn(2, 30, 5)
    y = head(x)
    assert y.shape == (2, 30, 4)
    x2 = x.clone()
    x2[:, 10] += 1.0
    changed = (head(x2) - y).abs().amax(dim=(0, 2)) > 1e-7
    assert torch.nonzero(changed).squeeze(1).tolist() == list(range(7, 14))
    # the same seed builds the same head
    again = TemporalConvHead(5, 4, hidden=8, layers=2, dropout=0.0, seed=0).eval()
    assert torch.equal(again(x), y)


def test_smoothing_loss_by_hand():
    """T-MSE: mean over valid neighbouring pairs and classes of min((dlog p)^2, tau^2)."""
    logits = torch.tensor([[[0.0, 0.0], [0.0, 2.0], [0.0, 20.0], [0.0, 20.0]]])
    logp = torch.log_softmax(logits, dim=-1)[0].numpy()
    d = (logp[1:] - logp[:-1]) ** 2                  # (3 pairs, 2 classes)
    mask = torch.tensor([[True, True, True, False]])  # the last pair has a padded frame
    expected = np.minimum(d[:2], 16.0).sum() / (2 * 2)
    assert smoothing_loss(logits, mask).item() == pytest.approx(expected, rel=1e-5)
    assert d[1].max() > 16.0                        # the truncation was exercised
    assert smoothing_loss(logits, torch.zeros(1, 4, dtype=torch.bool)).item() == 0.0


def marker_streams(n, seed):
    """Streams where only the first frame of each 8-frame segment says its class (a one-hot
    marker; every other frame is noise): a per-frame classifier cannot label the other frames,
    a head that looks back a few frames can."""
    gen = np.random.default_rng(seed)
    feats, labels = [], []
    for _ in range(n):
        classes = gen.integers(0, 3, size=12)
        lab = np.repeat(classes, 8)
        x = 0.05 * gen.standard_normal((len(lab), 4)).astype(np.float32)
        x[np.arange(0, len(lab), 8), classes] += 1.0
        x[np.arange(0, len(lab), 8), 3] += 1.0       # "a segment starts here"
        feats.append(torch.from_numpy(x))
        labels.append(torch.from_numpy(lab))
    return feats, labels


def test_learns_from_temporal_context():
    feats, labels = marker_streams(12, 0)
    kw = dict(epochs=60, lr=5e-3, hidden=16, layers=4, dropout=0.0, seed=0)
    head = train_temporal_head(feats, labels, 3, **kw)
    test_f, test_l = marker_streams(3, 1)
    probs = stream_probabilities(head, dict(enumerate(test_f)))
    acc = np.mean(np.concatenate([probs[i].argmax(1) == test_l[i].numpy() for i in probs]))
    assert acc > 0.9          # chance: 1/3; a per-frame classifier: about 1/3 off the markers
    again = train_temporal_head(feats, labels, 3, **kw)   # seeded: the same head
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(),
                                                 again.state_dict().values()))
    # dropout draws from the seed, not from whatever the global generator went through
    kw = dict(epochs=2, lr=1e-3, hidden=8, layers=2, dropout=0.5, seed=3)
    first = train_temporal_head(feats, labels, 3, **kw)
    torch.rand(100)
    second = train_temporal_head(feats, labels, 3, **kw)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                 second.state_dict().values()))


def test_padding_frames_get_no_gradient_from_the_smoothing_loss():
    """A pair with a padded frame (-1 label, mask False) is not counted: no gradient reaches
    the padded frames, and the previous frame of a pair is detached (MS-TCN)."""
    logits = torch.randn(1, 6, 3, requires_grad=True)
    mask = torch.tensor([[True, True, True, True, False, False]])
    smoothing_loss(logits, mask).backward()
    assert torch.all(logits.grad[0, 4:] == 0)
    assert torch.all(logits.grad[0, 0] == 0)        # frame 0 is only ever the detached one
    assert logits.grad[0, 1:4].abs().sum() > 0


def test_stream_features_average_overlaps(streams):
    ds = WindowDataset(streams, "xsub_val", clip_len=16, stride=8)
    feats = torch.zeros(len(ds), 16, 2)
    feats[:, :, 0] = torch.arange(len(ds))[:, None].float()   # window w says w
    feats[:, :, 1] = 1.0
    out = action_detection.stream_features(feats, ds, np.arange(len(ds)))
    store = open_store(streams)
    first = int(store.split_indices("xsub_val")[0])
    assert out[first].shape == (store.lengths[first], 2)
    assert torch.allclose(out[first][:8, 0], torch.tensor(0.0))     # window 0 alone
    assert torch.allclose(out[first][8:16, 0], torch.tensor(0.5))   # windows 0 and 1
    assert torch.allclose(out[first][:, 1], torch.tensor(1.0))


def test_pipeline_with_the_temporal_head(streams, tmp_path):
    out = tmp_path / "tcn"
    args = ["--data", str(streams), "--output", str(out), *COMMON, "--head", "tcn",
            "--epochs", "3", "--tcn-layers", "3", "--tcn-hidden", "8",
            "--select-threshold", "0.5"]
    metrics = action_detection.main(args)
    result = json.loads((out / "detection_tcn.json").read_text())
    assert result["protocol"] == {"kind": "detection", "encoder": "frozen_tcn"}
    assert result["config"]["head"] == "tcn" and result["config"]["lr"] == 5e-4
    assert result["config"]["tcn_layers"] == 3
    assert result["mAP_a"] == metrics["mAP_a"]
    sel = result["config"]["threshold_selection"]
    assert sel["best_mAP_a@0.5"] == max(v for row in sel["grid_mAP_a@0.5"].values()
                                        for v in row.values())
    store = open_store(streams)
    val = store.split_indices("xsub_val")
    with np.load(out / "detection_tcn_scores.npz") as z:
        assert z["lengths"].tolist() == [int(store.lengths[i]) for i in val]
        assert np.allclose(z["scores"].sum(1), 1, atol=1e-4)
    assert not (out / "detection.json").exists()   # the linear head's results are not touched
    assert action_detection.main(args)["mAP_a"] == metrics["mAP_a"]   # cached features, seeded


def test_temporal_head_flags(streams, tmp_path, capsys):
    base = ["--data", str(streams), "--output", str(tmp_path / "x"), *COMMON]
    for bad, word in ((["--head", "tcn", "--finetune"], "frozen encoder only"),
                      (["--head", "tcn", "--tcn-layers", "0"], "--tcn-layers")):
        with pytest.raises(SystemExit) as exc:
            action_detection.main(base + bad)
        assert exc.value.code == 2 and word in capsys.readouterr().err
    action_detection.main(base + ["--head", "tcn", "--print-config"])
    config = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert config["lr"] == 5e-4 and config["epochs"] == 50   # not the linear probe's lr 1.0

"""action_detection.py end to end on tiny synthetic streams (tiny encoders, seconds)."""
import argparse
import json

import numpy as np
import pytest
import torch

import action_detection
from evaluation import selection
from evaluation.detection import detection_metrics, read_proposals
from feeders import synthetic
from feeders.store import open_store
from feeders.untrimmed import instances_from_labels
from models import build_encoder

COMMON = ["--preset", "tiny", "--clip-len", "16", "--epochs", "2", "--workers", "0",
          "--threads", "1", "--eval-batch-size", "32"]


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    return synthetic.write_untrimmed(tmp_path_factory.mktemp("d") / "u", num_streams=4,
                                     num_subjects=4)


@pytest.mark.parametrize("backbone", ["dste", "stgcn"])
def test_dense_features_have_one_row_per_frame(backbone):
    enc = build_encoder(backbone, "tiny", layout="ntu25", clip_len=16, channels=3, bodies=2)
    out = enc(torch.randn(2, 3, 16, 25, 2))
    dense = action_detection.dense_features(out, 16)
    assert dense.shape == (2, 16, enc.feature_dim)
    if backbone == "dste":   # temporal tokens as they are, then the pooled spatial tokens
        assert torch.allclose(dense[..., :enc.temporal_dim], out.frames)
        # adaptive pooling of 50 spatial tokens to 16 positions: position 0 averages tokens 0-3
        assert torch.allclose(dense[:, 0, enc.temporal_dim:], out.joints[:, :4].mean(1), atol=1e-6)


def test_frozen_pipeline_outputs_and_metrics(streams, tmp_path):
    out = tmp_path / "run"
    args = ["--data", str(streams), "--output", str(out), *COMMON]
    metrics = action_detection.main(args)
    result = json.loads((out / "detection.json").read_text())
    assert set(result["mAP_a"]) == {"0.1", "0.3", "0.5", "0.7"} == set(result["mAP_v"])
    for key in ("F1@0.5", "AP@0.5", "2D-AP", "protocol", "segmentation", "config"):
        assert key in result
    assert result["config"]["threshold"] == 0.5 and result["config"]["clip_len"] == 16
    store = open_store(streams)
    val = store.split_indices("xsub_val")
    # the proposal files are what was scored: re-scoring them gives the same numbers
    props = {str(store.names[i]): read_proposals(out / "detection_proposals" /
                                                 f"{store.names[i]}.txt") for i in val}
    gts = {str(store.names[i]): instances_from_labels(store.frame_array("frame_labels", i))
           for i in val}
    again = detection_metrics(props, gts, store.num_classes - 1)
    assert again["mAP_a"] == pytest.approx(metrics["mAP_a"], abs=1e-3)
    assert again["2D-AP"] == pytest.approx(metrics["2D-AP"], abs=1e-3)
    # per-frame scores of every test stream, probabilities
    with np.load(out / "detection_scores.npz") as z:
        assert z["lengths"].tolist() == [int(store.lengths[i]) for i in val]
        assert z["scores"].shape == (sum(z["lengths"]), store.num_classes)
        assert np.allclose(z["scores"].sum(1), 1, atol=1e-4)
    # the frozen features were cached and are read back: same result
    cached = sorted((out / "features").glob("*_dense_s*.pt"))
    assert len(cached) == 2
    assert action_detection.main(args)["mAP_a"] == metrics["mAP_a"]


def test_finetune_gcn_runs(streams, tmp_path):
    out = tmp_path / "ft"
    action_detection.main(["--data", str(streams), "--output", str(out), "--finetune",
                           "--backbone", "stgcn", *COMMON[:-2], "--epochs", "1",
                           "--batch-size", "16"])
    result = json.loads((out / "detection_finetune.json").read_text())
    assert result["mode"] == "finetune" and (out / "detection_finetune" / "last.pt").is_file()


def test_stream_probabilities_average_overlaps(streams):
    from feeders.untrimmed import WindowDataset
    ds = WindowDataset(streams, "xsub_val", clip_len=16, stride=8)
    probs = np.zeros((len(ds), 16, 2), dtype=np.float32)
    probs[:, :, 0] = (np.arange(len(ds)) % 2)[:, None]        # odd windows say class 0
    probs[:, :, 1] = 1 - probs[:, :, 0]
    out = action_detection.stream_probabilities(probs, ds)
    store = open_store(streams)
    first = int(store.split_indices("xsub_val")[0])
    assert out[first].shape == (store.lengths[first], 2)
    assert np.allclose(out[first][:8], [0, 1])               # window 0 alone
    assert np.allclose(out[first][8:16], [0.5, 0.5])         # windows 0 and 1


def test_bad_flags_and_data(streams, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        action_detection.main(["--data", str(streams), "--output", str(tmp_path),
                               "--threshold", "1.5"])
    assert exc.value.code == 2 and "--threshold" in capsys.readouterr().err
    trimmed = synthetic.write_synthetic(tmp_path / "trimmed", num_sequences=4, num_subjects=4)
    with pytest.raises(ValueError, match="no per-frame labels"):
        action_detection.main(["--data", str(trimmed), "--output", str(tmp_path / "x"),
                               *COMMON])


def test_predict_streams_equals_stitched_windows(streams):
    from evaluation.features import stream_transform
    from feeders.untrimmed import WindowDataset
    store = open_store(streams)
    ds = WindowDataset(store, "xsub_val", clip_len=16, stride=4)
    enc = build_encoder("dste", "tiny", layout="ntu25", clip_len=16, channels=3, bodies=2)
    head = torch.nn.Linear(enc.feature_dim, store.num_classes)
    transform = stream_transform("j", store.layout.parents, 3)
    direct = action_detection.predict_streams(enc, head, ds, transform, torch.device("cpu"),
                                              None, batch_size=7)
    feats, _ = action_detection.extract_dense(enc, ds, transform, torch.device("cpu"), None, 7)
    stitched = action_detection.stream_probabilities(
        action_detection.window_probabilities(head, feats), ds)
    assert direct.keys() == stitched.keys()
    for s in direct:
        assert np.allclose(direct[s], stitched[s], atol=1e-5)


def test_selection_folds_hold_out_every_stream_once():
    folds = selection.selection_folds(np.arange(10), 0.2)   # UTKinect: 10 streams
    assert [f.tolist() for f in folds] == [[0, 5], [1, 6], [2, 7], [3, 8], [4, 9]]
    assert [f.tolist() for f in selection.selection_folds(np.arange(3), 0.5)] == [[0, 2], [1]]
    assert len(selection.selection_folds(np.arange(4), 0.9)) == 2   # at least two folds
    with pytest.raises(ValueError, match="at least 2 training streams"):
        selection.selection_folds(np.arange(1), 0.2)


def test_threshold_selected_on_training_streams(streams, tmp_path):
    out = tmp_path / "sel"
    action_detection.main(["--data", str(streams), "--output", str(out), *COMMON,
                           "--select-threshold", "0.5", "--lr", "1.0"])
    result = json.loads((out / "detection.json").read_text())
    sel = result["config"]["threshold_selection"]
    store = open_store(streams)
    train_names = {str(store.names[i]) for i in store.split_indices("xsub_train")}
    held = [name for fold in sel["folds"] for name in fold]   # every training stream once
    assert sorted(held) == sorted(train_names) and len(sel["folds"]) >= 2
    # held-out streams are predicted on the test grid (--test-stride), not the training one
    assert sel["held_out_window_stride"] == result["config"]["test_window_stride"]
    assert result["config"]["test_window_stride"] != result["config"]["window_stride"]
    grid = sel["grid_mAP_a@0.5"]
    assert set(grid) == {str(w) for w in selection.SMOOTH_GRID}
    assert all(set(row) == {f"{t:g}" for t in selection.THRESHOLD_GRID}
               for row in grid.values())
    assert result["config"]["threshold"] == sel["threshold"]
    assert result["config"]["smooth"] == sel["smooth"]
    best = max(v for row in grid.values() for v in row.values())
    assert grid[str(sel["smooth"])][f"{sel['threshold']:g}"] == best
    # ties go to the lower threshold, then the narrower smoothing
    ties = [(t, w) for w in selection.SMOOTH_GRID for t in selection.THRESHOLD_GRID
            if grid[str(w)][f"{t:g}"] == best]
    assert (sel["threshold"], sel["smooth"]) == min(ties)


def test_selection_predicts_held_out_streams_on_the_test_grid(monkeypatch):
    """Each fold's head learns from the other streams' training windows and predicts the
    fold's streams from the windows of the held (test-grid) set, all of them."""
    class Windows:
        def __init__(self, windows, stride):
            self.windows, self.stride = np.asarray(windows), stride

    train = Windows([(s, t) for s in range(4) for t in (0, 8)], 8)
    held = Windows([(s, t) for s in range(4) for t in (0, 4, 8)], 4)
    seen = []

    def fake(args, store, train_part, target_part, device, writer):
        seen.append((train_part[0], train_part[3], target_part[0], target_part[3]))
        return {int(s): np.zeros((12, 2)) for s in np.unique(target_part[0].windows[target_part[3], 0])}

    monkeypatch.setattr(action_detection, "frozen_probabilities", fake)
    chosen = {"threshold": 0.3, "smooth": 5, "grid_mAP_a@0.5": {}, "best_mAP_a@0.5": 1.0}
    monkeypatch.setattr(action_detection, "choose_settings", lambda probs, *a: (
        chosen if sorted(probs) == [0, 1, 2, 3] else None))   # every stream once

    class Store:
        names = np.array(["a", "b", "c", "d"])
        num_classes = 2

    args = argparse.Namespace(select_threshold=0.5, min_length=5, nms=None)
    sel = action_detection.select_threshold((train, None, None), (held, None), Store(), args,
                                            None, None)
    assert sel["held_out_window_stride"] == 4 and len(seen) == 2
    assert sel["threshold"] == 0.3 and sel["folds"] == [["a", "c"], ["b", "d"]]
    for train_set, train_rows, target_set, target_rows in seen:
        assert train_set is train and target_set is held
        fold = set(held.windows[target_rows, 0].tolist())
        assert fold.isdisjoint(train.windows[train_rows, 0].tolist())   # no held-out stream
        assert len(target_rows) == 3 * len(fold)   # every test-grid window of the fold
    assert sorted(s for _, _, t, r in seen for s in set(t.windows[r, 0].tolist())) == [0, 1, 2, 3]


def test_recipe_and_non_finite_features(streams, tmp_path, capsys, monkeypatch):
    """--defaults: the frozen probe of a small set gets lr 1.0 (recipes.py), a given --lr wins;
    a NaN feature stops the run with a message naming the split (evaluation/checks.py)."""
    base = ["--data", str(streams), "--output", str(tmp_path / "run"), "--print-config"]
    action_detection.main(base)
    config = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert config["lr"] == 1.0 and config["defaults"]["set"]["lr"] == 1.0
    action_detection.main(base + ["--lr", "0.05"])
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["lr"] == 0.05
    original = action_detection.extract_dense

    def broken(*args, **kw):
        feats, labels = original(*args, **kw)
        feats[1] = float("nan")
        return feats, labels
    monkeypatch.setattr(action_detection, "extract_dense", broken)
    with pytest.raises(ValueError,
                       match=r"features of training windows \(xsub_train\).*non-finite"):
        action_detection.main(["--data", str(streams), "--output", str(tmp_path / "nan"),
                               "--no-cache", *COMMON])


def test_num_clips_shifts_the_test_windows(streams, tmp_path):
    """--num-clips 2 with test stride 8: two grids of windows 4 frames apart, i.e. the same
    scores as --test-stride 4, recorded in the JSON."""
    base = ["--data", str(streams), *COMMON, "--test-stride", "8"]
    clips = action_detection.main(base + ["--output", str(tmp_path / "c"), "--num-clips", "2"])
    finer = action_detection.main(["--data", str(streams), *COMMON, "--test-stride", "4",
                                   "--output", str(tmp_path / "f")])
    assert clips["mAP_a"] == finer["mAP_a"]
    result = json.loads((tmp_path / "c" / "detection.json").read_text())
    assert result["config"]["num_clips"] == 2 and result["config"]["test_window_stride"] == 4
    with np.load(tmp_path / "c" / "detection_scores.npz") as a, \
            np.load(tmp_path / "f" / "detection_scores.npz") as b:
        assert np.allclose(a["scores"], b["scores"], atol=1e-6)
    action_detection.main(base + ["--output", str(tmp_path / "o")])
    with np.load(tmp_path / "o" / "detection_scores.npz") as o, \
            np.load(tmp_path / "c" / "detection_scores.npz") as a:
        assert not np.allclose(o["scores"], a["scores"])   # the extra grid changed the scores


def test_tpn_neck_in_detection(streams, tmp_path):
    """--neck tpn (fine-tuning a GCN): dense logits and per-frame auxiliary logits of the
    window length, the auxiliary loss logged; refused for a frozen encoder and for DSTE."""
    enc = build_encoder("stgcn", "tiny", layout="ntu25", clip_len=16, channels=3, bodies=2)
    model = action_detection.DenseClassifier(enc, 5, seed=0, neck="tpn")
    logits, aux = model(torch.randn(2, 3, 16, 25, 2), with_aux=True)
    assert logits.shape == aux.shape == (2, 16, 5)
    assert model(torch.randn(2, 3, 16, 25, 2)).shape == (2, 16, 5)
    out = tmp_path / "tpn"
    action_detection.main(["--data", str(streams), "--output", str(out), "--finetune",
                           "--backbone", "stgcn", "--neck", "tpn", *COMMON[:-2], "--epochs", "1",
                           "--batch-size", "16"])
    result = json.loads((out / "detection_finetune.json").read_text())
    assert result["config"]["neck"] == "tpn"
    log = (out / "detection_finetune" / "log.txt").read_text()
    assert "aux_ce" in log
    with pytest.raises(SystemExit):
        action_detection.main(["--data", str(streams), "--output", str(tmp_path / "f"),
                               "--neck", "tpn", *COMMON])
    with pytest.raises(ValueError, match="GCN encoder"):
        action_detection.main(["--data", str(streams), "--output", str(tmp_path / "d"),
                               "--finetune", "--neck", "tpn", *COMMON[:-2], "--epochs", "1"])


def test_settings_from_another_result(streams, tmp_path, capsys):
    """--settings-from: the proposal settings of another result (e.g. a frozen run's selection
    for a fine-tune); refused with --select-threshold and for a file without them."""
    source = tmp_path / "source.json"
    source.write_text(json.dumps({"config": {"threshold": 0.3, "min_length": 2, "smooth": 5,
                                             "nms": None}}))
    out = tmp_path / "run"
    action_detection.main(["--data", str(streams), "--output", str(out), *COMMON,
                           "--settings-from", str(source), "--threshold", "0.9"])
    config = json.loads((out / "detection.json").read_text())["config"]
    assert (config["threshold"], config["min_length"], config["smooth"]) == (0.3, 2, 5)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"config": {"threshold": 0.3}}))
    for extra, word in ((["--settings-from", str(source), "--select-threshold", "0.2"],
                         "give one"),
                        (["--settings-from", str(bad)], "bad.json: its config has no min_length")):
        with pytest.raises(SystemExit) as exc:
            action_detection.main(["--data", str(streams), "--output", str(tmp_path / "x"),
                                   *COMMON, *extra])
        assert exc.value.code == 2 and word in capsys.readouterr().err

"""Untrimmed streams: the synthetic generator, windows, the window store, feeders.inspect."""
import numpy as np
import pytest
import torch

from feeders import synthetic
from feeders.inspect import format_text, summarize
from feeders.store import open_store
from feeders.untrimmed import (WindowDataset, cut_window, instances_from_labels, segments,
                               write_windows)


@pytest.fixture(scope="module")
def untrimmed(tmp_path_factory):
    return open_store(synthetic.write_untrimmed(tmp_path_factory.mktemp("u") / "u",
                                                num_streams=4, num_subjects=4))


def test_stream_is_deterministic_and_labelled():
    subjects = synthetic.subject_table(0, 4)
    a, b = synthetic.generate_stream(0, 1, subjects), synthetic.generate_stream(0, 1, subjects)
    assert np.array_equal(a.data, b.data) and np.array_equal(a.label, b.label)
    c = synthetic.generate_stream(1, 1, synthetic.subject_table(1, 4))
    assert not np.array_equal(a.label, c.label) or not np.allclose(a.data[:10], c.data[:10])
    runs = segments(a.label)
    actions = [r for r in runs if r[0] > 0]
    lo, hi = synthetic.ACTIONS_PER_STREAM
    assert lo <= len(actions) <= hi
    # idle frames before, between and after the actions, each gap 15..59 frames
    gaps = [e - s for label, s, e in runs if label == 0]
    assert len(gaps) == len(actions) + 1 and min(gaps) >= 15 and max(gaps) < 60
    assert all(synthetic.MIN_LEN <= e - s <= synthetic.MAX_LEN for _, s, e in actions)
    assert set(a.label.tolist()) <= set(range(len(synthetic.UNTRIMMED_CLASS_NAMES)))
    assert not a.data[:, 1].any()                 # one person
    # the pose departs from rest during actions, not while idle: the joint-to-joint distances
    # (blind to turns and steps) differ from their median far more on action frames
    for index in range(4):
        s = synthetic.generate_stream(0, index, subjects)
        x = s.data[:, 0]
        dist = np.linalg.norm(x[:, :, None] - x[:, None], axis=-1)
        change = np.abs(dist - np.median(dist, axis=0)).mean(axis=(1, 2))
        assert change[s.label > 0].mean() > 2 * change[s.label == 0].mean()


def test_store_splits_and_inspect(untrimmed):
    store = untrimmed
    assert store.num_classes == 11 and store.class_names[0] == "background"
    assert "frame_labels" in store.frame_array_names
    assert {int(store.subjects[i]) % 2 for i in store.split_indices("xsub_train")} == {1}
    assert {int(store.subjects[i]) % 2 for i in store.split_indices("xsub_val")} == {0}
    summary = summarize(store)["untrimmed"]
    labels = [store.frame_array("frame_labels", i) for i in range(len(store))]
    assert summary["all"]["instances"] == sum(len(instances_from_labels(l)) for l in labels)
    background = sum(int((l == 0).sum()) for l in labels) / sum(len(l) for l in labels)
    assert summary["all"]["background_share"] == pytest.approx(background)
    assert "background" in format_text(summarize(store))


def test_cut_window_pads_with_the_last_frame():
    seq = np.arange(5)[:, None] * np.ones((5, 2))
    part, real = cut_window(seq, 3, 4)
    assert real == 2 and part[:, 0].tolist() == [3, 4, 4, 4]


def test_window_dataset_items(untrimmed):
    ds = WindowDataset(untrimmed, "xsub_train", clip_len=64, stride=32)
    s, start = (int(v) for v in ds.windows[1])
    clip, labels, index = ds[1]
    assert clip.shape == (3, 64, 25, 2) and labels.shape == (64,) and index == 1
    stream = untrimmed.frame_array("frame_labels", s)
    assert labels.tolist() == stream[start:start + 64].tolist()
    # each window is normalised at its own first frame: body 1's centre joint there is 0
    assert torch.allclose(clip[:, 0, untrimmed.layout.center, 0], torch.zeros(3), atol=1e-6)
    # every frame of every stream of the split is in some window
    for seq in untrimmed.split_indices("xsub_train"):
        starts = ds.windows[ds.windows[:, 0] == seq, 1]
        covered = np.zeros(untrimmed.lengths[seq], bool)
        for st in starts:
            covered[st:st + 64] = True
        assert covered.all()
    short = WindowDataset(untrimmed, "xsub_val", clip_len=2000, stride=100)
    _, labels, _ = short[0]
    assert (labels[int(untrimmed.lengths[short.windows[0, 0]]):] == -1).all()


def test_window_store_for_pretraining(untrimmed, tmp_path):
    out = open_store(write_windows(untrimmed.root, tmp_path / "w", window=128, stride=64))
    assert set(out.splits) == set(untrimmed.splits)
    first = untrimmed.sequence(0)
    assert out.names[0] == f"{untrimmed.names[0]}@0"
    assert np.array_equal(out.sequence(1), first[64:192])
    assert np.array_equal(out.frame_array("frame_labels", 1),
                          untrimmed.frame_array("frame_labels", 0)[64:192])
    windows_of_train = sum(1 for n in out.split_indices("xsub_train"))
    assert windows_of_train == sum(len(range(0, int(untrimmed.lengths[i]) - 128 + 1, 64)) +
                                   (1 if (int(untrimmed.lengths[i]) - 128) % 64 else 0)
                                   for i in untrimmed.split_indices("xsub_train"))


def test_cli(tmp_path, capsys):
    synthetic.main(["--untrimmed", "--out", str(tmp_path / "s"), "--num-streams", "2"])
    assert "2 untrimmed streams" in capsys.readouterr().out
    assert len(open_store(tmp_path / "s")) == 2


def test_detection_floor_on_identical_streams(untrimmed, tmp_path):
    """A test split equal to the training split: every frame finds itself, so the floor is
    perfect (one-hot probabilities of the true labels)."""
    from evaluation.detection_floor import floor_probabilities, main
    train = untrimmed.split_indices("xsub_train")
    probs = floor_probabilities(untrimmed, train, train)
    for s, p in probs.items():
        assert (p.argmax(1) == untrimmed.frame_array("frame_labels", s)).all()
    metrics = main(["--data", str(untrimmed.root), "--split", "xsub_train", "--eval-split",
                    "xsub_train", "--output", str(tmp_path), "--min-length", "1"])
    assert metrics["segmentation"]["accuracy"] == 100
    assert metrics["mAP_v"]["0.5"] == pytest.approx(100)
    assert (tmp_path / "detection_floor.json").is_file()


def test_detection_floor_settings_from_a_detection_result(untrimmed, tmp_path):
    """--settings-from takes the proposal settings of a detection.json: the same floor as the
    flags given by hand; a file without them is refused, naming it and the fields."""
    import json

    from evaluation.detection_floor import main
    result = tmp_path / "detection.json"
    result.write_text(json.dumps({"config": {"threshold": 0.3, "min_length": 2, "smooth": 5,
                                             "nms": None}}))
    common = ["--data", str(untrimmed.root), "--split", "xsub_train"]
    by_hand = main(common + ["--output", str(tmp_path / "a"), "--threshold", "0.3",
                             "--min-length", "2", "--smooth", "5"])
    taken = main(common + ["--output", str(tmp_path / "b"), "--settings-from", str(result)])
    assert taken == by_hand
    config = json.loads((tmp_path / "b" / "detection_floor.json").read_text())["config"]
    assert (config["threshold"], config["min_length"], config["smooth"]) == (0.3, 2, 5)
    result.write_text(json.dumps({"config": {"threshold": 0.3}}))
    with pytest.raises(ValueError, match=r"detection.json: its config has no min_length, smooth, nms"):
        main(common + ["--output", str(tmp_path / "c"), "--settings-from", str(result)])


def test_detection_floor_selects_its_settings_out_of_fold(untrimmed, tmp_path):
    """--select-threshold: each training stream's frames are matched against the other folds'
    streams only (never itself), and the kept pair is the grid's best (evaluation.selection)."""
    import json

    import pytest as _pytest

    from evaluation import selection
    from evaluation.detection_floor import floor_probabilities, main
    out = tmp_path / "sel"
    main(["--data", str(untrimmed.root), "--split", "xsub_train", "--output", str(out),
          "--select-threshold", "0.5"])
    config = json.loads((out / "detection_floor.json").read_text())["config"]
    sel = config["threshold_selection"]
    train = untrimmed.split_indices("xsub_train")
    names = [str(untrimmed.names[s]) for s in train]
    assert sorted(n for fold in sel["folds"] for n in fold) == sorted(names)
    # by hand: out-of-fold probabilities, then the same grid search
    by_name = {str(untrimmed.names[s]): int(s) for s in train}
    probs = {}
    for fold in sel["folds"]:
        held = [by_name[n] for n in fold]
        gallery = [int(s) for s in train if int(s) not in held]
        probs.update(floor_probabilities(untrimmed, gallery, held))
    assert sorted(probs) == sorted(int(s) for s in train)
    want = selection.choose_settings(probs, untrimmed, 5, None)
    assert sel["grid_mAP_a@0.5"] == want["grid_mAP_a@0.5"]
    assert (config["threshold"], config["smooth"]) == (want["threshold"], want["smooth"])
    # a stream matched against itself would be perfect; out of fold it is not
    assert sel["best_mAP_a@0.5"] < 100
    with _pytest.raises(SystemExit):
        main(["--data", str(untrimmed.root), "--output", str(tmp_path / "x"),
              "--select-threshold", "0.5", "--settings-from", str(out / "detection_floor.json")])

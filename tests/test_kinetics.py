"""Kinetics-skeleton JSON reader: golden values from the real sample clips, body ranking,
empty frames, label lists and names, bad input."""
import json

import numpy as np
import pytest

from feeders.prepare import prepare
from feeders.store import open_store


@pytest.fixture(scope="module")
def kinetics(shared_data, tmp_path_factory):
    src = shared_data / "kinetics_samples"
    out = tmp_path_factory.mktemp("kinetics") / "ds"
    prepare("kinetics", src, out, val_dir=src / "kinetics_val_old",
            val_labels=src / "kinetics_val_label-old.json")
    return open_store(out, verify=True)


def raw_clip(shared_data, folder, name):
    return json.loads((shared_data / "kinetics_samples" / folder / f"{name}.json").read_text())


def test_golden_counts_and_labels(kinetics, shared_data):
    assert len(kinetics) == 12
    assert len(kinetics.split_indices("train")) == 5
    assert len(kinetics.split_indices("val")) == 7
    assert (kinetics.layout.name, kinetics.channels, kinetics.bodies) == ("openpose18", 3, 2)
    names = (shared_data / "kinetics_samples/label_name.txt").read_text().splitlines()
    assert kinetics.num_classes == 400 and kinetics.class_names == names
    assert len(set(kinetics.labels.tolist())) == 11
    by_name = dict(zip(kinetics.names.tolist(), kinetics.labels.tolist()))
    assert by_name["__NrybzYzUg"] == names.index("abseiling") == 0
    assert by_name["__u6odV5hrI"] == by_name["__vOysOPoCY"] == names.index("parkour") == 207
    # train clips: the remapped label_index 0..4 of the shared list is ignored
    assert kinetics.class_names[by_name["___dTOdxzXY"]] == "jumping into pool"
    for i in kinetics.split_indices("val"):  # the original val list's label_index agrees
        raw = raw_clip(shared_data, "kinetics_val_old", kinetics.names[i])
        assert kinetics.labels[i] == raw["label_index"]


def test_empty_frames_stay_as_zeros(kinetics, shared_data):
    i = kinetics.names.tolist().index("__0muxHV-Uw")
    seq = kinetics.sequence(i)
    raw = raw_clip(shared_data, "kinetics_train", "__0muxHV-Uw")
    assert seq.shape == (299, 2, 18, 3) and kinetics.lengths[i] == 299
    empty = [f["frame_index"] for f in raw["data"] if not f["skeleton"]]
    assert 1 in empty and 23 in empty and 22 not in empty
    assert not seq[0].any() and not seq[22].any()  # frame_index 1 and 23
    assert seq[21].any()
    all_zero = np.flatnonzero(~seq.reshape(299, -1).any(axis=1)) + 1
    assert all_zero.tolist() == sorted(empty)


def test_bodies_ranked_by_summed_score(kinetics, shared_data):
    i = kinetics.names.tolist().index("__PYrzYbzKE")  # up to 11 people per frame
    raw = raw_clip(shared_data, "kinetics_val_old", "__PYrzYbzKE")
    frame = max(raw["data"], key=lambda f: len(f["skeleton"]))
    assert len(frame["skeleton"]) > 2
    ranked = sorted(frame["skeleton"], key=lambda s: -sum(s["score"]))
    got = kinetics.sequence(i)[frame["frame_index"] - 1]  # (M, V, 3)
    for m in range(2):
        pose = np.array(ranked[m]["pose"], dtype=np.float32).reshape(18, 2)
        np.testing.assert_array_equal(got[m, :, :2], pose)
        np.testing.assert_array_equal(got[m, :, 2], np.array(ranked[m]["score"], np.float32))


def skeleton(value, score):
    return {"pose": [value] * 36, "score": [score] * 18}


def write_clip(folder, name, frames, label="dancing", **extra):
    folder.mkdir(parents=True, exist_ok=True)
    data = [{"frame_index": t, "skeleton": s} for t, s in frames]
    (folder / f"{name}.json").write_text(json.dumps({"data": data, "label": label,
                                                     "label_index": 7, **extra}))


def test_small_clips_without_label_lists(tmp_path, out_root):
    train, val = tmp_path / "kinetics_train", tmp_path / "kinetics_val"
    # frame 2 missing from data, frame 3 empty, frame 4 has three people
    write_clip(train, "c1", [(1, [skeleton(0.1, 0.5)]), (3, []),
                             (4, [skeleton(0.2, 0.1), skeleton(0.3, 0.9), skeleton(0.4, 0.5)])])
    write_clip(val, "c2", [(1, [skeleton(0.5, 1.0)])], label="archery")
    summary = prepare("kinetics", tmp_path, out_root / "ds")
    assert summary["splits"] == {"train": 1, "val": 1}
    store = open_store(out_root / "ds")
    assert store.class_names == ["archery", "dancing"]  # sorted label strings
    assert store.labels.tolist() == [1, 0]
    seq = store.sequence(0)
    assert seq.shape == (4, 2, 18, 3)
    assert not seq[1].any() and not seq[2].any()
    np.testing.assert_allclose(seq[3, :, 0], [[0.3, 0.3, 0.9], [0.4, 0.4, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(seq[0, 0, 5], [0.1, 0.1, 0.5], rtol=1e-6)
    assert not seq[0, 1].any()

    prepare("kinetics", tmp_path, out_root / "one", bodies=1)
    np.testing.assert_allclose(open_store(out_root / "one").sequence(0)[3, :, 0],
                               [[0.3, 0.3, 0.9]], rtol=1e-6)


def test_label_lists_and_names(tmp_path, out_root):
    clips = tmp_path / "clips"
    write_clip(clips, "keep", [(1, [skeleton(0.1, 0.5)])], label="archery")
    write_clip(clips, "noskel", [(1, [])], label="archery")
    labels = {"keep": {"has_skeleton": True, "label": "archery", "label_index": 3},
              "noskel": {"has_skeleton": False, "label": "archery", "label_index": 3}}
    (tmp_path / "train_labels.json").write_text(json.dumps(labels))
    (tmp_path / "names.txt").write_text("abseiling\narchery\nzumba\n")
    summary = prepare("kinetics", tmp_path, out_root / "ds", train_dir=clips,
                      train_labels=tmp_path / "train_labels.json",
                      label_names=tmp_path / "names.txt")
    assert summary["num_sequences"] == 1 and summary["splits"] == {"train": 1}
    store = open_store(out_root / "ds")
    assert store.names.tolist() == ["keep"] and store.labels.tolist() == [1]
    assert store.num_classes == 3

    labels["keep"]["label"] = "zumba"  # disagrees with the clip's own label
    (tmp_path / "train_labels.json").write_text(json.dumps(labels))
    with pytest.raises(ValueError, match=r"keep.json: field 'label' is 'archery', but the "
                                         r"label list says 'zumba'"):
        prepare("kinetics", tmp_path, out_root / "x", train_dir=clips,
                train_labels=tmp_path / "train_labels.json", label_names=tmp_path / "names.txt")
    del labels["keep"]
    (tmp_path / "train_labels.json").write_text(json.dumps(labels))
    with pytest.raises(ValueError, match=r"train_labels.json: no entry .* for clip 'keep'"):
        prepare("kinetics", tmp_path, out_root / "x", train_dir=clips,
                train_labels=tmp_path / "train_labels.json")
    (tmp_path / "names.txt").write_text("abseiling\nzumba\n")
    with pytest.raises(ValueError, match=r"keep.json: label 'archery' is not in .*names.txt"):
        prepare("kinetics", tmp_path, out_root / "x", train_dir=clips,
                label_names=tmp_path / "names.txt")


@pytest.mark.parametrize("content, message", [
    ('{"data": [{"frame_index": 1, "skel', "not valid JSON"),
    (json.dumps({"data": [{"frame_index": 1, "skeleton": [{"pose": [0.1] * 34,
                                                            "score": [1.0] * 17}]}],
                 "label": "a"}), "frame_index 1: 'pose' has 34 values and 'score' 17"),
    (json.dumps({"data": [{"frame_index": 2, "skeleton": [skeleton(float("nan"), 1.0)]}],
                 "label": "a"}), "frame_index 2: 'pose'/'score' contain NaN"),
    (json.dumps({"data": [{"frame_index": 0, "skeleton": []}], "label": "a"}),
     "'frame_index' 0, expected an int >= 1"),
    (json.dumps({"data": [], "label": "a"}), "field 'data' is empty"),
    (json.dumps({"label": "a"}), "expected an object with a 'data' list"),
])
def test_bad_clips(tmp_path, content, message, out_root):
    folder = tmp_path / "kinetics_train"
    write_clip(folder, "good", [(1, [skeleton(0.1, 0.5)])], label="a")
    (folder / "bad.json").write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        prepare("kinetics", tmp_path, out_root / "ds")
    assert "bad.json" in str(err.value)
    assert not (out_root / "ds").exists()


def test_missing_folders(tmp_path, out_root):
    with pytest.raises(ValueError, match="no kinetics_train/ or kinetics_val/"):
        prepare("kinetics", tmp_path, out_root / "ds")
    (tmp_path / "kinetics_val").mkdir()
    with pytest.raises(ValueError, match=r"kinetics_val: no clip \*.json files"):
        prepare("kinetics", tmp_path, out_root / "ds")
    with pytest.raises(ValueError, match="nowhere: train clip folder not found"):
        prepare("kinetics", tmp_path, out_root / "ds", train_dir=tmp_path / "nowhere")


def test_export_to_pyskl_and_back(kinetics, tmp_path):
    """A 2D+score store exports as keypoint (M, T, 18, 2) + keypoint_score and reads back
    exactly (float32 keypoints, as pyskl's)."""
    from feeders.export import to_pyskl

    to_pyskl(kinetics.root, tmp_path / "k.pkl")
    # pyskl pickles carry no class count: 11 labels up to 335 need --num-classes
    prepare("pyskl", tmp_path / "k.pkl", tmp_path / "back", num_classes=kinetics.num_classes)
    back = open_store(tmp_path / "back")
    assert back.layout.name == "openpose18" and back.channels == 3 and back.bodies == 2
    assert back.names.tolist() == kinetics.names.tolist()
    assert back.labels.tolist() == kinetics.labels.tolist()
    for split in ("train", "val"):
        assert back.split_indices(split).tolist() == kinetics.split_indices(split).tolist()
    for i in range(len(kinetics)):
        want = kinetics.sequence(i)
        np.testing.assert_array_equal(back.sequence(i), want)

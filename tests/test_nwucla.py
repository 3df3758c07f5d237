"""NW-UCLA reader: golden values from the real all_sqe files, splits, val_label.pkl, bad input."""
import json
import pickle

import numpy as np
import pytest

from feeders.formats.nwucla import CLASS_NAMES
from feeders.prepare import prepare
from feeders.store import open_store


@pytest.fixture(scope="module")
def ucla(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ucla") / "ds"
    prepare("nwucla", shared_data / "nw_ucla", out, workers=2)
    return open_store(out, verify=True)


def test_golden_counts(ucla):
    assert len(ucla) == 1484 and ucla.num_classes == 10
    assert ucla.class_names == CLASS_NAMES
    assert (ucla.layout.name, ucla.channels, ucla.joints, ucla.bodies) == ("kinect20", 3, 20, 1)
    assert len(ucla.split_indices("xview_train")) == 1020
    assert len(ucla.split_indices("xview_val")) == 464
    assert set(ucla.views[ucla.split_indices("xview_train")]) == {1, 2}
    assert set(ucla.views[ucla.split_indices("xview_val")]) == {3}
    assert sorted(set(ucla.labels.tolist())) == list(range(10))


def test_single_frame_sample_and_values(ucla, shared_data):
    names = ucla.names.tolist()
    i = names.index("a02_s09_e04_v02")
    assert ucla.lengths[i] == 1
    assert (ucla.labels[i], ucla.subjects[i], ucla.replications[i], ucla.views[i]) == (1, 9, 4, 2)
    raw = json.loads((shared_data / "nw_ucla/all_sqe/a02_s09_e04_v02.json").read_text())
    np.testing.assert_array_equal(ucla.sequence(i)[:, 0],
                                  np.array(raw["skeletons"], dtype=np.float32))
    j = names.index("a12_s10_e03_v01")
    raw = json.loads((shared_data / "nw_ucla/all_sqe/a12_s10_e03_v01.json").read_text())
    assert ucla.labels[j] == raw["label"] - 1 == 9
    np.testing.assert_array_equal(ucla.sequence(j)[:, 0],
                                  np.array(raw["skeletons"], dtype=np.float32))


def test_val_label_pkl_agrees(ucla, shared_data):
    """val_label.pkl lists the 464 view-3 sequences as {file_name, length, label (1-based)}."""
    with open(shared_data / "nw_ucla/val_label.pkl", "rb") as f:
        val = pickle.load(f)
    assert len(val) == 464
    position = {n: i for i, n in enumerate(ucla.names.tolist())}
    val_idx = ucla.split_indices("xview_val")
    assert {e["file_name"] for e in val} == set(ucla.names[val_idx].tolist())
    for e in val:
        i = position[e["file_name"]]
        assert ucla.labels[i] == e["label"] - 1
        assert ucla.lengths[i] == e["length"]


def write_clip(folder, name, skeletons, label, **override):
    content = {"file_name": name, "skeletons": skeletons, "label": label, **override}
    (folder / f"{name}.json").write_text(json.dumps(content))


def good_skeletons(t=3):
    return np.arange(t * 20 * 3, dtype=float).reshape(t, 20, 3).tolist()


def test_small_folder_splits(tmp_path):
    folder = tmp_path / "all_sqe"
    folder.mkdir()
    write_clip(folder, "a01_s01_e00_v01", good_skeletons(), 1)
    write_clip(folder, "a11_s02_e01_v03", good_skeletons(2), 9)
    write_clip(folder, "a05_s03_e02_v02", good_skeletons(1), 5)
    summary = prepare("nwucla", folder, tmp_path / "ds")  # the all_sqe folder itself
    assert summary["splits"] == {"xview_train": 2, "xview_val": 1}
    store = open_store(tmp_path / "ds")
    assert store.names.tolist() == ["a01_s01_e00_v01", "a05_s03_e02_v02", "a11_s02_e01_v03"]
    assert store.labels.tolist() == [0, 4, 8]
    assert store.split_indices("xview_val").tolist() == [2]
    np.testing.assert_array_equal(store.sequence(0)[2, 0, 19], [177.0, 178.0, 179.0])


@pytest.mark.parametrize("write, message", [
    (lambda f: (f / "a01_s01_e00_v01.json").write_text('{"file_name": "a01_s01_e00_v01", "ske'),
     "not valid JSON"),
    (lambda f: write_clip(f, "a01_s01_e00_v01", np.zeros((3, 19, 3)).tolist(), 1),
     r"field 'skeletons' has shape \(3, 19, 3\), expected \(T>=1, 20, 3\)"),
    (lambda f: write_clip(f, "a01_s01_e00_v01", [[[0, 0, 0]] * 20, [[0, 0]] * 20], 1),
     "field 'skeletons' is ragged"),
    (lambda f: write_clip(f, "a01_s01_e00_v01", [[[float("nan"), 0, 0]] * 20], 1),
     "field 'skeletons' contains NaN"),
    (lambda f: write_clip(f, "a01_s01_e00_v01", good_skeletons(), 11),
     "field 'label' is 11, expected an int in 1..10"),
    (lambda f: write_clip(f, "a01_s01_e00_v01", good_skeletons(), 2),
     "field 'label' is 2, but action id a01 has label 1"),
    (lambda f: write_clip(f, "a01_s01_e00_v01", [], 1), r"shape \(0,\)"),
    (lambda f: write_clip(f, "a01_s01_e00_v01", good_skeletons(), 1, file_name="x"),
     "field 'file_name' is 'x'"),
    (lambda f: write_clip(f, "walk_01", good_skeletons(), 1),
     "does not match aAA_sSS_eEE_vVV"),
])
def test_bad_files(tmp_path, write, message, out_root):
    folder = tmp_path / "all_sqe"
    folder.mkdir()
    write_clip(folder, "a02_s01_e00_v01", good_skeletons(), 2)
    write(folder)
    with pytest.raises(ValueError, match=message) as err:
        prepare("nwucla", tmp_path, out_root / "ds")
    assert ".json" in str(err.value)
    assert not (out_root / "ds").exists()


def test_empty_folder(tmp_path, out_root):
    (tmp_path / "all_sqe").mkdir()
    with pytest.raises(ValueError, match="all_sqe: no NW-UCLA"):
        prepare("nwucla", tmp_path, out_root / "ds")


def test_view_normalisation_golden_cross_view_floor(ucla):
    """Raw cosine 1-NN from view 1 to view 2 of xview_train (the test view 3 is not used):
    turning every sequence to face the camera lifts the learning-free floor by 10 points."""
    import torch

    from evaluation.knn import knn_evaluate
    from feeders.dataset import EvalDataset

    top1 = {}
    for normalize in ("first_frame", "view"):
        ds = EvalDataset(ucla, "xview_train", 32, normalize=normalize)
        clips = torch.stack([ds[i][0].reshape(-1) for i in range(len(ds))])
        labels = torch.as_tensor(ds.labels)
        views = torch.as_tensor(ucla.views[ds.sequence_indices])
        g, q = views == 1, views == 2
        top1[normalize] = knn_evaluate(clips[q], labels[q], clips[g], labels[g], k=1)["top1"]
    assert top1["first_frame"] == pytest.approx(51.8, abs=0.1)
    assert top1["view"] == pytest.approx(61.7, abs=0.1)


def test_selection_view_split_and_schedule(ucla, tmp_path):
    """benchmarks/nwucla_select.py: view 1 (516 clips) -> view 2 (504 clips) of xview_train,
    never view 3, and the fine-tuning flags the scripts give ucla (without a hold-out)."""
    import argparse
    import importlib.util
    import shutil
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "nwucla_select.py"
    spec = importlib.util.spec_from_file_location("nwucla_select", path)
    select = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(select)
    shutil.copytree(ucla.root, tmp_path / "ucla")
    views = open_store(select.view_split_store(tmp_path / "ucla"), verify=True)
    train, val = views.split_indices("view1_train"), views.split_indices("view2_val")
    assert (len(train), len(val)) == (516, 504)
    assert set(views.views[train]) == {1} and set(views.views[val]) == {2}
    assert set(train) | set(val) == set(ucla.split_indices("xview_train"))
    flags = select.scripts_schedule(tmp_path / "ucla_views")
    assert "--val-fraction" not in flags
    assert float(flags[flags.index("--shear") + 1]) == 1.0
    assert float(flags[flags.index("--rotate") + 1]) == 90.0  # cross-view 3D: about y
    assert flags[flags.index("--rotate-axes") + 1] == "y"
    assert flags[-1] == "--no-lp-guard"  # candidates are judged on view 2, not by the guard
    assert flags[flags.index("--head-init") + 1] == "random"   # the recipe's on cross-view
    # every candidate's command line is one action_recognition.py accepts
    import action_recognition
    for name, extra in select.CANDIDATES.items():
        action_recognition.parse_args([
            "--mode", "finetune", "--data", str(tmp_path / "ucla_views"), "--split",
            "view1_train", "--eval-split", "view2_val", "--pretrained", "x.pt", "--output",
            str(tmp_path / "c"), "--defaults", "none", *flags, *extra])
    # every fusion row fuses candidates that exist, with one weight per member when given
    for name, (members, weights) in select.FUSIONS.items():
        assert set(members) <= set(select.CANDIDATES), name
        assert weights is None or len(weights) == len(members), name
    assert select.candidate_dir("shear 1.0 + rotate 60, bone input", argparse.Namespace(
        out=tmp_path)) == tmp_path / "shear_1_0_rotate_60_bone_input"
    # the "bone pretraining, ..." candidates run from --bone-checkpoint, which they require
    assert select.BONE_PRETRAINED == {"bone pretraining, shear 1.0 + rotate 60, bone input",
                                      "bone pretraining, shear 1.0 + rotate 60, joint input"}
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"")
    bone_only = ["--checkpoint", str(ckpt), "--data", str(tmp_path / "ucla"),
                 "--only", "bone pretraining, shear 1.0 + rotate 60, bone input"]
    with pytest.raises(SystemExit, match="need --bone-checkpoint"):
        select.main(bone_only)
    with pytest.raises(SystemExit, match="--bone-checkpoint .*missing.pt: no such file"):
        select.main([*bone_only, "--bone-checkpoint", str(tmp_path / "missing.pt")])
    # the "UmURL pretraining, ..." ones from --umurl-checkpoint
    assert "UmURL pretraining, shear 1.0 + rotate 60" in select.UMURL_PRETRAINED
    assert all(n.startswith("UmURL pretraining, ") for n in select.UMURL_PRETRAINED)
    umurl_only = ["--checkpoint", str(ckpt), "--data", str(tmp_path / "ucla"),
                  "--only", "UmURL pretraining, shear 1.0 + rotate 60"]
    with pytest.raises(SystemExit, match="need --umurl-checkpoint"):
        select.main(umurl_only)

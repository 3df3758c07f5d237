"""UTKinect-Action3D streams (feeders/formats/utkinect.py): golden values from the real files."""
import argparse
import warnings

import numpy as np
import pytest

from feeders.formats import utkinect
from feeders.layouts import get_layout
from feeders.prepare import main as prepare_main
from feeders.store import open_store
from feeders.untrimmed import instances_from_labels


@pytest.fixture(scope="module")
def utk_store(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("utk") / "utk"
    with pytest.warns(UserWarning, match="s10_e02 carry has no interval"):
        prepare_main(["--format", "utkinect", "--src", str(shared_data / "utkinect" / "joints"),
                      "--out", str(out)])
    return open_store(out)


def test_streams_frames_by_id_and_labels(utk_store):
    store = utk_store
    assert len(store) == 20 and store.num_classes == 11 and store.layout.name == "kinect20"
    i = list(store.names).index("s01_e01")
    # 560 rows, 545 distinct frame ids (awk '{print $1}' | sort -u | wc -l)
    assert store.lengths[i] == 545
    # the first row of frame id 190 (which appears twice) is kept
    assert np.allclose(store.sequence(i)[0, 0, 0], [0.807139, -0.063421, 1.998671])
    assert np.allclose(store.sequence(i)[0, 0, 19], [1.144314, -0.746678, 2.263423])
    labels = store.frame_array("frame_labels", i)
    # corrected file: walk 252..390 holds 44 distinct ids; pull 1640..1686 and push 1686..1748
    # share frame 1686, which goes to push (it starts later): 10 and 15 frames
    assert (labels == 1).sum() == 44
    assert (labels == utkinect.ACTIONS.index("pull") + 1).sum() == 10
    assert (labels == utkinect.ACTIONS.index("push") + 1).sum() == 15
    assert len(instances_from_labels(labels)) == 10
    j = list(store.names).index("s10_e02")
    assert store.lengths[j] == 628                       # 641 rows, 628 distinct ids
    carry = utkinect.ACTIONS.index("carry") + 1
    assert carry not in store.frame_array("frame_labels", j)   # the NaN interval


def test_cross_subject_split(utk_store):
    store = utk_store
    train = {str(store.names[k]) for k in store.split_indices("xsub_train")}
    val = {str(store.names[k]) for k in store.split_indices("xsub_val")}
    assert train == {f"s{s:02d}_e{e:02d}" for s in (1, 3, 5, 7, 9) for e in (1, 2)}
    assert val == {f"s{s:02d}_e{e:02d}" for s in (2, 4, 6, 8, 10) for e in (1, 2)}


def test_corrected_label_file_is_preferred(shared_data, tmp_path):
    joints = shared_data / "utkinect" / "joints"
    opts = argparse.Namespace(labels=None)
    assert utkinect.label_file(joints, opts).name == "actionLabel_modified.txt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = utkinect.read_label_file(joints / "actionLabel.txt")
        corrected = utkinect.read_label_file(joints / "actionLabel_modified.txt")
    assert original["s01_e02"][0] == (1, 154, 192)      # walk: 154 192 -> 154 270
    assert corrected["s01_e02"][0] == (1, 154, 270)
    assert len(corrected["s10_e02"]) == 9


def test_kinect20_order_is_anatomical(utk_store):
    """The Kinect v1 order fits the data: heights head > shoulder centre > spine > hips > knees
    > ankles (median y over s01_e01), plausible bone lengths, left and right limbs alike.
    (Bone-length variation over time does not tell this tree from shuffled ones here: median
    coefficient of variation 0.13 against a 5th percentile of 0.13 over 50 shuffles.)"""
    seq = np.asarray(utk_store.sequence(0))[:, 0]          # (T, 20, 3)
    layout = get_layout("kinect20")
    j = {name: k for k, name in enumerate(layout.joints)}
    y = np.median(seq[:, :, 1], axis=0)
    chain = ["head", "shoulder_center", "spine", "hip_center", "left_knee", "left_ankle"]
    assert all(y[j[a]] > y[j[b]] for a, b in zip(chain, chain[1:]))
    assert y[j["right_knee"]] > y[j["right_ankle"]]

    def bone(a, b):
        return float(np.median(np.linalg.norm(seq[:, j[a]] - seq[:, j[b]], axis=1)))

    for side in ("left", "right"):
        assert 0.35 < bone(f"{side}_hip", f"{side}_knee") < 0.5          # thigh
        assert 0.3 < bone(f"{side}_knee", f"{side}_ankle") < 0.45        # shin
        assert 0.2 < bone(f"{side}_shoulder", f"{side}_elbow") < 0.3     # upper arm
    for a, b in (("hip", "knee"), ("shoulder", "elbow"), ("elbow", "wrist")):
        left, right = bone(f"left_{a}", f"left_{b}"), bone(f"right_{a}", f"right_{b}")
        assert abs(left - right) < 0.1 * max(left, right)


def test_bad_label_line_names_the_file(tmp_path):
    bad = tmp_path / "actionLabel.txt"
    bad.write_text("s01_e01\nwalk 252 390\n")
    with pytest.raises(ValueError, match=r"actionLabel.txt:2: expected"):
        utkinect.read_label_file(bad)


def test_utk_recipe_from_the_data(utk_store, tmp_path):
    """recipes.KNOWN["utk"]: the small-set recipe at 100 epochs; UTKinect is one frontal Kinect,
    so no view normalisation and no rotation (the view rule reads the data); its pretraining
    windows (<dataset>_windows) get the same recipe; the frozen detection probe lr 1.0."""
    import recipes
    from feeders.untrimmed import write_windows
    pre = recipes.resolve("auto", store_root := utk_store.root, "xsub_train", "pretrain")
    assert pre.name == "utk" and "single view" in pre.reason
    assert pre.values["epochs"] == 100 and pre.values["milestones"] == [80]
    assert pre.values["rotate"] == 0.0 and pre.values["normalize"] == "first_frame"
    windows = write_windows(store_root, tmp_path / "utk_windows", 64, 16)
    again = recipes.resolve("auto", windows, "xsub_train", "pretrain")
    assert again.name == "utk"
    assert {k: again.values[k] for k in ("epochs", "rotate", "clip_len")} == {
        "epochs": 100, "rotate": 0.0, "clip_len": 32}
    assert recipes.resolve("auto", store_root, "xsub_train", "detect").values == {"lr": 1.0}
    assert recipes.resolve("auto", store_root, "xsub_train", "detect_finetune").values == {}
    assert recipes.resolve("auto", store_root, "xsub_train", "detect_tcn").values == {}

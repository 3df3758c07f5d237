"""pyskl annotation pickle: reading, export back to pyskl, exact round trips, bad input."""
import pickle

import numpy as np
import pytest

from feeders.export import main as export_main
from feeders.export import to_pyskl, trim_padding_bodies
from feeders.formats.pyskl import ntu_meta
from feeders.prepare import prepare
from feeders.store import open_store


def make_annotations(rng, num, joints, coords, score, bodies=(1, 2)):
    """Random pyskl annotations with M cycling through ``bodies`` and T = 4 + k."""
    anns = []
    for k in range(num):
        m, t = bodies[k % len(bodies)], 4 + k
        ann = {"frame_dir": f"S00{k % 2 + 1}C00{k % 3 + 1}P0{k + 10}R002A0{k + 20}",
               "label": k % 3, "total_frames": t,
               "keypoint": rng.normal(scale=100, size=(m, t, joints, coords)).astype(np.float16)}
        if score:
            ann["keypoint_score"] = rng.uniform(size=(m, t, joints)).astype(np.float16)
        anns.append(ann)
    return anns


def write_pickle(path, anns, splits=None):
    if splits is None:
        names = [a["frame_dir"] for a in anns]
        splits = {"xsub_train": names[::-2], "xsub_val": names[-2::-2]}
    with open(path, "wb") as f:
        pickle.dump({"split": splits, "annotations": anns}, f)
    return splits


def load_pickle(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def test_roundtrip_3d_exact(tmp_path):
    anns = make_annotations(np.random.default_rng(0), 5, 25, 3, score=False)
    splits = write_pickle(tmp_path / "in.pkl", anns)
    summary = prepare("pyskl", tmp_path / "in.pkl", tmp_path / "ds")
    assert summary["num_sequences"] == 5
    store = open_store(tmp_path / "ds", verify=True)
    assert (store.layout.name, store.channels, store.bodies) == ("ntu25", 3, 2)
    assert store.num_classes == 3
    # one-body samples are zero-padded to M = 2 in the store
    assert store.sequence(0).shape == (4, 2, 25, 3) and not store.sequence(0)[:, 1].any()
    # NTU ids parsed from frame_dir S00sC00cP0ppR002A0aa
    assert store.subjects.tolist() == [10, 11, 12, 13, 14]
    assert store.views.tolist() == [1, 2, 3, 1, 2]
    assert store.setups.tolist() == [1, 2, 1, 2, 1]

    to_pyskl(tmp_path / "ds", tmp_path / "out.pkl")
    out = load_pickle(tmp_path / "out.pkl")
    assert out["split"] == splits  # same names in the same order
    assert len(out["annotations"]) == len(anns)
    for got, want in zip(out["annotations"], anns):
        assert got["frame_dir"] == want["frame_dir"]
        assert got["label"] == want["label"]
        assert got["total_frames"] == want["total_frames"]
        assert got["keypoint"].dtype == np.float32  # pyskl's dtypes
        assert type(got["label"]) is int and type(got["total_frames"]) is int
        assert got["keypoint"].shape == want["keypoint"].shape  # padding body trimmed
        np.testing.assert_array_equal(got["keypoint"], want["keypoint"])
        assert "keypoint_score" not in got
        assert "img_shape" not in got  # 3D data


def test_roundtrip_2d_with_score_exact(tmp_path):
    anns = make_annotations(np.random.default_rng(1), 4, 17, 2, score=True)
    splits = write_pickle(tmp_path / "in.pkl", anns)
    prepare("pyskl", tmp_path / "in.pkl", tmp_path / "ds", dtype="float16")
    store = open_store(tmp_path / "ds")
    assert (store.layout.name, store.channels) == ("coco17", 3)
    first = store.sequence(0)[:, 0]  # (T, V, 3): x, y, score
    np.testing.assert_array_equal(first[..., 2], anns[0]["keypoint_score"][0])
    np.testing.assert_array_equal(first[..., :2], anns[0]["keypoint"][0])

    export_main(["--to", "pyskl", "--src", str(tmp_path / "ds"),
                 "--out", str(tmp_path / "out.pkl")])
    out = load_pickle(tmp_path / "out.pkl")
    assert out["split"] == splits
    for got, want in zip(out["annotations"], anns):
        assert got["frame_dir"] == want["frame_dir"] and got["label"] == want["label"]
        assert got["keypoint"].shape == want["keypoint"].shape
        np.testing.assert_array_equal(got["keypoint"], want["keypoint"])
        assert got["keypoint_score"].dtype == np.float32
        assert got["keypoint_score"].shape == want["keypoint"].shape[:3]
        np.testing.assert_array_equal(got["keypoint_score"], want["keypoint_score"])
        # no shape in the store: the coordinates' extent, (ceil(max y) + 1, ceil(max x) + 1)
        kp = want["keypoint"].astype(np.float32)
        extent = (int(np.ceil(kp[..., 1].max())) + 1, int(np.ceil(kp[..., 0].max())) + 1)
        assert got["img_shape"] == got["original_shape"] == extent
    export_main(["--to", "pyskl", "--src", str(tmp_path / "ds"), "--img-shape", "1080", "1920",
                 "--out", str(tmp_path / "shaped.pkl")])
    for got in load_pickle(tmp_path / "shaped.pkl")["annotations"]:
        assert got["img_shape"] == got["original_shape"] == (1080, 1920)


def test_drop_score_layout_and_bodies_flags(tmp_path):
    anns = make_annotations(np.random.default_rng(2), 3, 17, 2, score=True, bodies=(3, 1))
    write_pickle(tmp_path / "in.pkl", anns)
    prepare("pyskl", tmp_path / "in.pkl", tmp_path / "a", drop_score=True)
    store = open_store(tmp_path / "a")
    assert (store.channels, store.bodies) == (2, 3)  # bodies default: the largest M
    np.testing.assert_array_equal(store.sequence(0).transpose(1, 0, 2, 3), anns[0]["keypoint"])

    prepare("pyskl", tmp_path / "in.pkl", tmp_path / "b", bodies=2, layout="coco17")
    assert open_store(tmp_path / "b").bodies == 2
    np.testing.assert_array_equal(open_store(tmp_path / "b").sequence(0)[:, :, :, :2],
                                  anns[0]["keypoint"][:2].transpose(1, 0, 2, 3))

    anns18 = make_annotations(np.random.default_rng(3), 2, 18, 2, score=False)
    write_pickle(tmp_path / "k.pkl", anns18)
    prepare("pyskl", tmp_path / "k.pkl", tmp_path / "k")
    assert open_store(tmp_path / "k").layout.name == "openpose18"
    anns_odd = make_annotations(np.random.default_rng(3), 2, 7, 3, score=False)
    write_pickle(tmp_path / "odd.pkl", anns_odd)
    with pytest.raises(ValueError, match=r"odd.pkl: cannot choose a layout for 7 joints in 3D; "
                                         r"no built-in layout fits"):
        prepare("pyskl", tmp_path / "odd.pkl", tmp_path / "odd")
    with pytest.raises(ValueError, match="the data has 17 joints, but layout ntu25 has 25"):
        prepare("pyskl", tmp_path / "in.pkl", tmp_path / "c", layout="ntu25")


def test_class_names_file(tmp_path):
    anns = make_annotations(np.random.default_rng(4), 3, 25, 3, score=False)
    write_pickle(tmp_path / "in.pkl", anns)
    (tmp_path / "names.txt").write_text("drink\neat\nbrush\nwave\n")
    prepare("pyskl", tmp_path / "in.pkl", tmp_path / "ds", class_names=tmp_path / "names.txt")
    store = open_store(tmp_path / "ds")
    assert store.class_names == ["drink", "eat", "brush", "wave"] and store.num_classes == 4
    (tmp_path / "short.txt").write_text("drink\n")
    with pytest.raises(ValueError, match="short.txt: 1 class names"):
        prepare("pyskl", tmp_path / "in.pkl", tmp_path / "x", class_names=tmp_path / "short.txt")


def test_trim_padding_bodies_rule():
    data = np.zeros((3, 4, 2, 1), dtype=np.float32)  # (T, M, V, C)
    data[1, 0, 0, 0] = 1.0
    data[2, 2, 1, 0] = -2.0  # body 2 present in one frame, body 1 and 3 all zero
    assert trim_padding_bodies(data).shape == (3, 3, 2, 1)  # trailing zero body 3 trimmed only
    assert trim_padding_bodies(np.zeros((2, 3, 2, 1))).shape == (2, 1, 2, 1)  # keeps one body


def test_ntu_meta():
    assert ntu_meta("S017C003P020R002A120") == {"setup": 17, "view": 3, "subject": 20,
                                                 "replication": 2}
    assert ntu_meta("clip_0001") == {}


def test_export_is_atomic_and_replaces(tmp_path):
    anns = make_annotations(np.random.default_rng(5), 2, 25, 3, score=False)
    write_pickle(tmp_path / "in.pkl", anns)
    prepare("pyskl", tmp_path / "in.pkl", tmp_path / "ds")
    to_pyskl(tmp_path / "ds", tmp_path / "out.pkl")
    prepare("pyskl", tmp_path / "in.pkl", tmp_path / "ds", workers=1)  # same data again
    to_pyskl(tmp_path / "ds", tmp_path / "out.pkl")  # replaces its own earlier export
    content = load_pickle(tmp_path / "out.pkl")
    assert content["created_by"] == "feeders.export (pyskl)" and len(content["annotations"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "in.pkl", "out.pkl"]
    (tmp_path / "other.pkl").write_bytes(b"not ours")
    with pytest.raises(ValueError, match="other.pkl: exists and was not written by feeders.export"):
        to_pyskl(tmp_path / "ds", tmp_path / "other.pkl")
    assert (tmp_path / "other.pkl").read_bytes() == b"not ours"


@pytest.mark.parametrize("corrupt, message", [
    (lambda a: a[1].update(total_frames=99), r"annotation '.*A021': field 'total_frames' is 99"),
    (lambda a: a[0]["keypoint"].__setitem__((0, 1, 2, 0), np.nan), r"A020'.*NaN"),
    (lambda a: a[1].update(keypoint=a[1]["keypoint"][:, :, :24]), r"A021'.*V, C = \(24, 3\)"),
    (lambda a: a[1].update(label=-1), r"A021'.*'label' is -1"),
    (lambda a: a[0].pop("keypoint"), r"annotations\[0\] field 'keypoint' missing"),
    (lambda a: a.append(dict(a[0])), r"frame_dir 'S001C001P010R002A020' appears twice"),
])
def test_bad_annotations(tmp_path, corrupt, message):
    anns = make_annotations(np.random.default_rng(6), 2, 25, 3, score=False)
    corrupt(anns)
    write_pickle(tmp_path / "in.pkl", anns, splits={})
    with pytest.raises(ValueError, match=message) as err:
        prepare("pyskl", tmp_path / "in.pkl", tmp_path / "ds")
    assert "in.pkl" in str(err.value)
    assert not (tmp_path / "ds").exists()


def test_bad_files(tmp_path):
    anns = make_annotations(np.random.default_rng(7), 2, 17, 2, score=True)
    del anns[1]["keypoint_score"]
    write_pickle(tmp_path / "noscore.pkl", anns, splits={})
    with pytest.raises(ValueError, match="noscore.pkl: annotation .*'keypoint_score' missing"):
        prepare("pyskl", tmp_path / "noscore.pkl", tmp_path / "ds")

    anns = make_annotations(np.random.default_rng(7), 2, 25, 3, score=False)
    write_pickle(tmp_path / "split.pkl", anns, splits={"xsub_val": ["S999C001P001R001A001"]})
    with pytest.raises(ValueError, match="split.pkl: split 'xsub_val' lists 1 frame_dir"):
        prepare("pyskl", tmp_path / "split.pkl", tmp_path / "ds")

    data = (tmp_path / "split.pkl").read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pkl: not a readable pickle"):
        prepare("pyskl", tmp_path / "cut.pkl", tmp_path / "ds")
    with open(tmp_path / "list.pkl", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match="list.pkl: expected a dict"):
        prepare("pyskl", tmp_path / "list.pkl", tmp_path / "ds")
    with pytest.raises(ValueError, match="missing.pkl: pyskl annotation pickle not found"):
        prepare("pyskl", tmp_path / "missing.pkl", tmp_path / "ds")

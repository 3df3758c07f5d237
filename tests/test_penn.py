"""Penn Action .mat reader: golden values from the real label files, channels flag, bad input."""
import numpy as np
import pytest
import scipy.io

from feeders.prepare import prepare
from feeders.store import open_store


@pytest.fixture(scope="module")
def penn(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("penn") / "ds"
    prepare("penn", shared_data / "penn_action", out, workers=2)
    return open_store(out, verify=True)


def test_golden_counts(penn):
    assert len(penn) == 2326 and penn.num_classes == 15
    assert penn.class_names == sorted(penn.class_names)
    assert penn.class_names[:3] == ["baseball_pitch", "baseball_swing", "bench_press"]
    assert len(penn.split_indices("train")) == 1258
    assert len(penn.split_indices("val")) == 1068
    assert (penn.layout.name, penn.channels, penn.joints, penn.bodies) == ("penn13", 3, 13, 1)


def test_values_match_mat(penn, shared_data):
    names = penn.names.tolist()
    for stem in ("0001", "1154"):  # 1154 has a bbox one row short; bbox is not used
        mat = scipy.io.loadmat(shared_data / f"penn_action/labels/{stem}.mat")
        i = names.index(stem)
        seq = penn.sequence(i)[:, 0]  # (T, 13, 3)
        assert penn.lengths[i] == mat["x"].shape[0]
        np.testing.assert_array_equal(seq[..., 0], mat["x"].astype(np.float32))
        np.testing.assert_array_equal(seq[..., 1], mat["y"].astype(np.float32))
        np.testing.assert_array_equal(seq[..., 2], mat["visibility"].astype(np.float32))
        assert penn.class_names[penn.labels[i]] == mat["action"][0]
        split = "train" if mat["train"][0, 0] == 1 else "val"
        assert i in penn.split_indices(split)
    assert penn.class_names[penn.labels[names.index("0001")]] == "baseball_pitch"


def write_mat(folder, stem, t=4, action="squat", train=1, **override):
    rng = np.random.default_rng(int(stem))
    fields = {"x": rng.uniform(0, 480, (t, 13)), "y": rng.uniform(0, 360, (t, 13)),
              "visibility": rng.integers(0, 2, (t, 13)).astype(np.uint8),
              "action": np.array([action]), "train": np.array([[train]], dtype=np.int32),
              "bbox": np.zeros((t, 4)), "dimensions": np.array([[360, 480, t]], np.uint16)}
    fields.update(override)
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(folder / f"{stem}.mat", fields)
    return fields


def test_small_folder_and_no_visibility(tmp_path, out_root):
    a = write_mat(tmp_path, "0001", t=3, action="squat", train=1)
    b = write_mat(tmp_path, "0002", t=5, action="bowl", train=-1)
    summary = prepare("penn", tmp_path, out_root / "ds", visibility=False)
    assert summary["splits"] == {"train": 1, "val": 1}
    store = open_store(out_root / "ds")
    assert store.channels == 2 and store.class_names == ["bowl", "squat"]
    assert store.labels.tolist() == [1, 0] and store.lengths.tolist() == [3, 5]
    np.testing.assert_array_equal(store.sequence(1)[:, 0, :, 0], b["x"].astype(np.float32))
    np.testing.assert_array_equal(store.sequence(0)[:, 0, :, 1], a["y"].astype(np.float32))


@pytest.mark.parametrize("override, message", [
    ({"x": np.zeros((4, 12))}, r"field 'x' has shape \(4, 12\), expected \(T>=1, 13\)"),
    ({"visibility": np.ones((3, 13))}, r"field 'visibility' has shape \(3, 13\)"),
    ({"y": np.full((4, 13), np.nan)}, "contain NaN"),
    ({"visibility": np.full((4, 13), 2)}, "'visibility' must hold 0/1 values"),
    ({"train": np.array([[0]])}, r"field 'train' must be 1 or -1, got \[0\]"),
    ({"action": np.array([3.0])}, "field 'action' must be one non-empty string"),
])
def test_bad_files(tmp_path, override, message, out_root):
    write_mat(tmp_path, "0001")
    write_mat(tmp_path, "0002", **override)
    with pytest.raises(ValueError, match=message) as err:
        prepare("penn", tmp_path, out_root / "ds")
    assert "0002.mat" in str(err.value)
    assert not (out_root / "ds").exists()


def test_truncated_missing_field_and_empty(tmp_path):
    write_mat(tmp_path / "a", "0001")
    data = (tmp_path / "a" / "0001.mat").read_bytes()
    for cut in (10, 100, len(data) // 2):
        (tmp_path / "a" / "0002.mat").write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"0002.mat: (not a readable .mat file|field "
                                             r"'\w+' missing \(not a Penn Action label)"):
            prepare("penn", tmp_path / "a", tmp_path / "ds")
    fields = write_mat(tmp_path / "b", "0001")
    del fields["x"]
    scipy.io.savemat(tmp_path / "b" / "0001.mat", fields)
    with pytest.raises(ValueError, match="0001.mat: field 'x' missing"):
        prepare("penn", tmp_path / "b", tmp_path / "ds")
    (tmp_path / "c" / "labels").mkdir(parents=True)
    with pytest.raises(ValueError, match="labels: no Penn Action"):
        prepare("penn", tmp_path / "c", tmp_path / "ds")

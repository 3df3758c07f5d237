"""CTR-GCN .npz and 2s-AGCN .npy/.pkl readers: exact round trips, valid lengths, bad input."""
import pickle

import numpy as np
import pytest

from feeders.formats.ctrgcn import npz_rows, valid_length
from feeders.prepare import prepare
from feeders.store import open_store

LENGTHS_TRAIN = (5, 9, 3)
LENGTHS_TEST = (7, 2)


def padded_sequences(rng, lengths, frames=12, bodies=2, joints=25, coords=3):
    """``(N, frames, M, V, C)`` float32 with sample k valid for lengths[k] frames (the last
    valid frame non-zero, an all-zero frame inside the valid part of sample 1)."""
    x = np.zeros((len(lengths), frames, bodies, joints, coords), dtype=np.float32)
    for k, t in enumerate(lengths):
        x[k, :t] = rng.normal(size=(t, bodies, joints, coords))
    x[1, 2] = 0.0  # an empty frame in the middle stays in the sequence
    x[0, :, 1] = 0.0  # sample 0 has one body only
    return x


def one_hot(labels, classes):
    return np.eye(classes, dtype=np.float32)[list(labels)]


def write_npz(path, rng, compressed=False):
    x_train, x_test = padded_sequences(rng, LENGTHS_TRAIN), padded_sequences(rng, LENGTHS_TEST)
    arrays = {"x_train": x_train.reshape(3, 12, -1), "y_train": one_hot([0, 3, 1], 4),
              "x_test": x_test.reshape(2, 12, -1), "y_test": one_hot([2, 3], 4)}
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return x_train, x_test


def test_valid_length():
    x = np.zeros((6, 2, 3))
    assert valid_length(x) == 0
    x[1, 0, 2] = 1.0
    assert valid_length(x) == 2
    x[4, 1, 0] = -3.0
    assert valid_length(x) == 5


@pytest.mark.parametrize("compressed", [False, True])
def test_ctrgcn_roundtrip(tmp_path, compressed):
    x_train, x_test = write_npz(tmp_path / "NTU60_CS.npz", np.random.default_rng(0), compressed)
    summary = prepare("ctrgcn", tmp_path / "NTU60_CS.npz", tmp_path / "ds", split_name="xsub")
    assert summary["splits"] == {"xsub_train": 3, "xsub_val": 2}
    store = open_store(tmp_path / "ds", verify=True)
    assert (store.layout.name, store.channels, store.bodies, store.num_classes) == \
        ("ntu25", 3, 2, 4)
    assert store.names.tolist() == ["train_00000", "train_00001", "train_00002",
                                    "test_00000", "test_00001"]
    assert store.labels.tolist() == [0, 3, 1, 2, 3]
    assert store.lengths.tolist() == list(LENGTHS_TRAIN + LENGTHS_TEST)
    for i, (x, k) in enumerate([(x_train, 0), (x_train, 1), (x_train, 2), (x_test, 0),
                                (x_test, 1)]):
        np.testing.assert_array_equal(store.sequence(i), x[k, :store.lengths[i]])
    assert store.split_indices("xsub_train").tolist() == [0, 1, 2]
    assert store.split_indices("xsub_val").tolist() == [3, 4]


def test_ctrgcn_rows_are_not_loaded_whole(tmp_path):
    write_npz(tmp_path / "a.npz", np.random.default_rng(1))
    rows = npz_rows(tmp_path / "a.npz", "x_train")
    assert isinstance(rows._memmap, np.memmap) and rows.shape == (3, 12, 150)
    write_npz(tmp_path / "c.npz", np.random.default_rng(1), compressed=True)
    rows_c = npz_rows(tmp_path / "c.npz", "x_train")
    assert rows_c._memmap is None  # compressed: streamed row by row
    np.testing.assert_array_equal(rows_c[2], rows[2])
    np.testing.assert_array_equal(rows_c[0], rows[0])  # going back reopens the stream


def test_ctrgcn_default_splits_and_parallel(tmp_path):
    write_npz(tmp_path / "a.npz", np.random.default_rng(2))
    summary = prepare("ctrgcn", tmp_path / "a.npz", tmp_path / "ds", workers=2)
    assert summary["splits"] == {"train": 3, "val": 2}


def test_ctrgcn_bad_input(tmp_path):
    rng = np.random.default_rng(3)
    x = padded_sequences(rng, (4, 4)).reshape(2, 12, -1)
    np.savez(tmp_path / "hot.npz", x_train=x, y_train=np.array([[1, 0], [1, 1]], np.float32),
             x_test=x, y_test=one_hot([0, 1], 2))
    with pytest.raises(ValueError, match=r"hot.npz: array 'y_train' row 1 is not one-hot"):
        prepare("ctrgcn", tmp_path / "hot.npz", tmp_path / "ds")
    np.savez(tmp_path / "shape.npz", x_train=x[:, :, :140], y_train=one_hot([0, 1], 2),
             x_test=x, y_test=one_hot([0, 1], 2))
    with pytest.raises(ValueError, match=r"shape.npz: array 'x_train' has shape \(2, 12, 140\)"):
        prepare("ctrgcn", tmp_path / "shape.npz", tmp_path / "ds")
    np.savez(tmp_path / "nox.npz", x_train=x, y_train=one_hot([0, 1], 2))
    with pytest.raises(ValueError, match=r"nox.npz: array 'x_test' missing"):
        prepare("ctrgcn", tmp_path / "nox.npz", tmp_path / "ds")
    x_nan, x_zero = x.copy(), x.copy()
    x_nan[1, 0, 5] = np.nan
    x_zero[0] = 0.0
    np.savez(tmp_path / "nan.npz", x_train=x_nan, y_train=one_hot([0, 1], 2),
             x_test=x, y_test=one_hot([0, 1], 2))
    with pytest.raises(ValueError, match=r"nan.npz: array 'x_train' row 1.*NaN"):
        prepare("ctrgcn", tmp_path / "nan.npz", tmp_path / "ds")
    np.savez(tmp_path / "zero.npz", x_train=x, y_train=one_hot([0, 1], 2),
             x_test=x_zero, y_test=one_hot([0, 1], 2))
    with pytest.raises(ValueError, match=r"zero.npz: array 'x_test' row 0: all zeros"):
        prepare("ctrgcn", tmp_path / "zero.npz", tmp_path / "ds")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "zero.npz").read_bytes()[:3000])
    with pytest.raises(ValueError, match=r"cut.npz: array 'x_train' unreadable"):
        prepare("ctrgcn", tmp_path / "cut.npz", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def write_agcn(folder, rng, num_frame=True):
    """2s-AGCN files; returns {split: (N, C, T, V, M) data}."""
    folder.mkdir()
    out = {}
    for split, lengths, labels in (("train", LENGTHS_TRAIN, [4, 0, 2]),
                                   ("val", LENGTHS_TEST, [1, 4])):
        x = padded_sequences(rng, lengths).transpose(0, 4, 1, 3, 2)  # (N, C, T, V, M)
        np.save(folder / f"{split}_data_joint.npy", x)
        names = [f"S001C001P00{k}R001A00{label + 1}.skeleton" for k, label in
                 enumerate(labels, start=1 if split == "train" else 5)]
        with open(folder / f"{split}_label.pkl", "wb") as f:
            pickle.dump((names, labels), f)
        if num_frame:
            np.save(folder / f"{split}_num_frame.npy", np.array(lengths, dtype=np.int64))
        out[split] = (x, names, labels, lengths)
    return out


@pytest.mark.parametrize("num_frame", [True, False])
def test_agcn_roundtrip(tmp_path, num_frame):
    src = write_agcn(tmp_path / "ntu", np.random.default_rng(4), num_frame)
    summary = prepare("agcn", tmp_path / "ntu", tmp_path / "ds", split_name="xview", workers=2)
    assert summary["splits"] == {"xview_train": 3, "xview_val": 2}
    store = open_store(tmp_path / "ds")
    assert (store.channels, store.bodies, store.num_classes) == (3, 2, 5)
    i = 0
    for split in ("train", "val"):
        x, names, labels, lengths = src[split]
        for k in range(len(names)):
            assert store.names[i] == names[k] and store.labels[i] == labels[k]
            assert store.lengths[i] == lengths[k]
            # (C, T, V, M) -> (T, M, V, C), valid frames only, values identical
            np.testing.assert_array_equal(store.sequence(i),
                                          x[k, :, :lengths[k]].transpose(1, 3, 2, 0))
            i += 1
    assert store.subjects.tolist() == [1, 2, 3, 5, 6]


def test_agcn_num_frame_overrides_padding(tmp_path):
    src = write_agcn(tmp_path / "ntu", np.random.default_rng(5))
    np.save(tmp_path / "ntu" / "val_num_frame.npy", np.array([3, 2]))  # shorter than data
    prepare("agcn", tmp_path / "ntu", tmp_path / "ds")
    store = open_store(tmp_path / "ds")
    assert store.lengths.tolist() == [5, 9, 3, 3, 2]
    np.testing.assert_array_equal(store.sequence(3),
                                  src["val"][0][0, :, :3].transpose(1, 3, 2, 0))


def test_agcn_bad_input(tmp_path):
    write_agcn(tmp_path / "a", np.random.default_rng(6))
    with open(tmp_path / "a" / "val_label.pkl", "wb") as f:
        pickle.dump((["x", "y", "z"], [0, 1, 2]), f)
    with pytest.raises(ValueError, match=r"val_label.pkl: 3 names .* expected 2"):
        prepare("agcn", tmp_path / "a", tmp_path / "ds")
    with open(tmp_path / "a" / "val_label.pkl", "wb") as f:
        pickle.dump((["x", "y"], [0, -1]), f)
    with pytest.raises(ValueError, match=r"val_label.pkl: labels must be integers >= 0"):
        prepare("agcn", tmp_path / "a", tmp_path / "ds")
    (tmp_path / "a" / "val_label.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match=r"val_label.pkl: not a readable pickle"):
        prepare("agcn", tmp_path / "a", tmp_path / "ds")

    write_agcn(tmp_path / "b", np.random.default_rng(6))
    np.save(tmp_path / "b" / "train_num_frame.npy", np.array([5, 13, 3]))
    with pytest.raises(ValueError, match=r"train_num_frame.npy: sample 1 has 13 frames"):
        prepare("agcn", tmp_path / "b", tmp_path / "ds")

    write_agcn(tmp_path / "c", np.random.default_rng(6))
    np.save(tmp_path / "c" / "val_data_joint.npy", np.zeros((2, 3, 12, 20, 2), np.float32))
    with pytest.raises(ValueError, match=r"val_data_joint.npy: shape \(2, 3, 12, 20, 2\)"):
        prepare("agcn", tmp_path / "c", tmp_path / "ds")

    write_agcn(tmp_path / "d", np.random.default_rng(6), num_frame=False)
    x = np.load(tmp_path / "d" / "train_data_joint.npy")
    x[2, 1, 0, 3, 0] = np.inf
    np.save(tmp_path / "d" / "train_data_joint.npy", x)
    with pytest.raises(ValueError, match=r"train_data_joint.npy: sample 2 .*infinite"):
        prepare("agcn", tmp_path / "d", tmp_path / "ds")

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no train_data_joint.npy"):
        prepare("agcn", tmp_path / "empty", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()

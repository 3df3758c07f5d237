"""`--format arrays` (a folder of .npy + labels.csv): round trip, labels, layout choice, errors."""
import json

import numpy as np
import pytest

from feeders.prepare import main as prepare_main
from feeders.prepare import prepare
from feeders.store import open_store


def write_folder(folder, arrays, labels_csv, classes=None):
    folder.mkdir(parents=True, exist_ok=True)
    for name, x in arrays.items():
        np.save(folder / f"{name}.npy", x)
    (folder / "labels.csv").write_text(labels_csv)
    if classes is not None:
        (folder / "classes.txt").write_text("\n".join(classes) + "\n")


def test_arrays_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(5, 2, 20, 3)).astype(np.float32),
              "b": rng.normal(size=(3, 20, 3)).astype(np.float32),  # one body, (T, V, C)
              "c": rng.normal(size=(7, 1, 20, 3)).astype(np.float64)}
    write_folder(tmp_path / "src", arrays,
                 "name,label,split\na,jump,train\nb.npy,wave,val\nc,jump,\n",
                 classes=["wave", "jump"])
    prepare("arrays", tmp_path / "src", tmp_path / "ds", layout="kinect20")
    store = open_store(tmp_path / "ds", verify=True)
    assert (store.layout.name, store.manifest["layout_source"]) == ("kinect20", "declared")
    assert store.manifest["source_format"] == "arrays" and store.bodies == 2
    assert store.names.tolist() == ["a", "b", "c"] and store.labels.tolist() == [1, 0, 1]
    assert store.class_names == ["wave", "jump"]
    assert {k: v.tolist() for k, v in store.splits.items()} == {"train": [0], "val": [1]}
    np.testing.assert_array_equal(store.sequence(0), arrays["a"])
    np.testing.assert_array_equal(store.sequence(1)[:, 0], arrays["b"])
    assert not store.sequence(1)[:, 1].any()  # the missing second body is zeros
    np.testing.assert_array_equal(store.sequence(2)[:, :1], arrays["c"].astype(np.float32))


def test_arrays_labels_without_classes_file(tmp_path):
    x = np.ones((2, 13, 2), np.float32)
    write_folder(tmp_path / "ints", {"p": x, "q": x}, "name,label\np,2\nq,0\n")
    prepare("arrays", tmp_path / "ints", tmp_path / "ds1")
    store = open_store(tmp_path / "ds1")
    assert store.class_names == ["class_000", "class_001", "class_002"]
    assert store.labels.tolist() == [2, 0]
    assert (store.layout.name, store.manifest["layout_source"]) == ("penn13", "inferred")
    write_folder(tmp_path / "names", {"p": x, "q": x}, "name,label\np,wave\nq,clap\n")
    prepare("arrays", tmp_path / "names", tmp_path / "ds2")
    store = open_store(tmp_path / "ds2")
    assert store.class_names == ["clap", "wave"] and store.labels.tolist() == [1, 0]
    write_folder(tmp_path / "sparse", {"p": x}, "name,label\np,40\n")
    with pytest.raises(ValueError, match=r"labels.csv: labels go up to 40 but only 1 different"):
        prepare("arrays", tmp_path / "sparse", tmp_path / "ds3")
    prepare("arrays", tmp_path / "sparse", tmp_path / "ds3", num_classes=60)
    assert open_store(tmp_path / "ds3").num_classes == 60


def test_arrays_layout_inference(tmp_path, capsys):
    x20 = np.ones((2, 20, 3), np.float32)
    write_folder(tmp_path / "k", {"s": x20}, "name,label\ns,0\n")
    prepare("arrays", tmp_path / "k", tmp_path / "ds")
    assert open_store(tmp_path / "ds").layout.name == "kinect20"
    err = capsys.readouterr().err
    assert "20 joints in 3D or 2D read as built-in layout kinect20" in err
    assert "pass --layout mine.json" in err
    # 25 joints with 3 channels: NTU x, y, z or BODY_25 x, y, score -> refused
    write_folder(tmp_path / "amb", {"s": np.ones((2, 25, 3), np.float32)}, "name,label\ns,0\n")
    with pytest.raises(ValueError, match=r"candidates: ntu25 \(25 joints, 3D\), body25 "
                                         r"\(25 joints, 2D\)"):
        prepare("arrays", tmp_path / "amb", tmp_path / "ds2")
    prepare("arrays", tmp_path / "amb", tmp_path / "ds2", layout="body25")
    store = open_store(tmp_path / "ds2")
    assert store.layout.name == "body25" and store.manifest["layout_source"] == "declared"


def test_arrays_ambiguity_is_a_one_line_usage_error(tmp_path, capsys):
    write_folder(tmp_path / "amb", {"s": np.ones((2, 25, 3), np.float32)}, "name,label\ns,0\n")
    argv = ["--format", "arrays", "--src", str(tmp_path / "amb"), "--out", str(tmp_path / "ds")]
    with pytest.raises(SystemExit) as exit_:
        prepare_main(argv)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("python -m feeders.prepare: error: ") and "candidates: ntu25" in last
    (tmp_path / "bad.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(SystemExit) as exit_:
        prepare_main(argv + ["--layout", str(tmp_path / "bad.json")])
    assert exit_.value.code == 2
    assert "bad.json: field 'dims' missing" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "ds").exists()


def test_arrays_bad_input(tmp_path):
    x = np.ones((2, 20, 3), np.float32)
    write_folder(tmp_path / "a", {"s": x, "t": x}, "name,label\ns,0\n")
    with pytest.raises(ValueError, match=r"a: 1 .npy files not listed in labels.csv, e.g. \['t'\]"):
        prepare("arrays", tmp_path / "a", tmp_path / "ds")
    write_folder(tmp_path / "b", {"s": x}, "name,label\ns,0\nu,1\n")
    with pytest.raises(ValueError, match=r"labels.csv: lists 'u', but .*u.npy is missing"):
        prepare("arrays", tmp_path / "b", tmp_path / "ds")
    write_folder(tmp_path / "c", {"s": x, "t": np.ones((2, 19, 3), np.float32)},
                 "name,label\ns,0\nt,0\n")
    with pytest.raises(ValueError, match=r"t.npy: \(V, C\) = \(19, 3\), but s.npy has \(20, 3\)"):
        prepare("arrays", tmp_path / "c", tmp_path / "ds")
    write_folder(tmp_path / "d", {"s": x}, "name,label\ns,run\n", classes=["walk"])
    with pytest.raises(ValueError, match=r"label 'run' is neither a class of .*classes.txt"):
        prepare("arrays", tmp_path / "d", tmp_path / "ds")
    write_folder(tmp_path / "e", {"s": np.ones((2, 20), np.float32)}, "name,label\ns,0\n")
    with pytest.raises(ValueError, match=r"s.npy: shape \(2, 20\), expected \(T, V, C\)"):
        prepare("arrays", tmp_path / "e", tmp_path / "ds")
    write_folder(tmp_path / "f", {"s": np.ones((2, 20, 5), np.float32)}, "name,label\ns,0\n")
    with pytest.raises(ValueError, match=r"s.npy: 5 values per joint"):
        prepare("arrays", tmp_path / "f", tmp_path / "ds")
    write_folder(tmp_path / "g", {"s": x}, "name,label\ns,0,train\n")
    with pytest.raises(ValueError, match=r"labels.csv: line 2 has 3 fields, expected 2"):
        prepare("arrays", tmp_path / "g", tmp_path / "ds")
    x_nan = x.copy()
    x_nan[1, 3, 0] = np.nan
    write_folder(tmp_path / "h", {"s": x_nan}, "name,label\ns,0\n")
    with pytest.raises(ValueError, match=r"s.npy: record 's': non-finite value at"):
        prepare("arrays", tmp_path / "h", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()

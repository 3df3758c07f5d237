"""Data-side faults (issue 14): outputs that never destroy what the suite did not write, the
restricted unpickler, name and split checks at conversion, bad input as exit 2, and kill -9
during a conversion."""
import errno
import json
import pathlib
import pickle
import re
import subprocess
import sys
import time
import types
from collections import OrderedDict, defaultdict
from pathlib import Path

import numpy as np
import pytest

from feeders import export, safe_pickle, synthetic
from feeders import prepare as prep
from feeders import store as store_mod
from feeders.formats import FORMATS
from feeders.prepare import prepare
from feeders.store import (OutputError, Record, StoreError, StoreWriter, add_splits,
                           check_replaceable, clean_leftovers, is_dataset_dir, open_store)

ROOT = Path(__file__).resolve().parents[1]
NTU_NAME = "S001C002P001R001A005"


# ----------------------------------------------------------------------------- small sources

def pyskl_annotations(labels=(0, 1, 2), rng=None):
    rng = rng or np.random.default_rng(0)
    return [{"frame_dir": f"S001C001P{k + 1:03d}R001A{label + 1:03d}", "label": label,
             "total_frames": 3 + k,
             "keypoint": rng.normal(size=(1, 3 + k, 25, 3)).astype(np.float16)}
            for k, label in enumerate(labels)]


def write_pyskl(path, anns, splits=None, created_by=None):
    names = [a["frame_dir"] for a in anns]
    content = {"split": splits if splits is not None else {"xsub_train": names[:-1],
                                                           "xsub_val": names[-1:]},
               "annotations": anns}
    with open(path, "wb") as f:
        pickle.dump(content, f)
    return path


def write_ntu(path, fill=0.1):
    """A two-frame NTU ``.skeleton`` file."""
    joint = " ".join([str(fill)] * 12)
    frame = ["1", "72057594037944738 0 1 1 1 1 0 0 0 2", "25"] + [joint] * 25
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["2"] + frame * 2) + "\n")
    return path


def write_agcn(folder, labels=(0, 1), label_content=None):
    """2s-AGCN train files: ``(N, 3, 4, 25, 1)`` data and the label pickle."""
    folder.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(1).normal(size=(len(labels), 3, 4, 25, 1)).astype(np.float32)
    np.save(folder / "train_data_joint.npy", x)
    names = [f"S001C001P{k + 1:03d}R001A001" for k in range(len(labels))]
    with open(folder / "train_label.pkl", "wb") as f:
        pickle.dump(label_content if label_content is not None else (names, list(labels)), f)
    return folder


def records(n=4, fill=0.0, bodies=2):
    return [Record(f"seq{i}", i % 3, np.full((2 + i, bodies, 25, 3), fill + i, np.float32))
            for i in range(n)]


def write_store(out, recs=None, splits=None, sources=None):
    recs = records() if recs is None else recs
    with StoreWriter(out, "ntu25", 3, ["a", "b", "c"], channels=3, bodies=2) as w:
        for k, rec in enumerate(recs):
            w.add(rec, source=None if sources is None else sources[k])
        w.close(splits if splits is not None else {"train": [0, 1], "val": [2, 3]})
    return out


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def cli_error(main, argv, capsys) -> str:
    """Run a ``main``; assert a one-line ``prog: error:`` exit 2 and return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------------- 1. outputs

def test_out_equal_inside_or_containing_src_is_refused(tmp_path, capsys):
    src = tmp_path / "skeletons"
    write_ntu(src / f"{NTU_NAME}.skeleton")
    before = sorted(p.name for p in src.iterdir())
    for out, relation in ((src, "is"), (src / "ds", "is inside"), (tmp_path, "contains")):
        line = cli_error(prep.main, ["--format", "ntu", "--src", str(src), "--out", str(out)],
                         capsys)
        assert f"--out {out} {relation} --src {src}" in line
        assert line.startswith("python -m feeders.prepare: error: ")
    assert sorted(p.name for p in src.iterdir()) == before
    pkl = write_pyskl(tmp_path / "in.pkl", pyskl_annotations())
    with pytest.raises(OutputError, match="is --src"):
        prepare("pyskl", pkl, pkl)
    assert pkl.is_file()


def foreign_dir(path):
    path.mkdir()
    (path / "thesis.tex").write_text("two years of work")
    return path


def foreign_manifest(path):
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({"created_by": "someone else",
                                                    "format_version": 1, "checksums": {}}))
    return path


def suite_dataset_with_extra_file(path):
    write_store(path)
    (path / "notes.txt").write_text("mine")
    return path


def a_file(path):
    path.write_text("a file")
    return path


def a_symlink(path):
    target = write_store(path.with_name("target"))
    path.symlink_to(target)
    return path


@pytest.mark.parametrize("make, message", [
    (foreign_dir, "is not a dataset directory written by this suite .*thesis.tex"),
    (foreign_manifest, "is not a dataset directory written by this suite"),
    (suite_dataset_with_extra_file, "also holds files the suite did not write \\(notes.txt\\)"),
    (a_file, "exists and is a file"),
    (a_symlink, "is a symbolic link"),
])
def test_every_dataset_writer_refuses_what_the_suite_did_not_write(tmp_path, make, message):
    out = make(tmp_path / "out")
    snapshot = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    pkl = write_pyskl(tmp_path / "in.pkl", pyskl_annotations())
    src_store = write_store(tmp_path / "src_store")
    snapshot.update({p: p.read_bytes() for p in (tmp_path / "src_store").iterdir()})
    writers = {
        "prepare": lambda: prepare("pyskl", pkl, out),
        "synthetic": lambda: synthetic.write_synthetic(out, 4, workers=1),
        "add_splits": lambda: add_splits(src_store, out, {"first_train": [0]}),
        "StoreWriter": lambda: write_store(out),
    }
    for name, write in writers.items():
        with pytest.raises(OutputError, match=message) as info:
            write()
        assert str(out) in str(info.value), name
    for path, content in snapshot.items():
        assert path.read_bytes() == content
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".replaced-" in p.name]


def test_synthetic_out_data_keeps_the_datasets_inside(tmp_path, capsys):
    data = tmp_path / "data"
    synthetic.write_synthetic(data / "demo", 6, workers=1)
    foreign_dir(data / "ucla")
    line = cli_error(synthetic.main, ["--out", str(data), "--num-sequences", "4",
                                      "--workers", "1"], capsys)
    assert line.startswith("python -m feeders.synthetic: error: ")
    assert f"{data}: exists and is not a dataset directory" in line
    assert len(open_store(data / "demo", verify=True)) == 6
    assert (data / "ucla" / "thesis.tex").is_file()
    synthetic.main(["--out", str(data / "demo"), "--num-sequences", "4", "--workers", "1"])
    assert len(open_store(data / "demo", verify=True)) == 4  # its own dataset is replaced
    assert sorted(p.name for p in data.iterdir()) == ["demo", "ucla"]


def test_suite_dataset_and_empty_directory_are_replaced(tmp_path):
    out = write_store(tmp_path / "ds")
    assert is_dataset_dir(out) and not is_dataset_dir(tmp_path)
    write_store(out, records(2), {"train": [0], "val": [1]})
    assert len(open_store(out, verify=True)) == 2
    (tmp_path / "empty").mkdir()
    write_store(tmp_path / "empty")
    assert len(open_store(tmp_path / "empty", verify=True)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "empty"]


def test_export_replaces_only_its_own_file_and_refuses_out_in_src(tmp_path, capsys):
    ds = write_store(tmp_path / "ds")
    export.to_pyskl(ds, tmp_path / "a.pkl")
    export.to_pyskl(ds, tmp_path / "a.pkl")  # its own file: replaced
    assert safe_pickle.load(tmp_path / "a.pkl")["created_by"] == export.CREATED_BY
    a_file(tmp_path / "mine.pkl")
    line = cli_error(export.main, ["--to", "pyskl", "--src", str(ds), "--out",
                                   str(tmp_path / "mine.pkl")], capsys)
    assert line.startswith("python -m feeders.export: error: ")
    assert f"{tmp_path / 'mine.pkl'}: exists and was not written by feeders.export" in line
    assert (tmp_path / "mine.pkl").read_text() == "a file"
    line = cli_error(export.main, ["--to", "pyskl", "--src", str(ds), "--out",
                                   str(ds / "x.pkl")], capsys)
    assert f"--out {ds / 'x.pkl'} is inside --src {ds}" in line
    assert sorted(p.name for p in ds.iterdir()) == ["frames.npy", "index.npz", "manifest.json"]


def test_leftovers_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    out = write_store(tmp_path / "ds")
    dead, live = dead_pid(), 1  # pid 1 always runs
    partial = tmp_path / f"ds.tmp-{dead}"
    partial.mkdir()
    (partial / "frames.npy").write_bytes(b"partial")
    running = tmp_path / f"ds.tmp-{live}"
    running.mkdir()
    (running / "frames.npy").write_bytes(b"being written")
    replaced = write_store(tmp_path / f"ds.replaced-{dead}")
    strange = tmp_path / f"ds.tmp-{dead}9"
    foreign_dir(strange)  # not what a writer leaves: kept
    write_store(out, records(3), {"train": [0], "val": [1, 2]})  # the next run tidies
    assert not partial.exists() and not replaced.exists()
    assert running.is_dir() and (strange / "thesis.tex").is_file()
    assert len(open_store(out, verify=True)) == 3
    # a file left by a killed export is removed by the next export
    (tmp_path / f"x.pkl.tmp-{dead}").write_bytes(b"half")
    export.to_pyskl(out, tmp_path / "x.pkl")
    assert not (tmp_path / f"x.pkl.tmp-{dead}").exists()


def test_writer_killed_between_its_renames_gets_the_old_dataset_back(tmp_path):
    """Between 'old aside' and 'new in' there is no <out>: the next run renames the old back."""
    dead = dead_pid()
    old = write_store(tmp_path / f"ds.replaced-{dead}")
    new = write_store(tmp_path / f"ds.tmp-{dead}", records(2), {"train": [0], "val": [1]})
    out = tmp_path / "ds"
    assert sorted(p.name for p in clean_leftovers(out)) == [old.name, new.name]
    store = open_store(out, verify=True)
    assert store.names.tolist() == [f"seq{i}" for i in range(4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_replace_puts_the_old_dataset_back_when_the_new_cannot_move_in(tmp_path, monkeypatch):
    out = write_store(tmp_path / "ds")
    real_replace, calls = store_mod.os.replace, []

    def replace(a, b):
        calls.append((Path(a).name, Path(b).name))
        if len(calls) == 2:  # old aside worked; new in fails
            raise OSError(errno.EIO, "Input/output error")
        real_replace(a, b)

    monkeypatch.setattr(store_mod.os, "replace", replace)
    with pytest.raises(OSError, match="Input/output error"):
        write_store(out, records(2), {"train": [0], "val": [1]})
    assert calls[0][0] == "ds" and calls[0][1].startswith("ds.replaced-")
    assert calls[1][0].startswith("ds.tmp-") and calls[1][1] == "ds"
    assert len(open_store(out, verify=True)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


# ----------------------------------------------------------------------------- 2. pickles

class Touch:
    """Unpickling this calls ``pathlib.Path(path).touch()``: a stand-in for any code."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def hostile_pyskl(path, marker):
    anns = pyskl_annotations()
    anns[1]["label"] = Touch(marker)
    return write_pyskl(path, anns)


def hostile_agcn(folder, marker):
    names = ["S001C001P001R001A001", "S001C001P002R001A001"]
    return write_agcn(folder, label_content=(names, [0, Touch(marker)]))


@pytest.mark.parametrize("fmt, make", [("pyskl", hostile_pyskl), ("agcn", hostile_agcn)])
def test_pickle_that_runs_code_is_refused_by_every_reader(tmp_path, capsys, fmt, make):
    marker = tmp_path / "marker"
    src = make(tmp_path / ("in.pkl" if fmt == "pyskl" else "agcn"), marker)
    pkl = src if fmt == "pyskl" else src / "train_label.pkl"
    line = cli_error(prep.main, ["--format", fmt, "--src", str(src), "--out",
                                 str(tmp_path / "ds")], capsys)
    assert f"{pkl}: refusing global 'pathlib.Path.touch'" in line and "--trust-pickle" in line
    assert not marker.exists() and not (tmp_path / "ds").exists()
    # the opt-out really is plain pickle.load: the same file runs its code
    with pytest.raises(ValueError):
        prepare(fmt, src, tmp_path / "ds", trust_pickle=True)
    assert marker.exists()


def test_no_pickle_load_outside_safe_pickle():
    """Every pickle read under feeders/ goes through feeders/safe_pickle.py."""
    calls = re.compile(r"(?<!safe_)pickle\.(load|loads|Unpickler)\(|allow_pickle=True")
    offenders = [f"{path.relative_to(ROOT)}:{n}"
                 for path in sorted((ROOT / "feeders").rglob("*.py"))
                 if path.name != "safe_pickle.py"
                 for n, line in enumerate(path.read_text().splitlines(), start=1)
                 if calls.search(line)]
    assert offenders == []


def numpy1_pickle(obj, protocol: int, monkeypatch) -> bytes:
    """``obj`` pickled as numpy 1.x writes it: arrays and scalars through
    ``numpy.core.multiarray._reconstruct`` / ``scalar`` instead of ``numpy._core.*``."""
    fake = types.ModuleType("numpy.core.multiarray")

    def stand_in(name, real):
        def call(*args):
            return real(*args)
        call.__module__, call.__name__, call.__qualname__ = fake.__name__, name, name
        setattr(fake, name, call)
        return call

    reconstruct = stand_in("_reconstruct", np._core.multiarray._reconstruct)
    scalar = stand_in("scalar", np._core.multiarray.scalar)
    monkeypatch.setitem(sys.modules, "numpy.core.multiarray", fake)

    class Numpy1Pickler(pickle.Pickler):
        def reducer_override(self, value):
            if isinstance(value, np.ndarray):
                _, args, state = value.__reduce__()
                return reconstruct, args, state
            if isinstance(value, np.generic):
                _, args = value.__reduce__()
                return scalar, args
            return NotImplemented

    import io
    buffer = io.BytesIO()
    Numpy1Pickler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy1_pickles_are_admitted(tmp_path, monkeypatch, protocol):
    anns = pyskl_annotations()
    anns[0]["label"] = np.int64(0)
    content = {"split": {"xsub_train": [a["frame_dir"] for a in anns]}, "annotations": anns}
    data = numpy1_pickle(content, protocol, monkeypatch)
    monkeypatch.undo()
    assert b"numpy.core.multiarray" in data and b"numpy._core" not in data
    (tmp_path / "np1.pkl").write_bytes(data)
    loaded = safe_pickle.load(tmp_path / "np1.pkl")
    for a, b in zip(loaded["annotations"], anns):
        assert a["keypoint"].dtype == np.float16
        np.testing.assert_array_equal(a["keypoint"], b["keypoint"])
    assert type(loaded["annotations"][0]["label"]) is np.int64
    summary = prepare("pyskl", tmp_path / "np1.pkl", tmp_path / "ds")
    assert summary["num_sequences"] == 3


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_admitted_containers_and_numpy_values_round_trip(tmp_path, protocol):
    value = {"tuple": (1, 2.5, "x", b"\x00\xff", None, True), "set": {1, 2},
             "frozen": frozenset({"a"}), "bytes": bytearray(b"ab"), "complex": 1 + 2j,
             "ordered": OrderedDict(a=1), "default": defaultdict(list, a=[1]),
             "array": np.arange(6, dtype=np.int32).reshape(2, 3), "scalar": np.float32(1.5),
             "strings": np.array(["ab", "c"]), "dtype": np.dtype("<f2")}
    (tmp_path / "v.pkl").write_bytes(pickle.dumps(value, protocol=protocol))
    loaded = safe_pickle.load(tmp_path / "v.pkl")
    for key in ("tuple", "set", "frozen", "bytes", "complex", "ordered", "default", "dtype"):
        assert loaded[key] == value[key] and type(loaded[key]) is type(value[key])
    for key in ("array", "scalar", "strings"):
        np.testing.assert_array_equal(loaded[key], value[key])
        assert loaded[key].dtype == value[key].dtype


@pytest.mark.parametrize("stream, name", [
    (b"cos\nsystem\n(S'true'\ntR.", "os.system"),
    (b"cbuiltins\neval\n(S'1'\ntR.", "builtins.eval"),
    (b"c__builtin__\ngetattr\n(c__builtin__\nint\nS'x'\ntR.", "__builtin__.getattr"),
    (b"c_codecs\nencode\n(S'x'\nS'zlib'\ntR.", "_codecs.encode with encoding 'zlib'"),
])
def test_other_globals_are_refused_naming_file_and_global(tmp_path, stream, name):
    (tmp_path / "bad.pkl").write_bytes(stream)
    with pytest.raises(ValueError, match="--trust-pickle") as info:
        safe_pickle.load(tmp_path / "bad.pkl")
    assert str(info.value).startswith(f"{tmp_path / 'bad.pkl'}: ") and name in str(info.value)


# ----------------------------------------------------------------------------- 3. names, splits

def test_two_ntu_files_of_the_same_name_name_both_paths(tmp_path, out_root):
    a = write_ntu(tmp_path / "a" / f"{NTU_NAME}.skeleton")
    b = write_ntu(tmp_path / "b" / f"{NTU_NAME}.skeleton", fill=0.2)
    with pytest.raises(ValueError, match=f"two samples named '{NTU_NAME}'") as info:
        prepare("ntu", tmp_path, out_root / "ds")
    assert str(a) in str(info.value) and str(b) in str(info.value)
    assert not (out_root / "ds").exists()


def write_pku(root, split_text):
    for sub in ("skeleton", "label", "split"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for video in ("0002-L", "0003-M"):
        (root / "skeleton" / f"{video}.txt").write_text(("0.5 " * 150 + "\n") * 4)
        (root / "label" / f"{video}.txt").write_text("3,0,2,1\n")
    (root / "split" / "cross-subject.txt").write_text(split_text)
    return root


def test_pku_video_in_both_halves_of_a_split_file(tmp_path):
    src = write_pku(tmp_path / "pku", "Training videos: 0002-L, 0003-M\n"
                                      "Validation videos: 0003-M\n")
    with pytest.raises(ValueError, match="1 sample\\(s\\) in both split 'xsub_train' and split "
                                         "'xsub_val' \\(train/test leakage\\): '0003-M_0'") as info:
        prepare("pku", src, tmp_path / "ds")
    assert str(src / "skeleton" / "0003-M.txt") in str(info.value)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("splits, message", [
    ({"xsub_train": [0, 1], "xsub_val": [1, 2]},
     r"1 sample\(s\) in both split 'xsub_train' and split 'xsub_val'.*'S001C001P002R001A002' "
     r"\(from .*in.pkl: annotation 'S001C001P002R001A002'\)"),
    ({"xsub_train": [0, 1, 0], "xsub_val": [2]},
     r"split 'xsub_train' lists 1 sample\(s\) more than once: 'S001C001P001R001A001'"),
])
def test_pyskl_split_overlap_and_repeats_are_errors(tmp_path, splits, message):
    anns = pyskl_annotations()
    names = [a["frame_dir"] for a in anns]
    pkl = write_pyskl(tmp_path / "in.pkl", anns,
                      {k: [names[i] for i in v] for k, v in splits.items()})
    with pytest.raises(ValueError, match=message):
        prepare("pyskl", pkl, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_store_writer_and_add_splits_check_names_and_splits(tmp_path):
    with pytest.raises(ValueError, match="two samples named 'seq1': a.txt and b.txt"):
        write_store(tmp_path / "x", records()[:2] + [records()[1]], sources=["a", "a.txt",
                                                                              "b.txt"])
    with pytest.raises(ValueError, match="in both split 'train' and split 'test'.*'seq2'"):
        write_store(tmp_path / "x", splits={"train": [0, 2], "test": [2, 3]})
    with pytest.raises(ValueError, match="split 'val' lists 1 sample.*'seq3'"):
        write_store(tmp_path / "x", splits={"train": [0], "val": [3, 3]})
    assert not list(tmp_path.iterdir())
    ds = write_store(tmp_path / "ds")
    with pytest.raises(ValueError, match="in both split 'view_train' and split 'view_val'"):
        add_splits(ds, tmp_path / "views", {"view_train": [0, 1], "view_val": [1]})
    add_splits(ds, tmp_path / "views", {"view1_train": [0, 1], "view2_val": [1]})  # other prefixes
    with pytest.raises(OutputError, match="add_splits: out .* is src"):
        add_splits(ds, ds, {"a_train": [0]})


def test_label_far_above_the_labels_present_needs_num_classes(tmp_path, capsys):
    pkl = write_pyskl(tmp_path / "in.pkl", pyskl_annotations(labels=(0, 1, 10**6)))
    line = cli_error(prep.main, ["--format", "pyskl", "--src", str(pkl), "--out",
                                 str(tmp_path / "ds")], capsys)
    assert (f"{pkl}: labels go up to 1000000 but only 3 different labels are present, which "
            f"would make 1000001 classes; pass --num-classes 1000001") in line
    pkl = write_pyskl(tmp_path / "in.pkl", pyskl_annotations(labels=(0, 1, 40)))
    with pytest.raises(ValueError, match="labels go up to 40 but only 3"):
        prepare("pyskl", pkl, tmp_path / "ds")
    prepare("pyskl", pkl, tmp_path / "ds", num_classes=41)
    store = open_store(tmp_path / "ds")
    assert store.num_classes == 41 and store.labels.tolist() == [0, 1, 40]
    prepare("pyskl", write_pyskl(tmp_path / "small.pkl", pyskl_annotations(labels=(0, 11))),
            tmp_path / "ds")  # 12 <= 2 * 2 + 10: accepted
    assert open_store(tmp_path / "ds").num_classes == 12
    with pytest.raises(ValueError, match="--num-classes 5: .*has labels up to 40"):
        prepare("pyskl", pkl, tmp_path / "ds", num_classes=5)
    agcn = write_agcn(tmp_path / "agcn", labels=(0, 10**6))
    with pytest.raises(ValueError, match="agcn: labels go up to 1000000 .*--num-classes"):
        prepare("agcn", agcn, tmp_path / "ds")


def test_num_classes_of_a_format_with_its_own_class_set(tmp_path, out_root):
    write_ntu(tmp_path / f"{NTU_NAME}.skeleton")
    prepare("ntu", tmp_path, out_root / "ds", num_classes=60)
    assert open_store(out_root / "ds").num_classes == 60
    with pytest.raises(ValueError, match="--num-classes 61: the ntu source defines 60 classes"):
        prepare("ntu", tmp_path, out_root / "ds", num_classes=61)


# ----------------------------------------------------------------------------- 4. bad input

def test_missing_agcn_label_file(tmp_path, capsys):
    folder = write_agcn(tmp_path / "agcn")
    (folder / "train_label.pkl").unlink()
    line = cli_error(prep.main, ["--format", "agcn", "--src", str(folder), "--out",
                                 str(tmp_path / "ds")], capsys)
    assert f"{folder / 'train_label.pkl'}: label file not found" in line


@pytest.mark.parametrize("entry, message", [
    ([1, 2], "field 'frame_arrays' should be an object"),
    ({"frame_labels": {"dtype": "<i2"}}, "entry 'frame_labels': expected an object with keys"),
    ({"frame_labels": {"dtype": "<i2", "shape": "3"}}, "'shape' should be a list of ints"),
    ({"frame_labels": {"dtype": "nonsense", "shape": []}}, "'dtype' should name a numeric"),
    ({"frame_labels": {"dtype": "|O", "shape": []}}, "'dtype' should name a numeric"),
    ({"../../etc/passwd": {"dtype": "<i2", "shape": []}}, "invalid name"),
])
def test_malformed_frame_arrays_entry_is_a_store_error(tmp_path, entry, message):
    ds = write_store(tmp_path / "ds")
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["frame_arrays"] = entry
    (ds / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=message) as info:
        open_store(ds)
    assert str(info.value).startswith(f"{ds / 'manifest.json'}: field 'frame_arrays'")


def test_read_only_output_directory(tmp_path, capsys, monkeypatch):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):  # as the kernel answers a non-root user (tests run as root)
        if self.parent == readonly:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    pkl = write_pyskl(tmp_path / "in.pkl", pyskl_annotations())
    line = cli_error(prep.main, ["--format", "pyskl", "--src", str(pkl), "--out",
                                 str(readonly / "ds")], capsys)
    assert f"error: {readonly}/ds.tmp-" in line and ": Permission denied" in line


class FullDisk:
    """A file object whose writes fail as on a full disk (``write`` names no file)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_full_disk_names_the_file_and_keeps_the_old_dataset(tmp_path, capsys, monkeypatch):
    pkl = write_pyskl(tmp_path / "in.pkl", pyskl_annotations())
    prepare("pyskl", pkl, tmp_path / "ds")
    before = open_store(tmp_path / "ds", verify=True).manifest["checksums"]
    real_init = store_mod._FrameFile.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._file = FullDisk(self._file)

    argv = ["--format", "pyskl", "--src", str(pkl), "--out", str(tmp_path / "ds")]
    with monkeypatch.context() as m:
        m.setattr(store_mod._FrameFile, "__init__", init)
        line = cli_error(prep.main, argv, capsys)
    assert f"error: {tmp_path}/ds.tmp-" in line and "/frames.npy: No space left on device" in line
    with monkeypatch.context() as m:
        def dump(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")
        m.setattr(store_mod.json, "dump", dump)
        line = cli_error(prep.main, argv, capsys)
    assert "/manifest.json: No space left on device" in line
    assert open_store(tmp_path / "ds", verify=True).manifest["checksums"] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "in.pkl"]


def test_kinetics_without_val_folder_warns(tmp_path, out_root, capsys):
    clip = {"data": [{"frame_index": 1, "skeleton": [{"pose": [0.5] * 36, "score": [1.0] * 18}]}],
            "label": "archery"}
    (tmp_path / "kinetics_train").mkdir()
    (tmp_path / "kinetics_train" / "c1.json").write_text(json.dumps(clip))
    summary = prepare("kinetics", tmp_path, out_root / "ds")
    assert summary["splits"] == {"train": 1}
    err = capsys.readouterr().err
    assert f"warning: {tmp_path}: no val clip folder" in err
    assert "only the train split will be written" in err


def test_bad_num_classes_exits_2(tmp_path, capsys):
    pkl = write_pyskl(tmp_path / "in.pkl", pyskl_annotations())
    line = cli_error(prep.main, ["--format", "pyskl", "--src", str(pkl), "--out",
                                 str(tmp_path / "ds"), "--num-classes", "0"], capsys)
    assert "--num-classes must be >= 1, got 0" in line


# ----------------------------------------------------------------------------- 5. kill -9

SLOW_FORMAT = '''
"""Test format: SRC/items.txt holds 'count fill seconds'; one 8-frame record per item, each
read taking that many seconds."""
import time
import numpy as np
from feeders.formats import Source
from feeders.store import Record


def add_arguments(parser):
    pass


def read(item):
    k, fill, seconds = item
    time.sleep(seconds)
    return [Record(f"s{k:04d}", k % 2, np.full((8, 2, 25, 3), fill, np.float32))]


def make_splits(metas):
    return {"train": list(range(0, len(metas), 2)), "val": list(range(1, len(metas), 2))}


def scan(src, opts):
    count, fill, seconds = (src / "items.txt").read_text().split()
    items = [(k, float(fill), float(seconds)) for k in range(int(count))]
    return Source("ntu25", 3, 2, ["a", "b"], items, read, False, make_splits)
'''


def slow_source(path, count, fill, seconds):
    path.mkdir()
    (path / "items.txt").write_text(f"{count} {fill} {seconds}\n")
    return path


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_during_prepare_keeps_the_previous_dataset(tmp_path, monkeypatch, seed):
    (tmp_path / "slowfmt.py").write_text(SLOW_FORMAT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(FORMATS, "slow", "slowfmt")
    out = tmp_path / "ds"
    prepare("slow", slow_source(tmp_path / "v1", 6, 1.0, 0), out)
    checksums = open_store(out, verify=True).manifest["checksums"]
    # version 2: 300 items of 5 ms each, at least 1.5 s of writing
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from feeders.formats import FORMATS; "
              "FORMATS['slow'] = 'slowfmt'; from feeders.prepare import main; main(sys.argv[2:])")
    v2 = slow_source(tmp_path / "v2", 300, 2.0, 0.005)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), "--format", "slow",
                             "--src", str(v2), "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / f"ds.tmp-{proc.pid}"
    try:
        deadline = time.monotonic() + 60
        while not (partial / "frames.npy").is_file() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (partial / "frames.npy").is_file(), "the conversion never started writing"
        time.sleep(np.random.default_rng(seed).uniform(0.0, 1.0))
    finally:
        proc.kill()
        proc.wait()
    assert partial.is_dir()  # killed while writing: its partial output is left
    store = open_store(out, verify=True)
    assert store.manifest["checksums"] == checksums and (store.sequence(0) == 1.0).all()
    prepare("slow", slow_source(tmp_path / "v3", 4, 3.0, 0), out)  # the next run cleans up
    assert (open_store(out, verify=True).sequence(0) == 3.0).all()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ds")) == ["ds"]


def test_check_replaceable_is_reusable_for_other_directories(tmp_path):
    """The helper the run side may share: nothing, an empty folder or a suite dataset pass."""
    check_replaceable(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty")
    check_replaceable(write_store(tmp_path / "ds"))
    with pytest.raises(OutputError, match=str(tmp_path)):
        check_replaceable(tmp_path)

"""feeders.prepare: ordering with workers, body padding, record validation, CLI."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from feeders.formats import FORMATS
from feeders.prepare import fit_bodies, prepare
from feeders.store import open_store

ROOT = Path(__file__).resolve().parents[1]

# A tiny format module written for the tests: each line of SRC/items.txt is one item
# "name label T M V C fill" and becomes one record filled with the value ``fill``.
FAKE_FORMAT = '''
"""Test format: one record per line of items.txt."""
import numpy as np
from feeders.formats import Source
from feeders.store import Record


def add_arguments(parser):
    pass


def read(item):
    name, label, t, m, v, c, fill = item.split()
    if name.startswith("skip"):
        return []
    if name.startswith("crash"):
        raise KeyError("reader bug")
    data = np.full((int(t), int(m), int(v), int(c)), float(fill), dtype=np.float32)
    return [Record(name, int(label), data, subject=int(label))]


def make_splits(metas):
    return {"train": [i for i, m in enumerate(metas) if m.subject == 0],
            "val": [i for i, m in enumerate(metas) if m.subject != 0]}


def scan(src, opts):
    items = [l for l in (src / "items.txt").read_text().splitlines() if l.strip()]
    return Source("ntu25", 3, 2, [f"class{k}" for k in range(opts.num_classes or 2)], items, read,
                  True, make_splits)
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Register the test format as ``fake``; returns a function writing SRC/items.txt."""
    (tmp_path / "fakefmt.py").write_text(FAKE_FORMAT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(FORMATS, "fake", "fakefmt")

    def make_src(lines):
        src = tmp_path / "src"
        src.mkdir(exist_ok=True)
        (src / "items.txt").write_text("\n".join(lines) + "\n")
        return src
    return make_src


def test_fit_bodies_pads_and_crops():
    data = np.arange(2 * 3 * 4 * 1, dtype=np.float32).reshape(2, 3, 4, 1)
    padded = fit_bodies(data[:, :1], 2)
    assert padded.shape == (2, 2, 4, 1)
    np.testing.assert_array_equal(padded[:, 0], data[:, 0])
    assert not padded[:, 1].any()
    np.testing.assert_array_equal(fit_bodies(data, 2), data[:, :2])


def test_order_kept_with_workers(fake, tmp_path):
    lines = [f"s{i:02d} {i % 2} {1 + i % 5} {1 + i % 3} 25 3 {i}" for i in range(40)]
    lines.insert(7, "skip_me 0 1 1 25 3 0")
    summary = prepare("fake", fake(lines), tmp_path / "out", workers=2)
    store = open_store(tmp_path / "out", verify=True)
    assert summary["num_sequences"] == len(store) == 40 and summary["skipped_items"] == 1
    assert store.names.tolist() == [f"s{i:02d}" for i in range(40)]
    for i in range(40):
        seq = store.sequence(i)
        assert seq.shape == (1 + i % 5, 2, 25, 3)
        bodies = min(1 + i % 3, 2)
        assert (seq[:, :bodies] == i).all() and not seq[:, bodies:].any()  # padded with 0
    assert store.split_indices("train").tolist() == list(range(0, 40, 2))
    assert summary["splits"] == {"train": 20, "val": 20}
    assert summary["total_frames"] == sum(1 + i % 5 for i in range(40))


def test_float16_store(fake, tmp_path):
    prepare("fake", fake(["a 0 2 2 25 3 1.5"]), tmp_path / "out", dtype="float16")
    store = open_store(tmp_path / "out")
    assert store.frames.dtype == np.float16 and (store.sequence(0) == 1.5).all()
    with pytest.raises(ValueError, match="record 'b': values up to 100000 overflow float16"):
        prepare("fake", fake(["b 0 2 2 25 3 1e5"]), tmp_path / "out16", dtype="float16")


@pytest.mark.parametrize("line, message", [
    ("bad 0 3 2 25 3 nan", "record 'bad': non-finite value at \\(t, m, v, c\\) = \\(0, 0, 0, 0\\)"),
    ("bad 0 3 2 20 3 1", "record 'bad': 20 joints, expected 25 \\(layout ntu25\\)"),
    ("bad 0 3 2 25 2 1", "record 'bad': 2 channels, expected 3"),
    ("bad 0 0 2 25 3 1", "record 'bad': no frames"),
    ("bad 2 3 2 25 3 1", "record 'bad': label 2 outside \\[0, 2\\)"),
    ("crash 0 3 2 25 3 1", "crash 0 3 2 25 3 1: KeyError: 'reader bug'"),
])
def test_bad_records_name_the_item(fake, tmp_path, line, message):
    src = fake(["good 0 3 2 25 3 1", line])
    with pytest.raises(ValueError, match=message) as info:
        prepare("fake", src, tmp_path / "out", workers=2)
    assert line.split()[0] in str(info.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out")] == []


def test_empty_sources(fake, tmp_path):
    with pytest.raises(ValueError, match="nothing to convert"):
        prepare("fake", fake([]), tmp_path / "out")
    with pytest.raises(ValueError, match="no sequences read from 1 items"):
        prepare("fake", fake(["skip 0 1 1 25 3 0"]), tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no .skeleton files found"):
        prepare("ntu", tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_options(fake, tmp_path):
    prepare("fake", fake(["a 4 1 1 25 3 0"]), tmp_path / "out", num_classes=5)
    assert open_store(tmp_path / "out").num_classes == 5
    with pytest.raises(TypeError, match="unknown option 'benchmark' for format 'fake'"):
        prepare("fake", fake(["a 0 1 1 25 3 0"]), tmp_path / "out", benchmark="ntu60")
    with pytest.raises(ValueError, match="unknown format 'nope'"):
        prepare("nope", tmp_path, tmp_path / "out")


def test_cli_help_lists_formats():
    out = subprocess.run([sys.executable, "-m", "feeders.prepare", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    listed = [line.split()[0] for line in out.split("formats:\n")[1].splitlines()
              if line.startswith("  ")]
    assert listed == list(FORMATS)
    assert "  ntu       NTU RGB+D 60/120 raw" in out
    ntu_help = subprocess.run([sys.executable, "-m", "feeders.prepare", "--format", "ntu",
                               "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "--benchmark" in ntu_help and "--ignore" in ntu_help


def test_cli_run_and_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    joint = " ".join(["0.1"] * 12)
    frame = ["1", "72057594037944738 0 1 1 1 1 0 0 0 2", "25"] + [joint] * 25
    (src / "S001C002P001R001A005.skeleton").write_text("\n".join(["2"] + frame * 2) + "\n")
    cmd = [sys.executable, "-m", "feeders.prepare", "--format", "ntu", "--src", str(src),
           "--out", str(tmp_path / "out"), "--dtype", "float16"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "1 sequences, 2 frames, 60 classes" in done.stdout
    assert "xview_train 1, xview_val 0" in done.stdout
    (src / "S001C002P001R001A005.skeleton").write_text("2\n1\n")
    failed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert failed.returncode != 0
    assert "S001C002P001R001A005.skeleton:2: file truncated" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert open_store(tmp_path / "out").frames.dtype == np.float16  # old output kept

"""feeders.inspect: text and JSON summaries of a dataset directory."""

import json

import numpy as np
import pytest

from feeders import inspect as ds_inspect
from feeders.store import Record, StoreWriter

LENGTHS = [3, 5, 10, 4]  # min 3, median (4 + 5) / 2 = 4.5, max 10


@pytest.fixture
def dataset(tmp_path):
    with StoreWriter(tmp_path / "ds", "kinect20", 3, ["a", "b", "c"], channels=3, bodies=1,
                     source_format="test") as w:
        for i, t in enumerate(LENGTHS):
            w.add(Record(f"s{i}", i % 3, np.zeros((t, 1, 20, 3), np.float32)))
        w.close({"xview_train": [0, 1, 2], "xview_val": [3]})
    return tmp_path / "ds"


def test_json_summary(dataset, capsys):
    ds_inspect.main([str(dataset), "--json", "--verify"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_sequences"] == 4 and summary["num_classes"] == 3
    assert summary["splits"] == {"xview_train": 3, "xview_val": 1}
    assert (summary["layout"], summary["channels"], summary["joints"], summary["bodies"]) == (
        "kinect20", 3, 20, 1)
    assert summary["layout_source"] == "format"
    assert summary["frames"] == {"min": 3, "median": 4.5, "max": 10, "total": 22}


def test_text_summary(dataset, capsys):
    ds_inspect.main([str(dataset)])
    text = capsys.readouterr().out
    assert "sequences    4" in text and "classes      3" in text
    assert "layout       kinect20 (format)  C=3 V=20 M=1  float32" in text
    assert "frames/seq   min 3  median 4.5  max 10  (total 22)" in text
    assert "xview_train    3" in text and "xview_val      1" in text


def test_bad_directory_exits_with_message(tmp_path, capsys):
    (tmp_path / "ds").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        ds_inspect.main([str(tmp_path / "ds")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "python -m feeders.inspect: error: " in err and "manifest.json: missing" in err

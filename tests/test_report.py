"""evaluation.report: result JSONs of a run directory -> one table."""
import json

import pytest

from evaluation.report import ReportError, format_table, main, parse_baseline, read_rows


def _write(path, obj):
    path.write_text(json.dumps(obj))


@pytest.fixture
def run_dir(tmp_path):
    _write(tmp_path / "finetune_0.1.json", {"top1": 70.25, "top5": 99.0})
    _write(tmp_path / "knn.json", {"top1": 61.0, "k": 1})
    _write(tmp_path / "finetune.json", {"top1": 90.0, "top5": 100.0,
                                        "best": {"epoch": 7, "val_top1": 95.0, "top1": 91.5}})
    _write(tmp_path / "linear.json", {"top1": 80.04, "top5": 98.96})
    _write(tmp_path / "knn_k5.json", {"top1": 63.0, "k": 5})
    _write(tmp_path / "manifest.json", {"unrelated": True})  # not a result file
    return tmp_path


def test_rows_in_protocol_order_with_values(run_dir):
    rows = read_rows(run_dir)
    assert [r["protocol"] for r in rows] == ["linear probe", "KNN-1", "KNN-5", "fine-tune",
                                             "fine-tune, 10 % labels"]
    assert [r["top1"] for r in rows] == [80.04, 61.0, 63.0, 90.0, 70.25]
    assert [r["top5"] for r in rows] == [98.96, None, None, 100.0, 99.0]
    assert [r["selected"] for r in rows] == [None, None, None, 91.5, None]


def test_table_text(run_dir):
    table = format_table(read_rows(run_dir), [("P&C linear", 84.9)])
    lines = table.splitlines()
    assert lines[2] == "| linear probe | 80.0 | 99.0 | - | linear.json |"
    assert lines[5] == "| fine-tune | 90.0 | 100.0 | 91.5 | finetune.json |"
    assert lines[6] == "| fine-tune, 10 % labels | 70.2 | 99.0 | - | finetune_0.1.json |"
    assert lines[-1] == "| P&C linear | 84.9 | - | - | reference |"
    assert len(lines) == 2 + 5 + 1


def test_cli_prints_table(run_dir, capsys):
    assert main([str(run_dir), "--baseline", "floor (a=b)=58.6"]) == 0
    out = capsys.readouterr().out
    assert "| KNN-1 | 61.0 | - | - | knn.json |" in out
    assert "| floor (a=b) | 58.6 | - | - | reference |" in out


def test_fusion_rows_follow_their_protocol(run_dir):
    _write(run_dir / "fusion_finetune.json", {"streams": {"a": 90.0, "b": 88.0},
                                              "stream_names": ["j", "b"],
                                              "fused_top1": 93.1, "fused_top5": 99.5})
    _write(run_dir / "fusion_linear.json", {"streams": {"a": 1, "b": 2, "c": 3},
                                            "stream_names": [None, None, None],
                                            "fused_top1": 81.0})
    rows = read_rows(run_dir)
    assert [r["protocol"] for r in rows] == [
        "linear probe", "linear probe, 3 streams fused", "KNN-1", "KNN-5", "fine-tune",
        "fine-tune, streams j+b fused", "fine-tune, 10 % labels"]
    table = format_table(rows).splitlines()
    assert table[7] == "| fine-tune, streams j+b fused | 93.1 | 99.5 | - | fusion_finetune.json |"
    assert table[3] == "| linear probe, 3 streams fused | 81.0 | - | - | fusion_linear.json |"
    _write(run_dir / "fusion_finetune.json", {"top1": 93.1})
    with pytest.raises(ReportError, match=r"fusion_finetune\.json: not an evaluation.fusion"):
        read_rows(run_dir)
    _write(run_dir / "fusion_finetune.json", {"streams": {}, "fused_top1": "x"})
    with pytest.raises(ReportError, match=r"fusion_finetune\.json: field 'fused_top1'"):
        read_rows(run_dir)


def test_baseline_parsing():
    assert parse_baseline(" 1-NN floor = 58.6") == ("1-NN floor", 58.6)
    for bad in ("58.6", "=58.6", "name=abc"):
        with pytest.raises(ReportError, match="NAME=TOP1"):
            parse_baseline(bad)


def test_errors_name_file_and_field(tmp_path, capsys):
    with pytest.raises(ReportError, match="no result files"):
        read_rows(tmp_path)
    _write(tmp_path / "linear.json", {"top1": "high"})
    with pytest.raises(ReportError, match=r"linear\.json: field 'top1' must be a finite number"):
        read_rows(tmp_path)
    (tmp_path / "linear.json").write_text("{broken")
    with pytest.raises(ReportError, match=r"linear\.json: not valid JSON"):
        read_rows(tmp_path)
    assert main([str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_detection_rows(tmp_path, capsys):
    from evaluation.report import main, read_detection_rows
    result = {"mAP_a": {"0.1": 80.0, "0.3": 70.0, "0.5": 55.5, "0.7": 20.0},
              "mAP_v": {"0.1": 81.0, "0.3": 71.0, "0.5": 56.0, "0.7": 21.0},
              "F1@0.5": 60.0, "AP@0.5": 50.0, "2D-AP": 40.0,
              "segmentation": {"accuracy": 75.0, "edit": 65.0, "F1@10": 1.0, "F1@25": 1.0,
                               "F1@50": 50.0}}
    (tmp_path / "detection.json").write_text(json.dumps(result))
    (tmp_path / "detection_floor.json").write_text(json.dumps({**result, "2D-AP": 5.0}))
    rows = read_detection_rows(tmp_path)
    assert [r["file"] for r in rows] == ["detection.json", "detection_floor.json"]
    assert rows[0]["mAP_a@0.5"] == 55.5 and rows[0]["edit"] == 65.0 and rows[1]["2D-AP"] == 5.0
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| detection, frozen encoder | 80.0 | 70.0 | 55.5 | 20.0 | 56.0 |" in out
    assert "top-1" not in out                          # no recognition results here
    del result["mAP_a"]["0.5"]
    (tmp_path / "detection.json").write_text(json.dumps(result))
    assert main([str(tmp_path)]) == 2
    assert "detection.json" in capsys.readouterr().err

"""evaluation.report: the result JSONs of run directories -> one table, by their protocol field."""
import json

import pytest

from evaluation.protocol import (ProtocolError, check_protocol, make_protocol, protocol_name,
                                 protocol_order)
from evaluation.report import ReportError, format_table, main, parse_baseline, read_rows

LINEAR = {"kind": "linear", "label_fraction": 1.0}


def _write(path, obj):
    path.write_text(json.dumps(obj))


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "ntu60_xs_j_dste"
    run.mkdir()
    # file names carry no meaning: the protocol field does
    _write(run / "a.json", {"protocol": {"kind": "finetune", "label_fraction": 0.1},
                            "top1": 70.25, "top5": 99.0})
    _write(run / "b.json", {"protocol": {"kind": "knn", "k": 1}, "top1": 61.0, "k": 1})
    _write(run / "c.json", {"protocol": {"kind": "finetune", "label_fraction": 1.0},
                            "top1": 90.0, "top5": 100.0,
                            "best": {"epoch": 7, "val_top1": 95.0, "top1": 91.5}})
    _write(run / "d.json", {"protocol": LINEAR, "top1": 80.04, "top5": 98.96})
    _write(run / "e.json", {"protocol": {"kind": "knn", "k": 5}, "top1": 63.0, "k": 5})
    _write(run / "manifest.json", {"unrelated": True})  # not a result file
    _write(run / "config.json", {"config": {"lr": 1}})   # pretrain.py's: not a result file
    return run


def test_rows_in_protocol_order_with_values(run_dir):
    rows = read_rows(run_dir)
    assert [r["protocol"] for r in rows] == ["linear probe", "KNN-1", "KNN-5", "fine-tune",
                                             "fine-tune, 10 % labels"]
    assert [r["top1"] for r in rows] == [80.04, 61.0, 63.0, 90.0, 70.25]
    assert [r["top5"] for r in rows] == [98.96, None, None, 100.0, 99.0]
    assert [r["selected"] for r in rows] == [None, None, None, 91.5, None]
    assert {r["run"] for r in rows} == {"ntu60_xs_j_dste"}


def test_table_text(run_dir):
    table = format_table(read_rows(run_dir), [("P&C linear", 84.9)])
    lines = table.splitlines()
    assert lines[2] == "| ntu60_xs_j_dste | linear probe | 80.0 | 99.0 | - | d.json |"
    assert lines[5] == "| ntu60_xs_j_dste | fine-tune | 90.0 | 100.0 | 91.5 | c.json |"
    assert lines[6] == "| ntu60_xs_j_dste | fine-tune, 10 % labels | 70.2 | 99.0 | - | a.json |"
    assert lines[-1] == "| - | P&C linear | 84.9 | - | - | reference |"
    assert len(lines) == 2 + 5 + 1


def test_one_table_across_runs(run_dir, capsys):
    other = run_dir.parent / "ntu60_xs_b_dste"
    other.mkdir()
    _write(other / "linear.json", {"protocol": LINEAR, "top1": 77.0})
    _write(other / "old.json", {"top1": 12.0})  # an old results file, no protocol
    (run_dir.parent / "pretrain_only").mkdir()  # no results: contributes no row
    assert main([str(other), str(run_dir), str(run_dir.parent / "pretrain_only"),
                 "--baseline", "floor (a=b)=58.6"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[2] == "| ntu60_xs_b_dste | linear probe | 77.0 | - | - | linear.json |"
    assert lines[3] == "| ntu60_xs_j_dste | linear probe | 80.0 | 99.0 | - | d.json |"
    assert "| ntu60_xs_j_dste | KNN-1 | 61.0 | - | - | b.json |" in lines
    assert lines[-1] == "| - | floor (a=b) | 58.6 | - | - | reference |"
    assert len(lines) == 2 + 1 + 5 + 1
    assert "skipped" in captured.err and "old.json: results without a 'protocol' field" in captured.err


def test_fusion_rows_follow_their_protocol(run_dir):
    _write(run_dir / "f1.json", {"protocol": {"kind": "fusion", "of": {"kind": "finetune",
                                                                        "label_fraction": 1.0}},
                                 "streams": {"a": 90.0, "b": 88.0}, "stream_names": ["j", "b"],
                                 "fused_top1": 93.1, "fused_top5": 99.5})
    _write(run_dir / "f2.json", {"protocol": {"kind": "fusion", "of": LINEAR},
                                 "streams": {"a": 1, "b": 2, "c": 3},
                                 "stream_names": [None, None, None], "fused_top1": 81.0})
    _write(run_dir / "f3.json", {"protocol": {"kind": "fusion", "of": None},
                                 "streams": {"x.npz": 1, "y.npz": 2}, "stream_names": [None, None],
                                 "fused_top1": 50.0})
    rows = read_rows(run_dir)
    assert [r["protocol"] for r in rows] == [
        "linear probe", "linear probe, fused: 3 streams", "KNN-1", "KNN-5", "fine-tune",
        "fine-tune, fused: streams j+b", "fine-tune, 10 % labels", "score fusion: 2 streams"]
    table = format_table(rows).splitlines()
    assert table[7] == ("| ntu60_xs_j_dste | fine-tune, fused: streams j+b | 93.1 | 99.5 | - "
                        "| f1.json |")
    _write(run_dir / "f1.json", {"protocol": {"kind": "fusion", "of": None}, "top1": 93.1})
    with pytest.raises(ReportError, match=r"f1\.json: not an evaluation.fusion"):
        read_rows(run_dir)
    _write(run_dir / "f1.json", {"protocol": {"kind": "fusion", "of": None}, "streams": {},
                                 "fused_top1": "x"})
    with pytest.raises(ReportError, match=r"f1\.json: field 'fused_top1'"):
        read_rows(run_dir)


def test_protocols_by_hand():
    assert make_protocol("finetune", label_fraction=0.01) == {"kind": "finetune", "label_fraction": 0.01}
    assert protocol_name(make_protocol("finetune", label_fraction=0.01)) == "fine-tune, 1 % labels"
    assert protocol_name(make_protocol("knn", k=20)) == "KNN-20"
    assert protocol_name(make_protocol("fusion", of=None)) == "score fusion"
    keys = [protocol_order(p) for p in (
        LINEAR, make_protocol("linear", label_fraction=0.5), make_protocol("knn", k=1),
        make_protocol("knn", k=3), make_protocol("finetune", label_fraction=1.0),
        make_protocol("fusion", of=make_protocol("finetune", label_fraction=1.0)),
        make_protocol("finetune", label_fraction=0.1), make_protocol("fusion", of=None))]
    assert keys == sorted(keys)
    for bad, match in ((None, "expected"), ({"kind": "svm"}, "expected"),
                       ({"kind": "knn"}, r"fields \['k', 'kind'\]"),
                       ({"kind": "knn", "k": 0}, "k must be an integer >= 1"),
                       ({"kind": "linear", "label_fraction": 1.5}, r"label_fraction must be a number in \(0, 1\]"),
                       ({"kind": "fusion", "of": {"kind": "fusion", "of": None}}, "fusion of fusions")):
        with pytest.raises(ProtocolError, match=match):
            check_protocol(bad, "x.json")
    with pytest.raises(ProtocolError, match="unknown protocol kind 'svm'"):
        make_protocol("svm")


def test_baseline_parsing():
    assert parse_baseline(" 1-NN floor = 58.6") == ("1-NN floor", 58.6)
    for bad in ("58.6", "=58.6", "name=abc"):
        with pytest.raises(ReportError, match="NAME=TOP1"):
            parse_baseline(bad)


def test_errors_name_file_and_field(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no result files" in capsys.readouterr().err
    _write(tmp_path / "linear.json", {"protocol": LINEAR, "top1": "high"})
    with pytest.raises(ReportError, match=r"linear\.json: field 'top1' must be a finite number"):
        read_rows(tmp_path)
    _write(tmp_path / "linear.json", {"protocol": {"kind": "linear"}, "top1": 1.0})
    with pytest.raises(ReportError, match=r"linear\.json: field 'protocol': a linear protocol has"):
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
    result["protocol"] = {"kind": "detection", "encoder": "frozen"}
    # read by protocol, not by file name: the floor's file sorts first, its row comes last
    (tmp_path / "a_floor.json").write_text(json.dumps(
        {**result, "2D-AP": 5.0, "protocol": {"kind": "detection", "encoder": "floor"}}))
    (tmp_path / "detection.json").write_text(json.dumps(result))
    (tmp_path / "other.json").write_text(json.dumps({k: v for k, v in result.items()
                                                     if k != "protocol"}))  # no protocol: ignored
    rows = read_detection_rows(tmp_path)
    assert [r["file"] for r in rows] == ["detection.json", "a_floor.json"]
    assert rows[0]["mAP_a@0.5"] == 55.5 and rows[0]["edit"] == 65.0 and rows[1]["2D-AP"] == 5.0
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"| {tmp_path.name} | detection, frozen encoder | 80.0 | 70.0 | 55.5 | 20.0 | 56.0 |" in out
    assert "top-1" not in out                          # no recognition results here
    del result["mAP_a"]["0.5"]
    (tmp_path / "detection.json").write_text(json.dumps(result))
    assert main([str(tmp_path)]) == 2
    assert "detection.json" in capsys.readouterr().err

"""evaluation.fusion on detection runs: per-frame probabilities fused, then evaluated."""
import json
import re

import numpy as np
import pytest

from evaluation.detection import read_proposals, write_results
from evaluation.fusion import (fuse_frames, load_frame_scores, main, proposal_settings,
                               save_scores)
from evaluation.protocol import make_protocol, protocol_name, protocol_order
from evaluation.report import format_detection_table, read_detection_rows, read_rows

FROZEN = {"kind": "detection", "encoder": "frozen"}
SETTINGS = {"threshold": 0.5, "min_length": 1, "smooth": 1, "nms": None}
# video v0: 20 frames, one action (class 1) on [4, 16); video v1: 8 frames of background
LABELS = {"v0": np.array([0] * 4 + [1] * 12 + [0] * 4), "v1": np.zeros(8, dtype=np.int64)}


def action_probs(first: float, second: float) -> dict:
    """Probability of the action `first` on frames 4-9, `second` on 10-15, 0 elsewhere."""
    p = np.zeros(20)
    p[4:10], p[10:16] = first, second
    return {"v0": np.column_stack([1 - p, p]), "v1": np.column_stack([np.ones(8), np.zeros(8)])}


# the joint stream sees the first half of the action, the bone stream the second half
JOINT, BONE = action_probs(0.8, 0.4), action_probs(0.4, 0.8)


def write_run(folder, probs, stream, settings=SETTINGS, labels=LABELS, protocol=FROZEN):
    """What action_detection.py writes: detection.json, _scores.npz, _proposals/."""
    from evaluation.detection import evaluate_streams
    folder.mkdir(parents=True, exist_ok=True)
    metrics, proposals = evaluate_streams(probs, labels, 1, threshold=settings["threshold"],
                                          min_length=settings["min_length"],
                                          smooth=settings["smooth"], nms_iou=settings["nms"])
    return write_results(folder, "detection", probs, labels, metrics, proposals,
                         {"protocol": protocol, "encoder": {"stream": stream},
                          "config": {**settings, "stream": stream, "lr": 1.0}})


@pytest.fixture
def runs(tmp_path):
    return (write_run(tmp_path / "demodet_xs_j_dste", JOINT, "j"),
            write_run(tmp_path / "demodet_xs_b_dste", BONE, "b"))


def fusion(*argv):
    return main([str(a) for a in argv])


def test_hand_computed_fusion_finds_what_each_stream_misses(runs, tmp_path):
    joint, bone = runs
    out = joint.parent / "fusion_detection.json"
    summary = fusion(joint, bone, "--output", out)
    # each stream alone: proposal [4, 10) (or [10, 16)) at 0.8, IoU 6/12 = 0.5 with [4, 16):
    # a hit up to theta 0.5, a miss at 0.7; 2D-AP: hits at theta 0.05 .. 0.50, 10 of 20
    for path in (joint, bone):
        alone = summary["streams"][str(path)]
        assert alone["mAP_a"] == {"0.1": 100.0, "0.3": 100.0, "0.5": 100.0, "0.7": 0.0}
        assert alone["2D-AP"] == pytest.approx(50.0)
        # frames 10-15 (or 4-9) at 0.4 go to background: 22 of 28 frames right
        assert alone["segmentation"]["accuracy"] == pytest.approx(100 * 22 / 28)
    # the mean is 0.6 on all of [4, 16): one proposal exactly on the action
    assert summary["mAP_a"] == {"0.1": 100.0, "0.3": 100.0, "0.5": 100.0, "0.7": 100.0}
    assert summary["2D-AP"] == pytest.approx(100.0) and summary["F1@0.5"] == pytest.approx(100.0)
    assert summary["mAP_v"]["0.5"] == pytest.approx(50.0)   # v1: no ground truth, AP 0
    assert summary["segmentation"]["accuracy"] == 100.0
    assert summary["num_proposals"] == 1 and summary["num_instances"] == 1
    # the fused run, written as action_detection.py writes one
    props = read_proposals(joint.parent / "fusion_detection_proposals" / "v0.txt")
    assert props.tolist() == [[1, 4, 16, 0.6]]
    assert read_proposals(joint.parent / "fusion_detection_proposals" / "v1.txt").shape == (0, 4)
    fused = load_frame_scores(joint.parent / "fusion_detection_scores.npz")
    assert fused.names.tolist() == ["v0", "v1"] and fused.lengths.tolist() == [20, 8]
    assert np.allclose(fused.scores[4:16, 1], 0.6) and np.allclose(fused.scores.sum(1), 1)
    saved = json.loads(out.read_text())
    assert saved == summary
    assert saved["protocol"] == make_protocol("fusion", of=FROZEN)
    assert saved["inputs"] == [str(joint), str(bone)] and saved["stream_names"] == ["j", "b"]
    assert saved["settings"] == SETTINGS and saved["settings_given"] == []
    assert saved["weights"] == [1.0, 1.0] and saved["normalised_weights"] == [0.5, 0.5]


def test_weights_are_normalised(runs, tmp_path):
    joint, bone = runs
    assert fusion(joint, bone, "--weights", "2,2")["mAP_a"] == fusion(joint, bone)["mAP_a"]
    # 4:1 -> 0.8 * 0.8 + 0.2 * 0.4 = 0.72 on frames 4-9, 0.48 on 10-15: the joint stream's [4, 10)
    summary = fusion(joint, bone, "--weights", "4,1", "--output", tmp_path / "w.json")
    assert summary["normalised_weights"] == pytest.approx([0.8, 0.2])
    assert summary["weights"] == [4.0, 1.0]
    assert read_proposals(tmp_path / "w_proposals" / "v0.txt").tolist() == [[1, 4, 10, 0.72]]
    assert summary["mAP_a"]["0.7"] == 0.0 and summary["mAP_a"]["0.5"] == 100.0
    files = [load_frame_scores(joint), load_frame_scores(bone)]
    fused, norm = fuse_frames(files, [3, 1])
    assert norm == [0.75, 0.25] and np.allclose(fused[4:10, 1], 0.7)
    for bad, match in (([1, 2, 3], "3 weights given for 2"), ([1, -1], ">= 0"),
                       ([0, 0], "not all 0")):
        with pytest.raises(ValueError, match=match):
            fuse_frames(files, bad)


def test_settings_from_the_inputs_or_the_flags(tmp_path, capsys):
    joint = write_run(tmp_path / "j", JOINT, "j")
    bone = write_run(tmp_path / "b", BONE, "b", settings={**SETTINGS, "threshold": 0.3})
    with pytest.raises(SystemExit) as exc:
        fusion(joint, bone)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "Traceback" not in err
    assert f"--threshold 0.5 in {joint}, 0.3 in {bone}" in err and "give the flag" in err
    # the flag decides; the others still come from the inputs
    summary = fusion(joint, bone, "--threshold", "0.65")   # fused 0.6 < 0.65: nothing found
    assert summary["settings"] == {**SETTINGS, "threshold": 0.65}
    assert summary["settings_given"] == ["threshold"] and summary["num_proposals"] == 0
    # --min-length 13 drops the 12-frame proposal; --nms none keeps NMS off
    summary = fusion(joint, bone, "--threshold", "0.5", "--min-length", "13", "--nms", "none")
    assert summary["num_proposals"] == 0 and summary["settings"]["nms"] is None
    assert proposal_settings([load_frame_scores(joint)], {"smooth": 3})["smooth"] == 3
    # bare .npz files record no settings: the flags are needed
    npz = [tmp_path / "j" / "detection_scores.npz", tmp_path / "b" / "detection_scores.npz"]
    with pytest.raises(SystemExit):
        fusion(*npz)
    assert "no input records --threshold" in capsys.readouterr().err
    summary = fusion(*npz, "--threshold", "0.5", "--min-length", "1", "--smooth", "1",
                     "--nms", "0.5")
    assert summary["mAP_a"]["0.7"] == 100.0 and summary["protocol"] == make_protocol("fusion")
    assert summary["stream_names"] == [None, None]
    # a JSON and a bare .npz: the JSON's settings
    assert fusion(joint, npz[1])["settings"] == SETTINGS
    for bad, match in ((["--threshold", "1.5"], r"--threshold must be in \[0, 1\)"),
                       (["--smooth", "0"], "--smooth must be >= 1"),
                       (["--nms", "2"], r"--nms must be an IoU in \[0, 1\]"),
                       (["--logits"], "--logits is for classification"),
                       (["--output", tmp_path / "x.txt"], "--output must name"),
                       (["--output", joint], "would overwrite an input")):
        with pytest.raises(SystemExit):
            fusion(joint, npz[1], *bad)
        assert re.search(match, capsys.readouterr().err), bad


def refused(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        fusion(*argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_refusals_name_the_files(runs, tmp_path, capsys):
    joint, bone = runs
    # detection results and classification scores do not mix
    save_scores(tmp_path / "cls.npz", ["a", "b"], [0, 1], np.zeros((2, 3)))
    err = refused(capsys, joint, tmp_path / "cls.npz")
    assert f"cannot fuse detection results ({joint}) with classification scores " \
           f"({tmp_path / 'cls.npz'})" in err
    # detection flags on classification scores
    save_scores(tmp_path / "cls2.npz", ["a", "b"], [0, 1], np.zeros((2, 3)))
    assert "for detection inputs only" in refused(capsys, tmp_path / "cls.npz",
                                                  tmp_path / "cls2.npz", "--smooth", "3")

    def other(name, probs=BONE, labels=LABELS):
        return write_run(tmp_path / name, probs, "b", labels=labels)

    renamed = other("renamed", {"v0": BONE["v0"], "v9": BONE["v1"]},
                    {"v0": LABELS["v0"], "v9": LABELS["v1"]})
    err = refused(capsys, joint, renamed)
    assert f"{joint} and {renamed} hold different test streams" in err and "'v1' vs 'v9'" in err
    shorter = other("shorter", {**BONE, "v1": BONE["v1"][:6]}, {**LABELS, "v1": LABELS["v1"][:6]})
    err = refused(capsys, joint, shorter)
    assert f"{joint} and {shorter} have different lengths for stream 'v1' (8 vs 6" in err
    relabelled = other("relabelled", labels={**LABELS, "v1": np.ones(8, dtype=np.int64)})
    err = refused(capsys, joint, relabelled)
    assert f"{joint} and {relabelled} disagree on the per-frame labels" in err and "'v1'" in err
    three = other("three", {n: np.column_stack([p, np.zeros(len(p))]) for n, p in BONE.items()})
    err = refused(capsys, joint, three)
    assert f"{joint} and {three} have different class counts (K + 1 = 2 vs 3)" in err
    broken = {**BONE, "v1": BONE["v1"].copy()}
    broken["v1"][3, 0] = np.nan
    nan_run = other("nan", broken)
    err = refused(capsys, joint, nan_run)
    assert str(nan_run.parent / "detection_scores.npz") in err and "non-finite" in err
    assert err.endswith("refusing to report a number computed from them") and ": v1;" in err
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    err = refused(capsys, joint, tmp_path / "junk.npz")
    assert f"{tmp_path / 'junk.npz'}: cannot read score file" in err
    save_scores(tmp_path / "x.npz", ["a"], [0], np.zeros((1, 2)))
    with np.load(tmp_path / "x.npz") as z:    # a detection file whose shapes do not add up
        np.savez(tmp_path / "bad.npz", **z, lengths=np.array([3]))
    err = refused(capsys, joint, tmp_path / "bad.npz")
    assert f"{tmp_path / 'bad.npz'}: inconsistent shapes" in err


def test_protocol_order_and_report_row(runs):
    fused_frozen = make_protocol("fusion", of=FROZEN)
    assert protocol_name(fused_frozen) == "detection, frozen encoder, fused"
    keys = [protocol_order(p) for p in (
        make_protocol("finetune", label_fraction=0.1), FROZEN, fused_frozen,
        make_protocol("detection", encoder="finetuned"),
        make_protocol("fusion", of=make_protocol("detection", encoder="finetuned")),
        make_protocol("detection", encoder="floor"), make_protocol("fusion", of=None))]
    assert keys == sorted(keys)
    joint, bone = runs
    run = joint.parent
    fusion(joint, bone, "--output", run / "fusion_detection.json")
    # a fusion of bare .npz files (protocol of none) with detection metrics: the same table, last
    fusion(joint.parent / "detection_scores.npz", bone.parent / "detection_scores.npz",
           *SETTINGS_FLAGS, "--output", run / "a_fusion.json")
    rows = read_detection_rows(run)
    assert [r["protocol"] for r in rows] == ["detection, frozen encoder",
                                             "detection, frozen encoder, fused: streams j+b",
                                             "score fusion: 2 streams"]
    assert [r["mAP_a@0.7"] for r in rows] == [0.0, 100.0, 100.0]
    table = format_detection_table(rows).splitlines()
    assert table[3] == (f"| {run.name} | detection, frozen encoder, fused: streams j+b | 100.0 | "
                        "100.0 | 100.0 | 100.0 | 50.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 "
                        "| fusion_detection.json |")
    assert read_rows(run) == []   # not in the recognition table


SETTINGS_FLAGS = ["--threshold", "0.5", "--min-length", "1", "--smooth", "1", "--nms", "none"]


def test_fusion_script_takes_detection_runs(runs, tmp_path):
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "SKEL_CHECKPOINTS": str(tmp_path)}
    res = subprocess.run(["bash", "scripts/fusion.sh", "detection", "demodet_xs_j_dste",
                          "demodet_xs_b_dste", "--output",
                          str(tmp_path / "demodet_xs_j_dste" / "fusion_detection.json")],
                         cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1].startswith("mAP_a@0.5 100.0")
    assert (tmp_path / "demodet_xs_j_dste" / "fusion_detection_proposals" / "v0.txt").is_file()


def test_end_to_end_from_two_detection_runs(tmp_path):
    """Joint and bone runs of action_detection.py on tiny synthetic streams, then the CLI."""
    import action_detection
    from feeders import synthetic
    streams = synthetic.write_untrimmed(tmp_path / "u", num_streams=4, num_subjects=4)
    common = ["--data", str(streams), "--preset", "tiny", "--clip-len", "16", "--epochs", "1",
              "--workers", "0", "--threads", "1", "--no-cache", "--min-length", "3"]
    for stream in "jb":
        action_detection.main([*common, "--stream", stream, "--output", str(tmp_path / stream)])
    out = tmp_path / "j" / "fusion_detection.json"
    summary = fusion(tmp_path / "j" / "detection.json", tmp_path / "b" / "detection.json",
                     "--weights", "2,1", "--output", out)
    assert summary["protocol"] == make_protocol("fusion", of=FROZEN)
    assert summary["stream_names"] == ["j", "b"]
    assert summary["settings"] == {"threshold": 0.5, "min_length": 3, "smooth": 1, "nms": None}
    joint, bone = (load_frame_scores(tmp_path / s / "detection.json") for s in "jb")
    fused = load_frame_scores(tmp_path / "j" / "fusion_detection_scores.npz")
    assert np.allclose(fused.scores, (2 * joint.scores + bone.scores) / 3, atol=1e-6)
    assert np.array_equal(fused.labels, joint.labels)
    # the streams' own metrics under the same settings are what their runs reported
    for s in "jb":
        reported = json.loads((tmp_path / s / "detection.json").read_text())
        assert summary["streams"][str(tmp_path / s / "detection.json")]["mAP_a"] == \
            pytest.approx(reported["mAP_a"])
    names = sorted(p.stem for p in (tmp_path / "j" / "fusion_detection_proposals").glob("*.txt"))
    assert names == joint.names.tolist()
    rows = read_detection_rows(tmp_path / "j")
    assert [r["protocol"] for r in rows] == ["detection, frozen encoder",
                                             "detection, frozen encoder, fused: streams j+b"]

"""Score fusion: alignment checks, hand-checked fused top-1, the CLI."""
import json

import numpy as np
import pytest

from evaluation.fusion import fuse, load_scores, main, save_scores, softmax

NAMES = ["s0", "s1", "s2", "s3"]
LABELS = [0, 1, 2, 1]
# stream A right on s0, s1; stream B right on s2, s3 (with a confident wrong s1)
A = np.log(np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]]))
B = np.log(np.array([[0.3, 0.4, 0.3], [0.05, 0.05, 0.9], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]]))


def write_pair(tmp_path):
    save_scores(tmp_path / "a.npz", NAMES, LABELS, A)
    (tmp_path / "a.json").write_text(json.dumps({"top1": 50.0, "scores_file": "a.npz"}))
    save_scores(tmp_path / "b.npz", NAMES, LABELS, B)
    return tmp_path / "a.json", tmp_path / "b.npz"


def test_round_trip(tmp_path):
    save_scores(tmp_path / "x.npz", NAMES, LABELS, A)
    f = load_scores(tmp_path / "x.npz")
    assert f.names.tolist() == NAMES and f.labels.tolist() == LABELS
    assert np.allclose(f.scores, A)


def test_softmax_fusion_hand_checked(tmp_path):
    a, b = write_pair(tmp_path)
    files = [load_scores(a), load_scores(b)]
    # equal weights on probabilities: s0 [1.1,.5,.4]->0 ok; s1 [.25,.75,1.0]->2 wrong;
    # s2 [.7,.4,.9]->2 ok; s3 [.6,1.2,.2]->1 ok  => 75 %
    fused = fuse(files)
    assert fused.argmax(1).tolist() == [0, 2, 2, 1]
    # weights 2:1 : s1 [.45,1.45,1.1]->1 ok; s2 [1.3,.7,1.0]->0 wrong => 75 %, different errors
    assert fuse(files, [2, 1]).argmax(1).tolist() == [0, 1, 0, 1]
    summary = main([str(a), str(b), "--output", str(tmp_path / "fusion_linear.json")])
    assert summary["streams"] == {str(a): 50.0, str(b): 50.0}
    assert summary["fused_top1"] == 75.0
    # top-2 of the fused [.25, .75, 1.0] on s1 holds its label 1: all four
    assert summary["fused_top5"] == 100.0   # k capped at the 3 classes
    assert summary["stream_names"] == [None, None] and summary["num_samples"] == 4
    assert json.loads((tmp_path / "fusion_linear.json").read_text()) == summary


def test_topk_and_stream_names(tmp_path):
    from evaluation.fusion import topk
    scores = np.array([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    labels = np.array([2, 1, 0])
    # ranks: s0 [1, 2, 0] -> label 2 second; s1 [0, 1, 2] -> 1 second; s2 [2, 0, 1] -> 0 second
    assert topk(scores, labels, 1) == 0.0
    assert topk(scores, labels, 2) == 100.0
    save_scores(tmp_path / "j.npz", NAMES, LABELS, A)
    save_scores(tmp_path / "b.npz", NAMES, LABELS, B)
    for stream in "jb":
        (tmp_path / f"{stream}.json").write_text(json.dumps(
            {"top1": 50.0, "stream": stream, "scores_file": f"{stream}.npz"}))
    summary = main([str(tmp_path / "j.json"), str(tmp_path / "b.json")])
    assert summary["stream_names"] == ["j", "b"]
    assert load_scores(tmp_path / "b.json").stream == "b"


def test_logits_mode_differs_from_softmax(tmp_path):
    logits_a = np.array([[10.0, 0.0], [0.0, 1.0]])
    logits_b = np.array([[0.0, 1.0], [0.0, 1.0]])
    save_scores(tmp_path / "a.npz", ["x", "y"], [1, 1], logits_a)
    save_scores(tmp_path / "b.npz", ["x", "y"], [1, 1], logits_b)
    files = [load_scores(tmp_path / "a.npz"), load_scores(tmp_path / "b.npz")]
    assert np.allclose(fuse(files, use_softmax=False), logits_a + logits_b)
    assert np.allclose(fuse(files), softmax(logits_a) + softmax(logits_b))


def test_refuses_reordered_and_different_samples(tmp_path):
    save_scores(tmp_path / "a.npz", NAMES, LABELS, A)
    save_scores(tmp_path / "b.npz", NAMES[::-1], LABELS[::-1], B)
    save_scores(tmp_path / "c.npz", ["s0", "s1", "s2", "zz"], LABELS, B)
    a, b, c = (load_scores(tmp_path / f"{n}.npz") for n in "abc")
    with pytest.raises(ValueError, match=r"a\.npz and .*b\.npz hold the same samples in a "
                                         r"different order"):
        fuse([a, b])
    with pytest.raises(ValueError, match=r"c\.npz hold different samples.*'s3' vs 'zz'"):
        fuse([a, c])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz")])


def test_weights_count_and_bad_files(tmp_path):
    a, b = write_pair(tmp_path)
    with pytest.raises(ValueError, match="3 weights given for 2"):
        fuse([load_scores(a), load_scores(b)], [1, 2, 3])
    (tmp_path / "bad.json").write_text(json.dumps({"top1": 1.0}))
    with pytest.raises(ValueError, match="bad.json.*scores_file"):
        load_scores(tmp_path / "bad.json")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        load_scores(tmp_path / "junk.npz")


def test_fusion_script_by_run_names_and_by_prefix(tmp_path):
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for stream, logits in (("j", A), ("b", B)):
        run = tmp_path / f"demo_xs_{stream}_dste"
        run.mkdir()
        save_scores(run / "linear_scores.npz", NAMES, LABELS, logits)
        (run / "linear.json").write_text(json.dumps({
            "protocol": {"kind": "linear", "label_fraction": 1.0},
            "scores_file": "linear_scores.npz", "stream": stream, "top1": 50.0}))
    env = {**os.environ, "SKEL_CHECKPOINTS": str(tmp_path)}

    def fusion(*argv):
        return subprocess.run(["bash", "scripts/fusion.sh", *argv], cwd=root, env=env,
                              capture_output=True, text=True, timeout=60)

    res = fusion("demo_xs")                       # j then b, equal weights
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().split("\n")
    assert lines[0].endswith("demo_xs_j_dste/linear.json") and "50.00" in lines[0]
    assert lines[-1].startswith(" 75.00  fused (weights [1.0, 1.0], softmax)")
    res = fusion("linear", "demo_xs_j_dste", "demo_xs_b_dste", "--weights", "2,1")
    assert res.returncode == 0 and "75.00  fused (weights [2.0, 1.0]" in res.stdout
    res = fusion("finetune", "demo_xs_j_dste", "demo_xs_b_dste")
    assert res.returncode != 0 and "demo_xs_j_dste/finetune.json not found" in res.stderr
    # the saved summary is a row of the joint run's report
    from evaluation.report import format_table, read_rows
    res = fusion("demo_xs", "--output", str(tmp_path / "demo_xs_j_dste" / "fusion_linear.json"))
    assert res.returncode == 0, res.stderr
    rows = format_table(read_rows(tmp_path / "demo_xs_j_dste")).splitlines()
    assert rows[2:] == [
        "| demo_xs_j_dste | linear probe | 50.0 | - | - | linear.json |",
        "| demo_xs_j_dste | linear probe, fused: streams j+b | 75.0 | 100.0 | - | fusion_linear.json |"]
    summary = json.loads((tmp_path / "demo_xs_j_dste" / "fusion_linear.json").read_text())
    assert summary["protocol"] == {"kind": "fusion", "of": {"kind": "linear", "label_fraction": 1.0}}
    assert fusion().returncode == 2 and "Usage: bash scripts/fusion.sh" in fusion().stderr

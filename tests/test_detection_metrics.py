"""The PKU-MMD detection metric, segmentation metrics, proposals and window stitching on
hand-computed cases (evaluation/detection.py)."""
import numpy as np
import pytest

from evaluation.detection import (average_precision, detection_metrics, edit_score, f1_score,
                                  instances_from_labels, proposals_from_scores, read_proposals,
                                  segmentation_metrics, smooth_scores, stitch, window_starts,
                                  write_proposals)


def table(rows, video=0):
    """(label, start, end, conf) rows -> the (P, 5) proposal table of one video."""
    return np.array([[*r, video] for r in rows], dtype=np.float64).reshape(-1, 5)


def gt_table(rows, video=0):
    return np.array([[*r, video] for r in rows], dtype=np.float64).reshape(-1, 4)


def test_instances_from_labels():
    labels = np.array([0, 0, 2, 2, 2, 0, 1, 1, 3])
    assert instances_from_labels(labels).tolist() == [[2, 2, 5], [1, 6, 8], [3, 8, 9]]
    assert instances_from_labels(np.zeros(5, int)).shape == (0, 3)


def test_perfect_proposals_give_100():
    gt = {"a": [[1, 0, 50], [2, 60, 100]], "b": [[1, 10, 40]]}
    props = {k: [[*r, 0.9] for r in v] for k, v in gt.items()}
    m = detection_metrics(props, gt, num_actions=2)
    for theta in ("0.1", "0.3", "0.5", "0.7"):
        assert m["mAP_a"][theta] == pytest.approx(100)
        assert m["mAP_v"][theta] == pytest.approx(100)
    assert m["F1@0.5"] == pytest.approx(100)
    assert m["AP@0.5"] == pytest.approx(100)
    assert m["2D-AP"] == pytest.approx(100)


def test_wrong_class_proposal_scores_zero():
    gts = gt_table([[1, 0, 100]])
    props = table([[2, 0, 100, 1.0]])
    assert average_precision(props, gts, 0.5) == 0
    assert f1_score(props, gts, 0.5) == 0


def test_iou_just_under_and_just_over_the_threshold():
    gts = gt_table([[1, 0, 100]])
    # overlap = 50 / 100 = 0.5 exactly: a match at theta 0.5 (>=)
    assert average_precision(table([[1, 0, 50, 1.0]]), gts, 0.5) == pytest.approx(1.0)
    # 51 / 100 just over, 49 / 100 just under
    assert average_precision(table([[1, 0, 51, 1.0]]), gts, 0.5) == pytest.approx(1.0)
    assert average_precision(table([[1, 0, 49, 1.0]]), gts, 0.5) == 0
    # a proposal longer than the ground truth: overlap 100 / 201 < 0.5
    assert average_precision(table([[1, 0, 201, 1.0]]), gts, 0.5) == 0
    assert average_precision(table([[1, 0, 200, 1.0]]), gts, 0.5) == pytest.approx(1.0)


def test_two_proposals_on_one_ground_truth_count_once():
    gts = gt_table([[1, 0, 100]])
    props = table([[1, 0, 100, 0.9], [1, 0, 90, 0.8]])
    # one positive out of two proposals: precision 1/2, recall 1 -> F1 2/3
    assert f1_score(props, gts, 0.5) == pytest.approx(2 / 3)
    # AP walks up from the least confident: removing the duplicate leaves recall at 1 with
    # precision 1, so the official AP is 1 (precision is made monotone)
    assert average_precision(props, gts, 0.5) == pytest.approx(1.0)


def test_ground_truth_without_proposal_halves_recall():
    gts = gt_table([[1, 0, 100], [1, 200, 300]])
    props = table([[1, 0, 100, 1.0]])
    # P = 1, R = 1/2: AP = 1 * 1/2, F1 = 2 * 1 * 0.5 / 1.5
    assert average_precision(props, gts, 0.5) == pytest.approx(0.5)
    assert f1_score(props, gts, 0.5) == pytest.approx(2 / 3)


def test_false_positive_weighs_on_ap_as_in_the_official_code():
    """The official AP recomputes precision only after removing a matched proposal, so a
    false positive of lower confidence still halves AP here (precision 1/2 at recall 1)."""
    gts = gt_table([[1, 0, 100]])
    props = table([[1, 0, 100, 0.9], [1, 200, 300, 0.1]])
    assert average_precision(props, gts, 0.5) == pytest.approx(0.5)
    # a false positive more confident than the true one: same value
    props = table([[1, 0, 100, 0.1], [1, 200, 300, 0.9]])
    assert average_precision(props, gts, 0.5) == pytest.approx(0.5)


def test_ranking_matters_for_ap():
    # two ground truths; proposals ranked TP (0.9), FP (0.5), TP (0.1).
    # All: P = 2/3, R = 1. Remove TP(0.1): P = 1/2, R = 1/2 -> 2/3 * 1/2. Skip FP. Remove
    # TP(0.9): P = R = 0 -> max precision 2/3 * 1/2. AP = 2/3.
    gts = gt_table([[1, 0, 100], [1, 200, 300]])
    props = table([[1, 0, 100, 0.9], [1, 400, 500, 0.5], [1, 200, 300, 0.1]])
    assert average_precision(props, gts, 0.5) == pytest.approx(2 / 3)


def test_video_lacking_some_classes():
    gt = {"a": [[1, 0, 50]], "b": [[1, 0, 50], [2, 60, 100]]}
    props = {k: [[*r, 0.9] for r in v] for k, v in gt.items()}
    m = detection_metrics(props, gt, num_actions=2)
    assert m["mAP_v"]["0.5"] == pytest.approx(100)   # video a has no class 2: no penalty
    assert m["mAP_a"]["0.5"] == pytest.approx(100)
    # a class with no ground truth anywhere scores AP 0 in mAP_a (official: mean over 1..K)
    m = detection_metrics(props, gt, num_actions=4)
    assert m["mAP_a"]["0.5"] == pytest.approx(50)
    # a video without any instance has AP 0 in mAP_v
    gt["c"] = []
    m = detection_metrics(props, gt, num_actions=2)
    assert m["mAP_v"]["0.5"] == pytest.approx(200 / 3)


def test_proposals_only_match_their_own_video():
    gt = {"a": [[1, 0, 50]], "b": [[1, 100, 150]]}
    props = {"a": [[1, 100, 150, 0.9]], "b": [[1, 0, 50, 0.9]]}
    m = detection_metrics(props, gt, num_actions=1)
    assert m["mAP_a"]["0.1"] == 0 and m["F1@0.5"] == 0


def test_edit_score_and_f1_at_k_by_hand():
    true = np.array([0, 1, 1, 1, 1, 0, 0, 2, 2, 2, 2, 0])
    assert edit_score(true, true) == 100
    # predicted segments (no background): 1, 3, 1, 2 against 1, 2: two insertions, max len 4
    pred = np.array([0, 1, 1, 3, 1, 0, 0, 2, 2, 2, 2, 0])
    assert edit_score(pred, true) == pytest.approx(50)
    # F1@k: pred segments 1 [1,3) IoU 2/4 with gt 1 [1,5); 3 [3,4) no gt; 1 [4,5) IoU 1/4
    # (gt already used); 2 [7,11) IoU 1.
    m = segmentation_metrics([pred], [true])
    # @10: tp = 2 (first 1, the 2), fp = 2, fn = 0 -> P 1/2, R 1 -> F1 2/3
    assert m["F1@10"] == pytest.approx(200 / 3)
    assert m["F1@50"] == pytest.approx(200 / 3)
    # accuracy: 11 of 12 frames
    assert m["accuracy"] == pytest.approx(100 * 11 / 12)
    shifted = np.array([0, 0, 0, 1, 1, 1, 0, 2, 2, 2, 2, 0])  # gt 1 [1,5) vs [3,6): IoU 2/5
    m = segmentation_metrics([shifted], [true])
    assert m["F1@25"] == pytest.approx(100)
    assert m["F1@50"] == pytest.approx(50)   # tp 1, fp 1, fn 1
    assert m["edit"] == pytest.approx(100)


def test_window_starts_cover_every_frame():
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert window_starts(11, 4, 3).tolist() == [0, 3, 6, 7]
    assert window_starts(3, 4, 2).tolist() == [0]
    for length in range(1, 40):
        starts = window_starts(length, 8, 5)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s:s + 8] = True
        assert covered.all() and starts.max() <= max(0, length - 8)


def test_stitch_averages_overlaps():
    starts = window_starts(6, 4, 2)                  # [0, 2]
    scores = np.zeros((2, 4, 2))
    scores[0, :, 0] = 1.0                            # window 0 says class 0 everywhere
    scores[1, :, 1] = 1.0                            # window 1 says class 1
    out = stitch(scores, starts, 6)
    assert out[:2].tolist() == [[1, 0], [1, 0]]
    assert out[2:4].tolist() == [[0.5, 0.5], [0.5, 0.5]]
    assert out[4:].tolist() == [[0, 1], [0, 1]]
    # a padded window on a short stream: positions past the end are dropped
    assert stitch(np.ones((1, 4, 1)), np.array([0]), 3).shape == (3, 1)
    with pytest.raises(ValueError, match="not covered"):
        stitch(np.ones((1, 2, 1)), np.array([0]), 3)


def test_proposals_from_scores_runs_threshold_min_length():
    scores = np.zeros((10, 3), dtype=np.float32)
    scores[:, 0] = 1
    scores[2:6, 1] = [0.6, 0.8, 0.8, 0.6]
    scores[8, 2] = 0.9                                # a 1-frame run
    props = proposals_from_scores(scores, threshold=0.5)
    assert props[:, :3].tolist() == [[1, 2, 6], [2, 8, 9]]
    assert props[0, 3] == pytest.approx(0.7)
    assert proposals_from_scores(scores, 0.5, min_length=2)[:, 0].tolist() == [1]
    # NMS drops the weaker of two overlapping runs of one class
    scores[6, 1] = 0.3
    scores[7, 1] = 0.55
    both = proposals_from_scores(scores, 0.2, min_length=2)
    assert len(both[both[:, 0] == 1]) == 1          # [2, 8) one run at threshold 0.2


def test_smoothing_joins_a_fragmented_action():
    """An action whose probability dips below the threshold every third frame gives three
    fragments; a 3-frame moving average (hand-computed) lifts the dips and joins them."""
    scores = np.zeros((9, 2), dtype=np.float32)
    scores[:, 1] = [0, 0.9, 0.9, 0.3, 0.9, 0.9, 0.3, 0.9, 0.9]
    scores[:, 0] = 1 - scores[:, 1]
    assert proposals_from_scores(scores, 0.5)[:, 1:3].tolist() == [[1, 3], [4, 6], [7, 9]]
    smoothed = smooth_scores(scores, 3)[:, 1]
    want = [0.45, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.9]   # edges: mean of 2 frames
    assert np.allclose(smoothed, want, atol=1e-6)
    props = proposals_from_scores(scores, 0.5, smooth=3)
    assert props[:, :3].tolist() == [[1, 1, 9]]
    assert props[0, 3] == pytest.approx(np.mean(want[1:]))


def test_proposal_files_round_trip(tmp_path):
    props = np.array([[3, 10, 50, 0.75], [1, 60, 80, 0.5]])
    write_proposals(tmp_path / "v.txt", props)
    assert (tmp_path / "v.txt").read_text().splitlines()[0] == "3,10,50,0.750000"
    assert np.allclose(read_proposals(tmp_path / "v.txt"), props)

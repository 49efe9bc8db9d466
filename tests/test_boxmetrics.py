"""Box mAP50 and FROC sensitivity on hand-made boxes whose values are computed by hand."""

import numpy as np
import pytest

from fracdet.boxmetrics import (average_precision, boxes_from_map, detection_summary, iou_matrix, match_boxes,
                                sensitivity_at_fp, xywh_to_corners)

# film A: two fractures, three predicted boxes (hit, miss, hit); film B: normal, one false box
PREDS = [[(0, 0, 10, 10, 0.9), (50, 50, 60, 60, 0.8), (20, 20, 30, 30, 0.7)], [(0, 0, 5, 5, 0.6)]]
TRUTHS = [[(0, 0, 10, 10), (20, 20, 30, 30)], []]


def test_iou_matrix_by_hand():
    m = iou_matrix([(0, 0, 10, 10), (5, 0, 15, 10)], [(0, 0, 10, 20)])
    assert m[:, 0] == pytest.approx([0.5, 50 / 250])
    assert iou_matrix([], [(0, 0, 1, 1)]).shape == (0, 1)


def test_matching_ranks_by_score_and_counts_duplicates_as_false():
    scores, hits, n = match_boxes(PREDS, TRUTHS)
    assert n == 2 and list(hits) == [True, False, True, False]
    # two boxes on one fracture: the better-scored one hits, the other is a false positive
    s, h, n = match_boxes([[(0, 0, 10, 10, 0.3), (0, 0, 10, 11, 0.8)]], [[(0, 0, 10, 10)]])
    assert list(zip(s, h)) == [(0.8, True), (0.3, False)]
    # IoU exactly 0.5 counts (≥), just below does not
    assert match_boxes([[(0, 0, 10, 20, 1.0)]], [[(0, 0, 10, 10)]])[1].tolist() == [True]
    assert match_boxes([[(0, 0, 10, 21, 1.0)]], [[(0, 0, 10, 10)]])[1].tolist() == [False]


def test_average_precision_by_hand():
    # ranked: TP (recall .5, precision 1), FP, TP (recall 1, precision 2/3), FP
    # 101-point interpolation: recall 0..0.50 → 1 (51 levels), 0.51..1 → 2/3 (50 levels)
    scores, hits, n = match_boxes(PREDS, TRUTHS)
    assert average_precision(scores, hits, n) == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert average_precision(np.array([0.9]), np.array([True]), 1) == pytest.approx(1.0)
    assert average_precision(np.array([0.9, 0.5]), np.array([False, True]), 1) == pytest.approx(0.5)
    # recall never reaches 1: the unreached levels give 0 (one of two boxes, found first)
    assert average_precision(np.array([0.9]), np.array([True]), 2) == pytest.approx(51 / 101)
    assert average_precision(np.array([]), np.array([], dtype=bool), 3) == 0.0
    assert np.isnan(average_precision(np.array([0.5]), np.array([False]), 0))


def test_sensitivity_at_false_positives_per_film_by_hand():
    scores, hits, n = match_boxes(PREDS, TRUTHS)  # FPs per film along the ranking: 0, .5, .5, 1
    assert sensitivity_at_fp(scores, hits, n, 2, 1.0) == (1.0, 0.6)
    assert sensitivity_at_fp(scores, hits, n, 2, 0.25) == (0.5, 0.9)
    assert sensitivity_at_fp(scores, hits, n, 2, 0.5) == (1.0, 0.7)
    # a false box scoring first: no threshold keeps FPs at 0 per film
    assert sensitivity_at_fp(np.array([0.9, 0.1]), np.array([False, True]), 1, 4, 0.0) == (0.0, None)


def test_ties_enter_together():
    # a hit and a miss with the same score: at 0 FP per film neither can be kept
    s, h = np.array([0.5, 0.5]), np.array([True, False])
    assert sensitivity_at_fp(s, h, 1, 1, 0.0) == (0.0, None)
    assert average_precision(s, h, 1) == pytest.approx(0.5)  # precision 1/2 at recall 1


def test_summary_and_boxes_from_a_map():
    summ = detection_summary(PREDS, TRUTHS)
    assert summ["map50"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert summ["sensitivity_at_1fp"] == 1.0 and summ["n_films"] == 2 and summ["n_true_boxes"] == 2
    assert summ["froc"]["0.25"] == 0.5

    m = np.zeros((40, 60))
    m[5:10, 10:20] = 1.0  # the peak region
    m[30:35, 40:50] = 0.6  # a weaker one, above half the peak
    m[20, 5] = 0.3  # below half the peak: no box
    boxes = boxes_from_map(m, probability=0.8)
    assert boxes == [(10.0, 5.0, 20.0, 10.0, 0.8), (40.0, 30.0, 50.0, 35.0, pytest.approx(0.48))]
    assert boxes_from_map(np.zeros((4, 4)), 0.9) == [] and boxes_from_map(np.ones((4, 4)), 0.9) == []
    assert xywh_to_corners([(1, 2, 3, 4)]) == [(1.0, 2.0, 4.0, 6.0)]


def test_a_box_in_the_right_place_drawn_too_small_counts_at_iou_025_not_050():
    truth = [[(0, 0, 20, 20)]]
    small = [[(5, 5, 15, 15, 0.9)]]  # the same centre, half the side: IoU 0.25
    summ = detection_summary(small, truth)
    assert summ["map50"] == 0.0 and summ["map25"] == pytest.approx(1.0)
    loose = detection_summary(small, truth, iou_threshold=0.25, also_at=(0.1, 0.25))
    assert "map50" not in loose and loose["map25"] == loose["map10"] == pytest.approx(1.0)


def test_detection_interval_resamples_films_and_holds_the_estimate():
    from fracdet.boxmetrics import detection_ci

    rng = np.random.default_rng(3)
    truths = [[(10, 10, 30, 30)] for _ in range(30)] + [[] for _ in range(60)]
    # half the fractures found (score 0.9), the rest missed by a box elsewhere; normal films a weak false box
    preds = [[(10, 10, 30, 30, 0.9)] if i % 2 == 0 else [(60, 60, 80, 80, 0.8)] for i in range(30)]
    preds += [[(0, 0, 5, 5, float(rng.uniform(0.1, 0.7)))] for _ in range(60)]
    summ = detection_summary(preds, truths, n_resamples=200, seed=1)
    ci = summ["ci"]
    assert ci["map50"]["estimate"] == pytest.approx(summ["map50"])
    assert ci["sensitivity_at_1fp"]["estimate"] == summ["sensitivity_at_1fp"] == 0.5
    for k in ("map50", "sensitivity_at_1fp"):
        assert ci[k]["low"] < ci[k]["estimate"] < ci[k]["high"] and ci[k]["n_resamples"] == 200
    assert ci == detection_ci(preds, truths, n_resamples=200, seed=1)  # seeded: the same interval again
    perfect = detection_ci([[(10, 10, 30, 30, 0.9)]] * 5 + [[]] * 5, [[(10, 10, 30, 30)]] * 5 + [[]] * 5, n_resamples=50)
    assert perfect["map50"]["low"] == perfect["map50"]["high"] == 1.0
    assert "ci" not in detection_summary(preds, truths)  # off unless asked


def test_ap_over_fractured_films_alone_leaves_normal_films_false_boxes_out():
    truths = [[(0, 0, 10, 10)], [(0, 0, 10, 10)], []]
    # a hit and a miss on the fractured films; a normal film's false box outscores both
    preds = [[(0, 0, 10, 10, 0.8)], [(50, 50, 60, 60, 0.7)], [(0, 0, 10, 10, 0.9)]]
    summ = detection_summary(preds, truths)
    assert summ["map50"] == pytest.approx(51 * 0.5 / 101)  # precision 1/2 up to recall 0.5
    assert summ["map50_boxed"] == pytest.approx(51 / 101)  # precision 1 up to recall 0.5
    assert summ["n_films"] == 3 and summ["n_true_boxes"] == 2
    assert detection_summary(preds[:2], truths[:2])["map50"] == pytest.approx(summ["map50_boxed"])

import numpy as np
from sklearn import metrics as skm

from fracdet.calibration import calibrated_probability, expected_calibration_error, fit_temperature
from fracdet.metrics import binary_metrics, format_table, youden_threshold


def test_binary_metrics_hand_computed():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.4, 0.05])
    m = binary_metrics(y, p, 0.5)
    assert m["confusion_matrix"] == {"tn": 4, "fp": 1, "fn": 1, "tp": 2}
    assert m["sensitivity"] == 2 / 3 and m["specificity"] == 4 / 5
    assert m["ppv"] == 2 / 3 and m["npv"] == 4 / 5
    assert m["accuracy"] == 6 / 8
    assert np.isclose(m["f1"], skm.f1_score(y, p >= 0.5))
    assert np.isclose(m["roc_auc"], skm.roc_auc_score(y, p))
    assert "ROC-AUC" in format_table(m)


def test_single_class_gives_nan_not_error():
    m = binary_metrics(np.zeros(4, dtype=int), np.array([0.1, 0.2, 0.7, 0.3]), 0.5)
    assert np.isnan(m["roc_auc"]) and np.isnan(m["sensitivity"]) and m["specificity"] == 0.75


def test_youden_threshold_separates_perfect_scores():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    t = youden_threshold(y, p)
    assert 0.3 < t <= 0.7
    m = binary_metrics(y, p, t)
    assert m["sensitivity"] == 1 and m["specificity"] == 1


def test_temperature_scaling_reduces_ece_of_overconfident_logits():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 1.5, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    logits = true_logit * 4.0  # overconfident by a factor of 4
    t = fit_temperature(logits, y)
    assert 3.0 < t < 5.0
    before = expected_calibration_error(calibrated_probability(logits, 1.0), y)
    after = expected_calibration_error(calibrated_probability(logits, t), y)
    assert after < before / 2

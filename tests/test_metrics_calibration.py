import numpy as np
from sklearn import metrics as skm

from fracdet.calibration import calibrated_probability, expected_calibration_error, fit_temperature
from fracdet.metrics import binary_metrics, format_table
from fracdet.operating import youden_threshold


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


# ----------------------------------------------------------------------------- bootstrap, fast metrics
import pytest  # noqa: E402

from fracdet.calibration import reliability_curve  # noqa: E402
from fracdet.metrics import average_precision, bootstrap_ci, format_ci, roc_auc, subgroup_metrics  # noqa: E402


def _scores(n, seed=0, sep=1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    z = rng.normal(0, 1, n) + sep * (2 * y - 1)
    return y, 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_auc_and_ap_equal_sklearn_with_ties(seed):
    y, p = _scores(300, seed)
    p = np.round(p, 1)  # many ties
    assert np.isclose(roc_auc(y, p), skm.roc_auc_score(y, p))
    assert np.isclose(average_precision(y, p), skm.average_precision_score(y, p))


def test_auc_hand_computed():
    # pairs (pos, neg): 0.8>0.3, 0.8>0.5, 0.4>0.3, 0.4<0.5 → 3/4
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.3, 0.5])) == 0.75
    # AP: ranked 0.8(+) 0.5(-) 0.4(+) 0.3(-): (1/2)·1 + (1/2)·(2/3)
    assert np.isclose(average_precision(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.3, 0.5])), 0.5 + 1 / 3)
    assert np.isnan(roc_auc(np.zeros(3), np.array([0.1, 0.2, 0.3])))


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    y, p = _scores(400)
    ci = bootstrap_ci(y, p, 0.5, n_resamples=300, seed=3)
    m = binary_metrics(y, p, 0.5)
    for k, v in ci.items():
        assert np.isclose(v["estimate"], m[k])
        assert v["low"] <= v["estimate"] <= v["high"], k
        assert v["high"] - v["low"] > 0, k
    assert ci == bootstrap_ci(y, p, 0.5, n_resamples=300, seed=3)
    assert ci != bootstrap_ci(y, p, 0.5, n_resamples=300, seed=4)
    assert "ROC-AUC" in format_ci(ci)


def test_bootstrap_ci_narrows_with_more_data():
    small = bootstrap_ci(*_scores(100, 1), 0.5, n_resamples=300)
    large = bootstrap_ci(*_scores(2500, 1), 0.5, n_resamples=300)
    for k in ("roc_auc", "sensitivity", "specificity", "accuracy"):
        assert (large[k]["high"] - large[k]["low"]) < 0.5 * (small[k]["high"] - small[k]["low"]), k


def test_bootstrap_is_stratified():
    y = np.array([1] * 3 + [0] * 97)
    p = np.linspace(0, 1, 100)
    ci = bootstrap_ci(y, p, 0.5, n_resamples=200)
    assert np.isfinite(ci["roc_auc"]["low"])  # every resample keeps its 3 positives


def test_subgroup_metrics():
    y, p = _scores(600, 2)
    region = np.where(np.arange(600) % 3 == 0, "hand", "leg").tolist()
    region[5] = None
    p_bad = p.copy()
    hand = np.array(region, dtype=object) == "hand"
    p_bad[hand] = np.random.default_rng(0).random(hand.sum())  # the model is blind on hands
    sub = subgroup_metrics(y, p_bad, 0.5, {"region": region, "single": ["x"] * 600}, n_resamples=100)
    assert set(sub) == {"region"}  # one known value: nothing to compare
    assert sub["region"]["hand"]["n"] == hand.sum() and sub["region"]["leg"]["n"] == 600 - hand.sum() - 1
    assert sub["region"]["hand"]["roc_auc"] < 0.65 < sub["region"]["leg"]["roc_auc"]
    ci = sub["region"]["leg"]["ci"]["roc_auc"]
    assert ci["low"] <= sub["region"]["leg"]["roc_auc"] <= ci["high"]


def test_reliability_curve_and_ece_agree():
    y, p = _scores(1000, 4)
    c = reliability_curve(p, y)
    assert sum(c["count"]) == 1000
    ece = sum(n / 1000 * abs(a - b) for n, a, b in zip(c["count"], c["predicted"], c["observed"]))
    assert np.isclose(ece, expected_calibration_error(p, y))


def test_one_rates_helper_agrees_with_scikit_learn():
    from sklearn.metrics import confusion_matrix

    from fracdet.metrics import binary_metrics
    from fracdet.operating import confusion_at, rates_at

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    p = np.clip(rng.normal(0.3 + 0.4 * y, 0.25), 0, 1)
    for t in (0.0, 0.25, 0.5, 0.9, 1.01):
        tn, fp, fn, tp = confusion_matrix(y, (p >= t).astype(int), labels=[0, 1]).ravel()
        assert confusion_at(y, p, t) == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
        r, m = rates_at(y, p, t), binary_metrics(y, p, t)
        assert r["sensitivity"] == m["sensitivity"] == tp / (tp + fn)
        assert r["specificity"] == m["specificity"] == tn / (tn + fp)
        assert r["flagged_fraction"] == (tp + fp) / len(y)
    assert np.isnan(rates_at(np.zeros(5, int), np.ones(5), 0.5)["sensitivity"])

"""Operating points (threshold rules, verdicts), artifact format 2, test-time augmentation,
``fracdet calibrate`` and the model card."""

import csv
import json

import numpy as np
import pytest
import torch

from fracdet.artifact import FORMAT, ModelArtifact, load_artifact, save_artifact
from fracdet.cli import main
from fracdet.errors import FracdetError
from fracdet.modelcard import render_model_card
from fracdet.models import create_model
from fracdet.operating import (ThresholdRule, choose_operating_points, cost_threshold, sensitivity_threshold,
                               specificity_threshold, verdict, youden_threshold)
from fracdet.inference import Predictor
from fracdet.operating import Decision
from fracdet.transforms import PreprocessSpec
from fracdet.models.tta import TTAModel
from synth import make_split_folders, write_image


def _scores(n=800, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1.2, n) + 1.5 * (2 * y - 1))))
    return y, p


def _sens_spec(y, p, t):
    pred = p >= t
    return pred[y == 1].mean(), (~pred[y == 0]).mean()


# ----------------------------------------------------------------------------- threshold rules
@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.99, 1.0])
def test_target_sensitivity_is_met_and_tight(target):
    y, p = _scores()
    t = sensitivity_threshold(y, p, target)
    se, _ = _sens_spec(y, p, t)
    assert se >= target
    assert not np.any(p == t)  # never on a score (rates must not flip when a score rounds)
    higher, lower = np.unique(p[p > t]), p[p < t]
    assert len(higher) > 0  # at least one case is flagged
    if len(lower):  # midway between the last unflagged and the first flagged score
        assert t == pytest.approx((lower.max() + higher[0]) / 2)
    # flagging one score fewer misses the target: t is the most specific such point
    assert _sens_spec(y, p, np.nextafter(higher[0], 1.0))[0] < target


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_target_specificity_is_met_and_tight(target):
    y, p = _scores(seed=1)
    t = specificity_threshold(y, p, target)
    _, sp = _sens_spec(y, p, t)
    assert sp >= target
    lower = np.unique(p[p < t])
    if len(lower):
        assert _sens_spec(y, p, lower[-1])[1] < target


def test_youden_maximises_j_against_brute_force():
    y, p = _scores(seed=2)
    t = youden_threshold(y, p)
    j = sum(_sens_spec(y, p, t)) - 1
    best = max(sum(_sens_spec(y, p, c)) - 1 for c in np.unique(p))
    assert np.isclose(j, best)


def test_cost_rule_minimises_cost_and_moves_with_costs():
    y, p = _scores(seed=3)

    def cost(t, cfn, cfp):
        pred = p >= t
        return cfn * np.sum(~pred & (y == 1)) + cfp * np.sum(pred & (y == 0))

    for cfn, cfp in [(1, 1), (10, 1), (1, 10)]:
        t = cost_threshold(y, p, cfn, cfp)
        assert np.isclose(cost(t, cfn, cfp), min(cost(c, cfn, cfp) for c in np.unique(p)))
    # missing a fracture expensive → lower threshold, higher sensitivity
    assert cost_threshold(y, p, 10, 1) < cost_threshold(y, p, 1, 1) < cost_threshold(y, p, 1, 10)


def test_operating_points_bands_and_note():
    y, p = _scores(seed=4)
    ops = choose_operating_points(y, p, ThresholdRule("sensitivity", target_sensitivity=0.9,
                                                      doubt_sensitivity=0.97, fracture_specificity=0.9))
    assert ops.doubt_threshold <= ops.threshold <= ops.fracture_threshold
    assert ops.achieved["main"]["sensitivity"] >= 0.9
    assert ops.achieved["doubt"]["sensitivity"] >= 0.97
    assert ops.achieved["fracture"]["specificity"] >= 0.9
    assert "sensitivity ≥ 0.9" in ops.threshold_rule and "doubt threshold" in ops.note
    v = [verdict(x, ops.doubt_threshold, ops.fracture_threshold) for x in p]
    assert set(v) == {"fracture", "doubt", "no fracture"}
    # every fracture verdict is at least as likely fractured as every doubt, etc.
    assert min(p[np.array(v) == "fracture"]) >= max(p[np.array(v) == "doubt"])
    assert verdict(None, 0.2, 0.8) is None


def test_rule_errors_are_clear():
    with pytest.raises(FracdetError, match="target sensitivity"):
        ThresholdRule("sensitivity")
    with pytest.raises(FracdetError, match="unknown threshold rule"):
        ThresholdRule("magic")
    with pytest.raises(FracdetError, match="both"):
        youden_threshold(np.ones(5, dtype=int), np.linspace(0, 1, 5))


# ----------------------------------------------------------------------------- artifact and predictor
def _artifact(**kw):
    torch.manual_seed(0)
    model = create_model("simple_cnn", pretrained=False, head_hidden=16, dropout=0.1).eval()
    return ModelArtifact(architecture="simple_cnn", state_dict=model.state_dict(),
                         preprocess=PreprocessSpec(input_size=48, mean=(0.5,) * 3, std=(0.25,) * 3),
                         model_config={"head_hidden": 16, "dropout": 0.1}, **kw)


def test_format_1_artifact_still_loads(tmp_path):
    art = _artifact(threshold=0.4)
    state = {k: torch.from_numpy(v) for k, v in art.state_dict.items()}
    payload = {"format": FORMAT, "format_version": 1, "kind": "single", "state_dict": state,
               "architecture": "simple_cnn", "model_config": art.model_config, "preprocess": art.preprocess.to_dict(),
               "threshold": 0.4, "threshold_rule": "Youden", "temperature": 1.5}
    torch.save(payload, tmp_path / "old.fracdet")
    old = load_artifact(tmp_path / "old.fracdet")
    assert old.kind == "single" and old.doubt_threshold == old.fracture_threshold == 0.4
    assert Decision.of(old).verdict(0.41) == "fracture" and Decision.of(old).verdict(0.39) == "no fracture"
    flat = np.full((40, 40), 0.5, np.float32)  # the decision under test, so the image checks are off
    assert Predictor(old, assess=False).predict(flat).verdict in ("fracture", "no fracture")
    assert Predictor(old).predict(flat).verdict == "not assessable"


def test_format_3_round_trip_and_verdicts(tmp_path):
    art = _artifact(threshold=0.5, doubt_threshold=0.3, fracture_threshold=0.7, threshold_note="why")
    loaded = load_artifact(save_artifact(art, tmp_path / "m.fracdet"))
    assert (loaded.doubt_threshold, loaded.fracture_threshold, loaded.threshold_note) == (0.3, 0.7, "why")
    assert [Decision.of(loaded).verdict(x) for x in (0.2, 0.5, 0.7)] == ["no fracture", "doubt", "fracture"]
    pred = Predictor(loaded, assess=False).predict(np.full((40, 40), 0.5, np.float32))
    assert pred.verdict == Decision.of(loaded).verdict(pred.probability)
    assert pred.label in ("fractured", "not fractured") and "verdict" in pred.to_row()


def test_predict_rows_have_a_verdict_column(tmp_path):
    path = save_artifact(_artifact(doubt_threshold=0.0, fracture_threshold=1.0), tmp_path / "m.fracdet")
    write_image(tmp_path / "imgs" / "a.png", True, 1)
    write_image(tmp_path / "imgs" / "b.png", False, 2)
    assert main(["predict", str(tmp_path / "imgs"), "--model", str(path), "--out", str(tmp_path / "r.csv"),
                 "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [r["verdict"] for r in rows] == ["doubt", "doubt"]
    assert main(["predict", str(tmp_path / "imgs"), "--model", str(path), "--out", str(tmp_path / "r.json"),
                 "--quiet", "--tta"]) == 0
    assert [r["verdict"] for r in json.loads((tmp_path / "r.json").read_text())] == ["doubt", "doubt"]


# ----------------------------------------------------------------------------- TTA
class _LeftMinusRight(torch.nn.Module):
    def forward(self, x):
        w = x.shape[-1] // 2
        return 5 * (x[..., :w].mean(dim=(1, 2, 3)) - x[..., w:].mean(dim=(1, 2, 3)))


def test_tta_averages_the_logits_of_the_views():
    spec = PreprocessSpec(input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    x = torch.zeros(2, 3, 32, 32)
    x[0, :, :, :10] = 2.0  # bright left: positive logit
    x[1, :, 5:20, 20:] = 1.0
    base = _LeftMinusRight()
    flip_only = TTAModel(base, preprocess=spec, angles=())
    # the mirror negates the logit: the mean of a and −a is 0
    assert torch.allclose(flip_only(x), torch.zeros(2), atol=1e-5)
    tta = TTAModel(base, preprocess=spec, angles=(-10, 10))
    views = [x, torch.flip(x, dims=[-1])] + [
        torch.stack([__import__("torchvision").transforms.functional.rotate(
            im, a, interpolation=__import__("torchvision").transforms.InterpolationMode.BILINEAR, fill=[-2.0] * 3)
            for im in x]) for a in (-10, 10)]
    expected = torch.stack([base(v) for v in views]).mean(0)
    assert torch.allclose(tta(x), expected, atol=1e-5)
    assert not torch.allclose(tta(x), base(x))


# ----------------------------------------------------------------------------- fracdet calibrate
def test_calibrate_cli_meets_target_on_its_data(tmp_path):
    data = make_split_folders(tmp_path / "data", {"train": 2, "val": 20, "test": 2})
    src = save_artifact(_artifact(temperature=1.0), tmp_path / "m.fracdet")
    out = tmp_path / "site.fracdet"
    assert main(["calibrate", str(data), "--model", str(src), "--out", str(out), "--target-sensitivity", "0.9",
                 "--fracture-specificity", "0.8"]) == 0
    art = load_artifact(out)
    assert "sensitivity ≥ 0.9" in art.threshold_rule and "'val' split" in art.threshold_note
    assert art.metrics["calibration"]["n"] == 40 and art.data["calibrated_on"]["n"] == 40
    p = Predictor(art)
    res = list(p.predict_paths([data / "val"]))
    y = np.array([1 if "/fractured/" in r.path else 0 for r in res])
    prob = np.array([r.probability for r in res])
    assert (prob[y == 1] >= art.threshold).mean() >= 0.9
    assert (prob[y == 0] < art.fracture_threshold).mean() >= 0.8
    assert art.doubt_threshold <= art.fracture_threshold
    card = (tmp_path / "site.model_card.md").read_text()
    assert "Not a medical device" in card and "recalibrated" in card and "doubt threshold" in card
    assert main(["calibrate", str(data), "--model", str(src), "--out", str(out), "--rule", "specificity"]) == 2


def test_model_card_sections():
    art = _artifact(threshold=0.5, doubt_threshold=0.2, fracture_threshold=0.8, threshold_note="the rationale",
                    metrics={"test": {"n": 50, "roc_auc": 0.9, "ci": {"roc_auc": {"low": 0.8, "high": 0.95}},
                                      "subgroups": {"region": {"hand": {"n": 30, "positives": 10, "roc_auc": 0.7,
                                                                        "sensitivity": 0.5},
                                                               "leg": {"n": 20, "positives": 5, "roc_auc": 0.95,
                                                                       "sensitivity": 0.9}}}}})
    card = render_model_card(art)
    for text in ("Not a medical device", "## Intended use", "## Data and split", "## Metrics by subgroup",
                 "0.900 [0.800, 0.950]", "| region | hand | 30 |", "the rationale", "doubt threshold",
                 "## Known limitations and failure modes", "region = hand"):
        assert text in card, text


def test_evaluate_with_tta(tmp_path):
    from fracdet.evaluate import evaluate

    data = make_split_folders(tmp_path / "data", {"train": 2, "val": 2, "test": 6})
    src = save_artifact(_artifact(temperature=1.0), tmp_path / "m.fracdet")
    plain = evaluate(data, src, out_dir=tmp_path / "plain", n_resamples=20)
    tta = evaluate(data, src, out_dir=tmp_path / "tta", n_resamples=20, tta=True)
    assert tta.metrics["tta"] and not plain.metrics["tta"] and tta.metrics["n"] == plain.metrics["n"] == 12
    p0 = [float(r["probability"]) for r in csv.DictReader(open(tmp_path / "plain" / "predictions.csv"))]
    p1 = [float(r["probability"]) for r in csv.DictReader(open(tmp_path / "tta" / "predictions.csv"))]
    assert not np.allclose(p0, p1) and all(0 < p < 1 for p in p1)
    assert "ece_before" in tta.metrics["calibration"]  # TTA's logit is the views' raw mean logit

"""Calibration maps beyond temperature: Platt, beta, isotonic — fitting, choosing out of fold,
storing in (and refusing from) the model file, and applying them in the Predictor."""

import io
import json
import zipfile

import numpy as np
import pytest

from fracdet.calibration import (apply_calibration, check_calibration, expected_calibration_error, fit_beta,
                                 fit_platt, fit_temperature)
from fracdet.recalibrate import calibrate_from_logits, choose_calibration, fit_calibration


def shifted(n: int = 2000, shift: float = -1.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose true probability is σ(z + shift): a bias no temperature can remove."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.5, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(z + shift)))).astype(int)
    return z, y


def test_platt_removes_a_shift_that_temperature_cannot():
    z, y = shifted()
    platt = fit_platt(z, y)
    assert platt["params"]["a"] == pytest.approx(1.0, abs=0.15)
    assert platt["params"]["b"] == pytest.approx(-1.5, abs=0.2)
    ece_t = expected_calibration_error(apply_calibration(z, fit_temperature(z, y)), y)
    ece_p = expected_calibration_error(apply_calibration(z, platt), y)
    assert ece_p < 0.03 < ece_t


def test_beta_with_equal_shapes_is_platt_and_isotonic_is_interp():
    z = np.linspace(-4, 4, 9)
    beta = {"method": "beta", "params": {"a": 0.7, "b": 0.7, "c": -0.3}}
    platt = {"method": "platt", "params": {"a": 0.7, "b": -0.3}}
    np.testing.assert_allclose(apply_calibration(z, beta), apply_calibration(z, platt), atol=1e-6)
    iso = {"method": "isotonic", "params": {"x": [-1.0, 0.0, 2.0], "y": [0.1, 0.5, 0.9]}}
    np.testing.assert_allclose(apply_calibration(np.array([-5, -1, -0.5, 1, 9]), iso), [0.1, 0.1, 0.3, 0.7, 0.9],
                               atol=1e-6)
    z2, y2 = shifted(500, seed=3)
    fitted = fit_beta(z2, y2)
    assert fitted["params"]["a"] >= 0 and fitted["params"]["b"] >= 0


def test_isotonic_fit_matches_sklearn_and_stays_monotone():
    from sklearn.isotonic import IsotonicRegression

    z, y = shifted(800, seed=1)
    spec = check_calibration(fit_calibration("isotonic", z, y))
    ref = IsotonicRegression(y_min=1e-3, y_max=1 - 1e-3, out_of_bounds="clip").fit(z, y)
    grid = np.linspace(-6, 6, 301)
    np.testing.assert_allclose(apply_calibration(grid, spec), ref.predict(grid), atol=1e-5)
    assert np.all(np.diff(apply_calibration(grid, spec)) >= 0)


def test_auto_choice_is_out_of_fold_and_beats_temperature_on_a_shift():
    z, y = shifted(600, seed=2)
    spec, how = choose_calibration(z, y)
    assert how["method"] in ("platt", "beta", "isotonic") and spec["method"] == how["method"]
    table = how["out_of_fold"]
    assert set(table) == {"none", "temperature", "platt", "beta", "isotonic"}
    assert table[spec["method"]]["logloss"] == min(v["logloss"] for k, v in table.items() if k != "none")
    assert how["oof_ece_after"] < how["oof_ece_before"]
    given, how2 = choose_calibration(z, y, method="temperature")
    assert given["method"] == "temperature" and how2["chosen_by"] == "given"
    one_class, how3 = choose_calibration(z[y == 1], y[y == 1])
    assert one_class == {"method": "temperature", "params": {"temperature": 1.0}}


@pytest.mark.parametrize("bad", [
    {"method": "magic", "params": {}},
    {"method": "platt", "params": {"a": 1.0}},
    {"method": "platt", "params": {"a": -1.0, "b": 0.0}},
    {"method": "platt", "params": {"a": float("nan"), "b": 0.0}},
    {"method": "beta", "params": {"a": 1, "b": 1, "c": True}},
    {"method": "isotonic", "params": {"x": [0.0, 0.0], "y": [0.1, 0.2]}},
    {"method": "isotonic", "params": {"x": [0.0, 1.0], "y": [0.5, 0.2]}},
    {"method": "isotonic", "params": {"x": [0.0, 1.0], "y": [0.5, 1.5]}},
    {"method": "isotonic", "params": {"x": [0.0], "y": [0.5]}},
    {"method": "temperature", "params": {"temperature": 0}},
    {"method": "platt", "params": {"a": 10 ** 400, "b": 0}},
    ["platt"],
])
def test_bad_specs_are_refused(bad):
    with pytest.raises((ValueError, OverflowError)):
        check_calibration(bad)


def _rewrite_meta(path, change):
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(members["fracdet.json"])
    change(meta)
    members["fracdet.json"] = json.dumps(meta).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    path.write_bytes(buf.getvalue())


def test_artifact_stores_applies_and_validates_the_map(tmp_path):
    from synth import tiny_model_file, xray_array

    from fracdet.artifact import load_artifact, save_artifact
    from fracdet.errors import ArtifactError
    from fracdet.inference import Predictor

    path = tiny_model_file(tmp_path, temperature=1.3)
    old = load_artifact(path)  # a temperature-only file: format 3, the temperature in use
    assert old.calibration_in_use() == {"method": "temperature", "params": {"temperature": 1.3}}
    with zipfile.ZipFile(path) as z:
        assert json.loads(z.read("fracdet.json"))["format_version"] == 3

    z, y = shifted(300, seed=4)
    summary = calibrate_from_logits(old, z, y, method="platt")
    assert summary["method"] == "platt" and old.temperature == 1.0
    assert 0 <= old.doubt_threshold <= old.threshold <= old.fracture_threshold <= 1
    out = save_artifact(old, tmp_path / "platt.fracdet")
    with zipfile.ZipFile(out) as zf:
        assert json.loads(zf.read("fracdet.json"))["format_version"] == 4
    art = load_artifact(out)
    assert art.calibration == old.calibration
    pred = Predictor(art).predict(xray_array(True, seed=0) / np.float32(255))
    a, b = art.calibration["params"]["a"], art.calibration["params"]["b"]
    assert pred.probability == pytest.approx(1 / (1 + np.exp(-(a * pred.logit + b))), abs=1e-5)

    _rewrite_meta(out, lambda m: m.update(calibration={"method": "isotonic", "params": {"x": [1, 0], "y": [0, 1]}}))
    with pytest.raises(ArtifactError, match="invalid model file: isotonic"):
        load_artifact(out)
    _rewrite_meta(out, lambda m: m.update(calibration="platt"))
    with pytest.raises(ArtifactError, match="calibration must be a mapping"):
        load_artifact(out)


def test_dicom_sr_names_the_calibration_in_ascii(tmp_path):
    pytest.importorskip("highdicom")
    from synth import tiny_model_file

    from fracdet.artifact import load_artifact
    from fracdet.dicomnode.results import _calibration_text

    art = load_artifact(tiny_model_file(tmp_path, temperature=1.3))
    assert _calibration_text(art) == "calibration=temperature temperature=1.3"
    art.set_calibration({"method": "beta", "params": {"a": 1.125315, "b": 0.4452, "c": -0.37198}})
    assert _calibration_text(art) == "calibration=beta a=1.125 b=0.4452 c=-0.372"
    art.set_calibration({"method": "isotonic", "params": {"x": [0.0, 1.0, 2.0], "y": [0.1, 0.2, 0.9]}})
    text = _calibration_text(art)
    assert text == "calibration=isotonic, 3 breakpoints" and text.isascii() and len(text) <= 64

"""The model shipped in the package: present, self-describing, and as good as its card says."""

from pathlib import Path

import pytest

from fracdet.artifact import default_model_path, load_artifact
from fracdet.predict import load_model
from synth import fracatlas_root

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"


def test_default_model_ships_and_describes_itself():
    path = default_model_path()
    assert path.is_file(), "the package must ship src/fracdet/weights/default.fracdet"
    assert path.stat().st_size < 15_000_000
    art = load_artifact()
    assert art.architecture == "efficientnet_lite0"
    assert art.labels == ["not fractured", "fractured"]
    assert 0 < art.threshold < 1 and art.temperature > 0
    assert art.training["pretrained"] is True and art.data["layout"] == "fracatlas"
    for split in ("val", "test"):
        assert art.metrics[split]["roc_auc"] > 0.7


def test_default_model_predicts_the_samples():
    model = load_model()
    rows = list(model.predict_paths([SAMPLES]))
    assert len(rows) == 8 and all(r.ok for r in rows)
    assert all(0.0 <= r.probability <= 1.0 for r in rows)
    # folder names are FracAtlas' labels: fractured samples must score higher on average
    frac = [r.probability for r in rows if "/fractured/" in r.path]
    normal = [r.probability for r in rows if "/not_fractured/" in r.path]
    assert sum(frac) / len(frac) > sum(normal) / len(normal)


@pytest.mark.slow
@pytest.mark.skipif(fracatlas_root() is None, reason="FracAtlas data not present")
def test_default_model_test_split_auroc_matches_its_card(tmp_path):
    from fracdet.evaluate import evaluate

    art = load_artifact()
    result = evaluate(fracatlas_root(), out_dir=tmp_path)
    assert "re-derived with the training seed" in result.split_note
    assert result.metrics["n"] == art.metrics["test"]["n"]
    assert result.metrics["roc_auc"] == pytest.approx(art.metrics["test"]["roc_auc"], abs=0.01)


@pytest.mark.slow
@pytest.mark.skipif(fracatlas_root() is None, reason="FracAtlas data not present")
def test_default_model_int8_drift_matches_its_card():
    """The int8 numbers in the card are re-measured here, and decide the auto backend."""
    from fracdet.data.layouts import load_dataset
    from fracdet.evaluate import select_samples
    from fracdet.export import onnx_bytes
    from fracdet.predict import choose_backend
    from fracdet.quantize import compare_int8, within_tolerance
    from fracdet.transforms import build_transforms

    art = load_artifact()
    assert art.int8_onnx is not None
    val, _ = select_samples(load_dataset(fracatlas_root()), "val", art.training, art.data)
    got = compare_int8(onnx_bytes(art.build_model(), art.preprocess.input_size), art.int8_onnx, val,
                       build_transforms(art.preprocess), art.temperature, art.threshold)
    stored = art.int8["check"]
    assert got["n"] == stored["n"]
    assert got["mean_abs_diff"] == pytest.approx(stored["mean_abs_diff"], abs=0.01)
    assert within_tolerance(got)[0] == art.int8["accepted"]
    assert choose_backend("auto", art) == ("int8" if art.int8["accepted"] else "onnx")

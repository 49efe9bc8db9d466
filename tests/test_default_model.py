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

"""Ensembles: one artifact, fused probability = weighted sum, weights given or fitted."""

import json

import numpy as np
import pytest
import torch

from fracdet.artifact import ModelArtifact, load_artifact, save_artifact
from fracdet.cli import main
from fracdet.errors import FracdetError
from fracdet.evaluate import evaluate
from fracdet.models import create_model
from fracdet.ensembling import fit_ensemble
from fracdet.models.ensemble import EnsembleNet, build_ensemble, fit_weights, parse_weights
from fracdet.inference import Predictor
from fracdet.transforms import PreprocessSpec
from synth import make_split_folders, write_image, xray_array


def _member(tmp_path, seed, size=48, mean=0.5, temperature=1.5, threshold=0.5):
    torch.manual_seed(seed)
    model = create_model("simple_cnn", pretrained=False, head_hidden=16, dropout=0.1).eval()
    art = ModelArtifact(architecture="simple_cnn", state_dict=model.state_dict(),
                        preprocess=PreprocessSpec(input_size=size, mean=(mean,) * 3, std=(0.25,) * 3),
                        model_config={"head_hidden": 16, "dropout": 0.1}, temperature=temperature,
                        threshold=threshold, training={"seed": 7})
    return save_artifact(art, tmp_path / f"m{seed}.fracdet", half=False)


@pytest.fixture()
def members(tmp_path):
    return [_member(tmp_path, 1, mean=0.5, temperature=1.5, threshold=0.4),
            _member(tmp_path, 2, mean=0.3, temperature=0.7, threshold=0.6)]


def test_ensemble_round_trips_and_equals_weighted_sum(tmp_path, members):
    arts = [load_artifact(p) for p in members]
    ens = build_ensemble(arts, [3, 1], [str(p) for p in members])
    path = save_artifact(ens, tmp_path / "ens.fracdet", half=False)
    loaded = load_artifact(path)
    assert loaded.kind == "ensemble" and loaded.architecture == "ensemble"
    assert loaded.model_config["weights"] == [0.75, 0.25]
    assert np.isclose(loaded.threshold, 0.75 * 0.4 + 0.25 * 0.6)
    assert isinstance(loaded.build_model(), EnsembleNet)
    images = [xray_array(False, seed=0, size=(120, 100)) / np.float32(255),  # assessable films, not noise
              xray_array(True, seed=1, size=(100, 160)) / np.float32(255)]
    for img in images:
        fused = Predictor(loaded).predict(img).probability
        parts = [Predictor(a).predict(img).probability for a in arts]
        assert np.isclose(fused, 0.75 * parts[0] + 0.25 * parts[1], atol=1e-5)
    # a float16 ensemble file stays close
    half = load_artifact(save_artifact(ens, tmp_path / "ens16.fracdet"))
    assert np.isclose(Predictor(half).predict(images[0]).probability,
                      Predictor(loaded).predict(images[0]).probability, atol=2e-2)


def test_members_with_different_input_sizes(tmp_path):
    arts = [load_artifact(_member(tmp_path, 1, size=48)), load_artifact(_member(tmp_path, 2, size=32, mean=0.4))]
    ens = build_ensemble(arts, [0.5, 0.5])
    assert ens.preprocess.input_size == 48 and ens.preprocess.mean == (0.0, 0.0, 0.0)
    img = xray_array(True, seed=1, size=(96, 96)) / np.float32(255)  # square: letterboxes agree
    fused = Predictor(ens).predict(img).probability
    parts = [Predictor(a).predict(img).probability for a in arts]
    assert np.isclose(fused, 0.5 * sum(parts), atol=2e-3)


def test_ensemble_refusals(tmp_path, members):
    arts = [load_artifact(p) for p in members]
    with pytest.raises(FracdetError, match="at least two"):
        build_ensemble(arts[:1])
    with pytest.raises(FracdetError, match="weights"):
        build_ensemble(arts, [1, -1])
    ens = build_ensemble(arts)
    with pytest.raises(FracdetError, match="itself an ensemble"):
        build_ensemble([ens, arts[0]])
    arts[1].preprocess.resize = "stretch"
    with pytest.raises(FracdetError, match="resize mode"):
        build_ensemble(arts)


def test_fit_weights_prefers_the_informative_member():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.4).astype(int)
    good = 1 / (1 + np.exp(-(rng.normal(0, 1, 400) + 2 * (2 * y - 1))))
    noise = rng.random(400)
    P = np.c_[noise, good]
    w = fit_weights(P, y, "auroc")
    assert np.isclose(sum(w), 1) and w[1] > 0.8
    w2 = fit_weights(P, y, "logloss")
    assert np.isclose(sum(w2), 1) and w2[1] > 0.8
    # three members, with Dirichlet search for four
    assert fit_weights(np.c_[noise, good, noise], y)[1] > 0.8
    assert fit_weights(np.c_[noise, good, noise, noise], y)[1] > 0.7


def test_parse_weights(tmp_path):
    assert parse_weights("0.6, 0.4", 2) == [0.6, 0.4]
    (tmp_path / "meta.json").write_text(json.dumps({"weights": {"a": 0.3, "b": 0.7}}))
    assert parse_weights(str(tmp_path / "meta.json"), 2, ["x/a.fracdet", "y/b.fracdet"]) == [0.3, 0.7]
    (tmp_path / "meta2.json").write_text(json.dumps({"members": [{"weight": 2}, {"weight": 1}]}))
    assert parse_weights(str(tmp_path / "meta2.json"), 2) == [2.0, 1.0]
    with pytest.raises(FracdetError, match="2 weight"):
        parse_weights("1,2,3", 2)


def test_fit_ensemble_on_validation_data_and_use_everywhere(tmp_path, members):
    data = make_split_folders(tmp_path / "data", {"train": 2, "val": 12, "test": 6})
    arts = [load_artifact(p) for p in members]
    ens, summary = fit_ensemble(arts, [str(p) for p in members], data=data)
    assert summary["n"] == 24 and len(summary["val_auroc_members"]) == 2
    assert summary["val_auroc_ensemble"] >= max(summary["val_auroc_members"]) - 1e-9  # the grid contains (1,0),(0,1)
    assert "validation" in ens.metrics["calibration"]["fitted_on"] or "val" in ens.metrics["calibration"]["fitted_on"]
    path = save_artifact(ens, tmp_path / "ens.fracdet")
    # evaluate, predict (CLI), TTA and calibrate all take it like a single model
    r = evaluate(data, path, out_dir=tmp_path / "ev", n_resamples=50)
    assert r.metrics["n"] == 12 and (tmp_path / "ev" / "report.html").is_file()
    write_image(tmp_path / "imgs" / "a.png", True, 3)
    assert main(["predict", str(tmp_path / "imgs"), "--model", str(path), "--quiet", "--tta"]) == 0
    assert main(["calibrate", str(data), "--model", str(path), "--out", str(tmp_path / "ens2.fracdet")]) == 0
    assert load_artifact(tmp_path / "ens2.fracdet").kind == "ensemble"


def test_ensemble_cli(tmp_path, members, capsys):
    data = make_split_folders(tmp_path / "data", {"train": 2, "val": 8, "test": 2})
    out = tmp_path / "ens.fracdet"
    assert main(["ensemble", *map(str, members), "--out", str(out), "--weights", "0.7,0.3"]) == 0
    assert load_artifact(out).model_config["weights"] == pytest.approx([0.7, 0.3])
    assert main(["ensemble", *map(str, members), "--out", str(out), "--data", str(data), "--fit", "logloss",
                 "--target-specificity", "0.9"]) == 0
    art = load_artifact(out)
    assert "specificity ≥ 0.9" in art.threshold_rule and "log-loss" in art.threshold_rule
    card = (tmp_path / "ens.model_card.md").read_text()
    assert "## Ensemble" in card and "Not a medical device" in card
    assert main(["ensemble", str(members[0]), "--out", str(out)]) == 2
    assert "validation AUROC" in capsys.readouterr().out


def test_grad_cam_sees_members(members):
    """The explain module's contract: ``members`` modules taking the ensemble input, ``weights``."""
    net = build_ensemble([load_artifact(p) for p in members], [1, 3]).build_model()
    assert net.weights == [0.25, 0.75]
    x = torch.rand(1, 3, 48, 48)
    for m in net.members:
        assert m.get_submodule(m.cam_layer) is not None
        assert m(x).shape == (1,)


def test_members_must_share_one_split(members):
    from fracdet.artifact import load_artifact
    from fracdet.errors import FracdetError

    a, b = (load_artifact(p) for p in members)
    a.split_csv = b"path,label,group,split,region\nx.png,1,,train,\ny.png,0,,test,\n"
    b.split_csv = b"path,label,group,split,region\nx.png,1,,test,\ny.png,0,,train,\n"
    with pytest.raises(FracdetError, match="different splits"):
        build_ensemble([a, b])
    b.split_csv = a.split_csv
    assert build_ensemble([a, b]).recorded_split() == {"x.png": "train", "y.png": "test"}


def test_members_keep_their_own_calibration_maps(tmp_path):
    """Members calibrated with Platt, beta and isotonic maps: the fused probability is the weighted
    sum of each member's own calibrated probability, in PyTorch and in the exported graph."""
    maps = [{"method": "platt", "params": {"a": 0.8, "b": -1.2}},
            {"method": "beta", "params": {"a": 1.3, "b": 0.4, "c": -0.5}},
            {"method": "isotonic", "params": {"x": [-2.0, -0.5, 0.0, 1.5], "y": [0.02, 0.1, 0.4, 0.9]}}]
    arts = []
    for i, spec in enumerate(maps, 1):
        art = load_artifact(_member(tmp_path, i, mean=0.3 + 0.1 * i))
        art.set_calibration(spec)
        arts.append(load_artifact(save_artifact(art, tmp_path / f"cal{i}.fracdet", half=False)))
    ens = load_artifact(save_artifact(build_ensemble(arts, [2, 1, 1]), tmp_path / "ens.fracdet", half=False))
    assert [m["calibration"]["method"] for m in ens.model_config["members"]] == ["platt", "beta", "isotonic"]
    for seed in (0, 1):
        img = xray_array(bool(seed), seed=seed) / np.float32(255)
        parts = [Predictor(a, backend="onnx").predict(img).probability for a in arts]
        want = 0.5 * parts[0] + 0.25 * parts[1] + 0.25 * parts[2]
        assert Predictor(ens, backend="onnx").predict(img).probability == pytest.approx(want, abs=1e-5)
        assert Predictor(ens, backend="torch").predict(img).probability == pytest.approx(want, abs=1e-5)
    bad = dict(ens.model_config)
    bad["members"] = [dict(bad["members"][0], calibration={"method": "platt", "params": {"a": -1, "b": 0}})]
    with pytest.raises(FracdetError, match="invalid ensemble member calibration"):
        EnsembleNet.from_config({**bad, "weights": [1.0]})

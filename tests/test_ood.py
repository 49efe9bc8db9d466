"""Out-of-distribution refusal: the image checks, the feature reference, the artifact's ood.npz
(validated on load), the one decision path (not assessable rows, studies, writer, CLI), and
the shipped model end to end on wrong images and a real film (fracdet.inference.assess)."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synth import fracatlas_root, tiny_model_file, xray_array

ROOT = Path(__file__).resolve().parents[1]
FILM = ROOT / "samples" / "fractured" / "IMG0000352.jpg"
FILM2 = ROOT / "samples" / "not_fractured" / "IMG0000048.jpg"


def _xray(seed: int = 0, size=(256, 200)) -> np.ndarray:
    return xray_array(False, seed, size).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------- image checks


def test_image_checks_give_a_reason_for_each_kind():
    from fracdet.io.quality import image_problem

    rng = np.random.default_rng(0)
    assert image_problem(_xray()) is None
    assert "blank" in image_problem(np.full((300, 300), 0.5, np.float32))
    assert "blank" in image_problem(0.5 + rng.normal(0, 0.003, (300, 300)).astype(np.float32))
    assert "noise" in image_problem(rng.uniform(0, 1, (300, 300)).astype(np.float32))
    assert "noise" in image_problem(np.where(rng.uniform(size=(300, 300)) < 0.5, 0.0, 1.0).astype(np.float32))
    assert "too small" in image_problem(_xray(size=(40, 40)))
    assert "too small" in image_problem(_xray(), {"original_size": (50, 400)})
    assert "colour" in image_problem(_xray(), {"colour_fraction": 0.4})
    assert image_problem(_xray(), {"colour_fraction": 0.0}) is None
    assert "body part CHEST" in image_problem(_xray(), {"body_part": "chest"})
    assert image_problem(_xray(), {"body_part": "HAND"}) is None


def test_readers_measure_colour_before_luminance(tmp_path):
    from fracdet.io.images import read_image

    yy, xx = np.mgrid[0:200, 0:240] / 240.0
    colour = (np.stack([xx, yy, 1 - xx], axis=-1) * 255).astype(np.uint8)
    grey = np.repeat((xray_array(False, 1, (200, 240)))[..., None], 3, axis=-1)
    Image.fromarray(colour).save(tmp_path / "c.png")
    Image.fromarray(colour).save(tmp_path / "c.jpg", quality=95)
    Image.fromarray(colour).convert("CMYK").save(tmp_path / "c-cmyk.jpg")
    Image.fromarray(grey).save(tmp_path / "g.jpg", quality=95)
    Image.fromarray(grey[..., 0]).save(tmp_path / "l.png")
    for name in ("c.png", "c.jpg", "c-cmyk.jpg"):
        for min_size in (None, 64):  # 64: the JPEG luminance-only fast path
            assert read_image(tmp_path / name, min_size=min_size).meta["colour_fraction"] > 0.5, name
    assert read_image(tmp_path / "g.jpg", min_size=64).meta["colour_fraction"] < 0.01
    assert read_image(tmp_path / "g.jpg").meta["colour_fraction"] < 0.01
    assert "colour_fraction" not in read_image(tmp_path / "l.png").meta
    # the luminance is unchanged by the measurement
    lum = read_image(tmp_path / "c.png").pixels
    expect = (colour.astype(np.float32) / 255.0) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.allclose(lum, expect, atol=1e-5)


# ----------------------------------------------------------------------------- the reference


def _features(seed: int, n: int, c: int = 24, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(c, c)) / np.sqrt(c)
    return (rng.normal(size=(n, c)) @ mix + shift).astype(np.float32)


def test_reference_separates_far_features_and_inverted_ones():
    from fracdet.ood_fit import fit_reference

    train, val = _features(0, 400), _features(1, 200)
    ref, info = fit_reference(train, val, _features(2, 400, shift=3.0))
    assert info["val_refused"] <= 0.01
    assert np.mean(ref.distance(_features(3, 200)) > ref.threshold) < 0.05  # new films of the same kind
    assert np.all(ref.distance(_features(4, 50, shift=6.0)) > ref.threshold)  # far away
    assert np.mean(ref.inverted_probability(_features(5, 100, shift=3.0)) > 0.9) > 0.95
    assert np.mean(ref.inverted_probability(_features(6, 100)) < 0.5) > 0.95
    assert np.isinf(ref.distance(np.full((1, 24), np.nan, np.float32)))[0]


def _arrays(c: int = 8) -> dict[str, np.ndarray]:
    return {"mean": np.zeros(c, np.float32), "whiten": np.eye(c, dtype=np.float32),
            "threshold": np.array([3.0], np.float32), "invert_w": np.zeros(c, np.float32),
            "invert_b": np.array([-5.0], np.float32)}


@pytest.mark.parametrize("change, message", [
    (lambda a: a.__setitem__("mean", np.full(8, np.nan, np.float32)), "mean is not finite"),
    (lambda a: a.__setitem__("whiten", np.eye(8, 9, dtype=np.float32)), "whiten has shape"),
    (lambda a: a.__setitem__("invert_w", np.zeros(7, np.float32)), "invert_w has shape"),
    (lambda a: a.__setitem__("threshold", np.array([-1.0], np.float32)), "threshold"),
    (lambda a: a.__setitem__("threshold", np.array([1, 2], np.float32)), "threshold has shape"),
    (lambda a: a.__setitem__("mean", np.zeros(8, np.int64)), "dtype"),
    (lambda a: a.pop("invert_b"), "keys"),
    (lambda a: a.__setitem__("extra", np.zeros(1, np.float32)), "keys"),
])
def test_reference_arrays_are_validated(change, message):
    from fracdet.ood import reference_from_arrays

    arrays = _arrays()
    reference_from_arrays(arrays)
    change(arrays)
    with pytest.raises(ValueError, match=message):
        reference_from_arrays(arrays)


# ----------------------------------------------------------------------------- artifact and predictor


def _with_reference(path: Path, out: Path, threshold: float, invert_b: float = -50.0) -> Path:
    """The tiny model with a hand-set reference (identity whitening at the origin)."""
    from fracdet.artifact import load_artifact, save_artifact
    from fracdet.inference.onnx import OnnxRunner
    from fracdet.ood import OodReference

    art = load_artifact(path)
    c = OnnxRunner(art.onnx).output_width("features")
    assert c, "the exported graph gives a features output"
    ref = OodReference(mean=np.zeros(c, np.float32), whiten=np.eye(c, dtype=np.float32), threshold=threshold,
                       invert_w=np.zeros(c, np.float32), invert_b=invert_b)
    art.set_ood(ref, {"method": "test", "threshold": threshold})
    return save_artifact(art, out)


def _tamper(path: Path, out: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Replace ood.npz and fix the recorded SHA-256 (so only the content check can catch it)."""
    import hashlib

    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    members["ood.npz"] = buf.getvalue()
    meta = json.loads(members["fracdet.json"])
    meta["members"]["ood.npz"] = hashlib.sha256(members["ood.npz"]).hexdigest()
    members["fracdet.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(out, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("tiny"))


def test_artifact_keeps_and_validates_its_reference(tiny, tmp_path):
    from fracdet.artifact import load_artifact
    from fracdet.cli import main
    from fracdet.errors import ArtifactError

    assert load_artifact(tiny).ood_reference() is None  # older files: no reference, still load
    m = _with_reference(tiny, tmp_path / "ood.fracdet", threshold=7.5)
    art = load_artifact(m)
    assert art.ood_reference().threshold == pytest.approx(7.5) and art.describe()["ood"]["method"] == "test"
    arrays = {k: np.asarray(v) for k, v in art.ood_arrays.items()}
    bad = dict(arrays, whiten=np.where(np.eye(len(arrays["mean"])) > 0, np.inf, 0).astype(np.float32))
    tampered = _tamper(m, tmp_path / "bad.fracdet", bad)
    with pytest.raises(ArtifactError, match=r"bad\.fracdet: invalid model file: ood\.npz: OOD whiten is not finite"):
        load_artifact(tampered)
    short = _tamper(m, tmp_path / "short.fracdet", dict(arrays, mean=arrays["mean"][:-1]))
    with pytest.raises(ArtifactError, match="ood.npz"):
        load_artifact(short)
    assert main(["info", "--model", str(tampered)]) != 0


def test_predictor_refuses_corrects_and_passes_by_the_reference(tiny, tmp_path):
    from fracdet.inference import Predictor, load_model
    from fracdet.inference.assess import INVERTED_WARNING

    img = _xray(3)
    strict = load_model(_with_reference(tiny, tmp_path / "strict.fracdet", threshold=1e-6), threads=1)
    p = strict.predict(img)
    assert not p.assessable and p.ok and p.verdict == "not assessable" and p.probability is None
    assert p.label is None and "unlike the films" in p.reason
    lax = load_model(_with_reference(tiny, tmp_path / "lax.fracdet", threshold=1e9), threads=1)
    q = lax.predict(img)
    assert q.assessable and q.probability is not None and q.reason is None and q.warning is None
    off = Predictor(strict.artifact, threads=1, assess=False)
    assert off.predict(img).probability == pytest.approx(q.probability, abs=1e-6)
    # a film called inverted with certainty is judged on its positive, with a warning
    flip = load_model(_with_reference(tiny, tmp_path / "flip.fracdet", threshold=1e9, invert_b=50.0), threads=1)
    r = flip.predict(1.0 - img)
    assert r.assessable and r.warning == INVERTED_WARNING
    assert r.probability == pytest.approx(q.probability, abs=1e-4)
    # the same in batches, with wrong images between the films: order kept, one pass per batch
    Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / "film.png")
    Image.fromarray(np.full((200, 200), 128, np.uint8)).save(tmp_path / "blank.png")
    rows = list(lax.predict_paths([tmp_path / "film.png", tmp_path / "blank.png", tmp_path / "film.png"],
                                  batch_size=2))
    assert [r.verdict == "not assessable" for r in rows] == [False, True, False]
    assert "blank" in rows[1].reason and rows[1].error is None


def test_studies_writer_and_cli_show_not_assessable(tiny, tmp_path, capsys):
    from fracdet.cli import main
    from fracdet.inference import group_by_study
    from fracdet.inference.prediction import Prediction
    from fracdet.inference.writer import PredictionWriter
    from fracdet.operating import Decision

    rule = Decision(threshold=0.5, doubt_threshold=0.3, fracture_threshold=0.7)
    judged = Prediction("a.png", 0.8, "fractured", 0.5, logit=1.0, meta={"study_uid": "S1"}, verdict="fracture")
    refused = Prediction.not_assessable("b.png", "blank or near-uniform image", 0.5, {"study_uid": "S1"})
    alone = Prediction.not_assessable("c.png", "noise, not a radiograph", 0.5, {"study_uid": "S2"})
    s1, s2 = group_by_study([judged, refused, alone], decision=rule)
    assert s1.verdict == "fracture" and s1.probability == 0.8 and s1.n_views == 1
    assert "b.png: not assessable" in s1.to_row()["warning"]
    assert s2.verdict == "not assessable" and s2.probability is None and s2.error is None
    assert "noise" in s2.reason
    with PredictionWriter(tmp_path / "rows.csv") as w:
        for p in (judged, refused):
            w.add(p)
    rows = list(csv.DictReader(open(tmp_path / "rows.csv")))
    assert rows[1]["verdict"] == "not assessable" and rows[1]["reason"] == "blank or near-uniform image"
    assert rows[1]["probability"] == "" and rows[1]["label"] == ""

    m = _with_reference(tiny, tmp_path / "lax.fracdet", threshold=1e9)
    Image.fromarray(np.full((200, 200), 128, np.uint8)).save(tmp_path / "blank.png")
    Image.fromarray(xray_array(False, 4, (200, 160))).save(tmp_path / "film.png")
    out = tmp_path / "out.json"
    assert main(["predict", str(tmp_path / "blank.png"), str(tmp_path / "film.png"), "--model", str(m),
                 "--out", str(out), "--quiet"]) == 0
    got = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    assert got["blank.png"]["verdict"] == "not assessable" and "blank" in got["blank.png"]["reason"]
    assert got["film.png"]["probability"] is not None
    assert "1 of 2 image(s) not assessable" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "blank.png"), "--model", str(m), "--out", str(out), "--quiet",
                 "--no-ood"]) == 0
    assert json.loads(out.read_text())[0]["probability"] is not None


# ----------------------------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def shipped():
    from fracdet.inference import load_model

    predictor = load_model(threads=1)
    assert predictor.artifact.ood_reference() is not None, "the shipped model carries its OOD reference"
    assert predictor.assessor is not None and predictor.assessor.reference is not None
    return predictor


def _wrong_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:300, 0:400] / 400.0
    photo = np.stack([0.5 + 0.4 * np.sin(9 * xx), 0.5 + 0.4 * np.cos(7 * yy), xx * yy], axis=-1)
    items = {
        "blank.png": np.full((300, 400), 140, np.uint8),
        "colour-noise.png": rng.integers(0, 256, (300, 400, 3), dtype=np.uint8),
        "colour-gradient.png": (np.stack([xx, yy, 1 - xx], axis=-1) * 255).astype(np.uint8),
    }
    out = []
    for name, a in items.items():
        Image.fromarray(a).save(folder / name)
        out.append(folder / name)
    Image.fromarray((photo * 255).astype(np.uint8)).convert("CMYK").save(folder / "photo-cmyk.jpg")
    return out + [folder / "photo-cmyk.jpg"]


def test_shipped_model_refuses_wrong_images_and_judges_films(shipped, tmp_path):
    wrong = _wrong_images(tmp_path)
    rows = list(shipped.predict_paths(wrong + [FILM, FILM2], batch_size=4))
    by = {Path(r.path).name: r for r in rows}
    for p in wrong:
        r = by[p.name]
        assert r.ok and r.verdict == "not assessable" and r.probability is None and r.label is None, (p.name, r)
        assert r.reason
    for film in (FILM, FILM2):
        r = by[film.name]
        assert r.assessable and r.verdict in ("fracture", "doubt", "no fracture") and r.reason is None
    single = shipped.predict(wrong[0])
    assert single.verdict == "not assessable"


def test_shipped_model_detects_an_inverted_film(shipped, tmp_path):
    from fracdet.inference.assess import INVERTED_WARNING
    from fracdet.io.images import read_image

    for film in (FILM, FILM2):
        up = shipped.predict(film)
        x = read_image(film)
        path = tmp_path / f"{film.stem}-negative.png"
        Image.fromarray(((1.0 - x.pixels) * 255 + 0.5).astype(np.uint8)).save(path)
        neg = shipped.predict(path)
        if neg.assessable:  # corrected: judged on its positive
            assert neg.warning == INVERTED_WARNING and neg.probability == pytest.approx(up.probability, abs=0.05)
        else:
            assert neg.verdict == "not assessable" and "inverted" in (neg.reason or ""), neg


def test_api_shows_verdict_and_reason(shipped, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fracdet.serve.api import create_app
    from fracdet.serve.settings import Settings

    wrong = _wrong_images(tmp_path)
    client = TestClient(create_app(shipped, Settings(db_url=f"sqlite:///{tmp_path / 'r.sqlite'}")))
    files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in (wrong[0], FILM)]
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 200, r.text
    preds = {p["file"]: p for p in r.json()["predictions"]}
    assert preds["blank.png"]["verdict"] == "not assessable" and "blank" in preds["blank.png"]["reason"]
    assert preds["blank.png"]["probability"] is None and preds["blank.png"]["id"] is not None
    assert preds[FILM.name]["probability"] is not None and preds[FILM.name]["reason"] is None
    fb = client.post("/v1/feedback", json={"prediction_id": preds["blank.png"]["id"], "verdict": "no fracture"})
    assert fb.status_code == 200 and fb.json()["agrees"] is None


@pytest.mark.skipif(fracatlas_root() is None, reason="FracAtlas is not here")
def test_shipped_model_judges_fracatlas_films(shipped):
    root = fracatlas_root()
    films = sorted((root / "Non_fractured").glob("*.jpg"))[:24]
    rows = list(shipped.predict_paths(films, batch_size=8))
    assert sum(r.assessable for r in rows) >= 23, [(r.path, r.reason) for r in rows if not r.assessable]


def test_fit_ood_command_and_training_fit_the_reference(tiny, tmp_path, capsys):
    """``fracdet fit-ood`` on data with train/val folders (the training split is the reference, the
    validation split the threshold), and the step training ends with, on the tiny model."""
    from fracdet.artifact import load_artifact
    from fracdet.cli import main
    from fracdet.data.layouts import load_dataset
    from fracdet.trainfinish import add_ood
    from synth import make_split_folders

    data = make_split_folders(tmp_path / "data", {"train": 12, "val": 8, "test": 4})
    out = tmp_path / "fitted.fracdet"
    assert main(["fit-ood", str(data), "--model", str(tiny), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "OOD reference on 24 training films" in printed and "16 films" in printed
    art = load_artifact(out)
    ref = art.ood_reference()
    assert ref is not None and art.ood["n_train"] == 24 and art.ood["n_val"] == 16
    assert art.state_dict.keys() == load_artifact(tiny).state_dict.keys() and art.threshold == 0.5
    copy = tmp_path / "run.fracdet"
    copy.write_bytes(tiny.read_bytes())
    trained = add_ood(copy, load_dataset(data))
    assert trained.ood_reference() is not None and load_artifact(copy).ood_reference() is not None


def test_dicom_colour_is_measured_before_luminance():
    """Colour and palette DICOM (read with force) carry their share of coloured pixels, so the
    image checks refuse them; a monochrome radiograph has none."""
    from fracdet.io.dicom import DicomOptions, read_frames
    from fracdet.io.quality import image_problem

    from optional import missing_optional

    try:
        from pydicom.data import get_testdata_file
    except ImportError:  # pragma: no cover - a light install
        missing_optional("pydicom-data not installed (the dev extra)")
    for name in ("OT-PAL-8-face.dcm", "examples_palette.dcm"):
        x = read_frames(Path(get_testdata_file(name)), DicomOptions(force=True))[0]
        assert x.meta["colour_fraction"] > 0.1 and "colour image" in image_problem(x.pixels, x.meta), name
    mono = read_frames(Path(get_testdata_file("RG3_UNCR.dcm")))[0]
    assert "colour_fraction" not in mono.meta


def test_an_ensemble_gets_the_image_checks_only(tiny, tmp_path, caplog):
    """EnsembleNet has no graph_outputs, so its graph gives no features: the image checks still
    refuse a blank image, fit-ood refuses it in one line, and the log says which checks apply."""
    import logging

    from fracdet.artifact import load_artifact, save_artifact
    from fracdet.errors import FracdetError
    from fracdet.inference import Predictor
    from fracdet.models.ensemble import build_ensemble
    from fracdet.ood_fit import ensure_feature_graph

    art = load_artifact(tiny)
    ens = load_artifact(save_artifact(build_ensemble([art, art]), tmp_path / "ens.fracdet"))
    with caplog.at_level(logging.INFO, logger="fracdet.inference.predictor"):
        predictor = Predictor(ens, threads=1)
    assert predictor.assessor is not None and predictor.assessor.reference is None
    assert "image checks only" in caplog.text
    assert predictor.predict(np.full((200, 200), 0.5, np.float32)).verdict == "not assessable"
    assert predictor.predict(_xray(5)).assessable
    with pytest.raises(FracdetError, match="ensemble"):
        ensure_feature_graph(ens)

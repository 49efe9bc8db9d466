"""The record of readings (fracdet.serve.records): migrations, predictions recorded (API and
``record_predictions`` for ``fracdet predict``), feedback, the CSV export that ``fracdet evaluate``
reads, and the agreement statistics. Run on SQLite here; test_records_postgres.py runs the same
tests on a real PostgreSQL server (the ``db_url`` fixture is all that differs)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


@pytest.fixture(scope="module")
def predictor():
    from fracdet.inference import load_model

    return load_model(threads=1)


@pytest.fixture(scope="module")
def sample_predictions(predictor):
    return list(predictor.predict_paths([SAMPLES]))


@pytest.fixture()
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'records.sqlite'}"


def test_migrations_create_the_schema_once(db_url):
    from sqlalchemy import inspect, text

    from fracdet.serve.records import RecordStore

    store = RecordStore(db_url)
    names = set(inspect(store.engine).get_table_names())
    assert {"predictions", "feedback", "alembic_version"} <= names
    with store.engine.connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar() == "0002"
    RecordStore(db_url).close()  # a second open finds it current
    store.close()


def test_migration_0002_keeps_readings_and_records_not_assessable(tmp_path):
    """A database made by revision 0001 (with a reading) is upgraded in place: the reading is
    kept, and a not assessable prediction (no probability or label, a reason) can be recorded."""
    import datetime as dt

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from fracdet.inference.prediction import Prediction
    from fracdet.serve.records import MIGRATIONS, RecordStore, prediction_row

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text("insert into predictions (created_at, source, model_name, model_sha256, probability, label, "
                          "threshold) values (:t, 'cli', 'm', 'abc', 0.7, 'fractured', 0.5)"),
                     {"t": dt.datetime.now(dt.timezone.utc)})
    engine.dispose()
    store = RecordStore(url)
    assert store.prediction(1).probability == 0.7
    refused = Prediction.not_assessable("blank.png", "blank or near-uniform image", 0.5)

    class Model:
        sha256, doubt_threshold, fracture_threshold = "abc", 0.3, 0.7

    [rid] = store.add_predictions([prediction_row(refused, Model(), "m", source="cli", file_name="blank.png",
                                                  source_path=None, input_sha256=None)])
    rec = store.prediction(rid)
    assert rec.probability is None and rec.label is None and rec.verdict == "not assessable"
    assert rec.reason == "blank or near-uniform image"
    assert store.add_feedback(rid, "no fracture")["agrees"] is None
    store.close()


def test_record_predictions_from_files(db_url, predictor, sample_predictions, tmp_path):
    from fracdet.serve.records import open_store, record_predictions

    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    preds = sample_predictions + list(predictor.predict_paths([bad]))
    ids = record_predictions(db_url, preds, predictor, model_name="default.fracdet")
    assert len(ids) == len(sample_predictions) == 8  # the error row is not recorded
    rec = open_store(db_url).prediction(ids[0])
    first = sample_predictions[0]
    assert rec.source == "cli" and rec.file_name == Path(first.path).name
    assert rec.source_path == str(Path(first.path).resolve())
    assert rec.probability == pytest.approx(first.probability) and rec.label == first.label
    assert rec.verdict == first.verdict and rec.threshold == pytest.approx(predictor.threshold)
    assert rec.fracture_threshold == pytest.approx(predictor.fracture_threshold)
    assert rec.model_name == "default.fracdet" and rec.model_sha256 == predictor.artifact.sha256
    import hashlib

    assert rec.input_sha256 == hashlib.sha256(Path(first.path).read_bytes()).hexdigest()
    assert open_store(db_url).count() == 8


def test_feedback_export_is_a_manifest_evaluate_reads(db_url, predictor, sample_predictions, tmp_path):
    from fracdet.data.layouts import load_dataset
    from fracdet.serve.records import export_feedback, open_store, record_predictions

    ids = record_predictions(db_url, sample_predictions, predictor)
    store = open_store(db_url)
    truth = {}
    for pid, pred in zip(ids, sample_predictions):
        fractured = "not_fractured" not in str(pred.path)
        store.add_feedback(pid, "no fracture")  # replaced by the later verdict
        store.add_feedback(pid, "fracture" if fractured else "no fracture", reader="r1")
        truth[str(Path(pred.path).resolve())] = int(fractured)
    with pytest.raises(KeyError):
        store.add_feedback(10_000, "fracture")
    out = tmp_path / "feedback.csv"
    n, name_only = export_feedback(db_url, out)
    assert (n, name_only) == (8, 0)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "group"]
    ds = load_dataset(out)  # the manifest format of fracdet evaluate / calibrate
    assert {str(s.path.resolve()): s.label for s in ds.samples} == truth


def test_agreement_stats(db_url, predictor, sample_predictions):
    from fracdet.serve.records import agreement_stats, open_store, record_predictions

    ids = record_predictions(db_url, sample_predictions, predictor)
    store = open_store(db_url)
    for pid, pred in zip(ids, sample_predictions):
        store.add_feedback(pid, pred.label)  # the reader agrees everywhere...
    store.add_feedback(ids[0], "not fractured" if sample_predictions[0].label == "fractured" else "fractured")
    [s] = agreement_stats(db_url)
    assert s["n"] == 8 and s["agreement"].k == 7
    lo, hi = s["agreement"].wilson()
    assert 0 < lo < 7 / 8 < hi <= 1
    assert s["kappa"] < 1


def test_wilson_interval():
    from fracdet.serve.records import Proportion

    lo, hi = Proportion(81, 263).wilson()  # a textbook example: 0.2553–0.3662
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert Proportion(0, 0).text().startswith("n/a")


def test_records_cli(db_url, predictor, sample_predictions, tmp_path, capsys):
    from fracdet.cli import main
    from fracdet.serve.records import open_store, record_predictions

    ids = record_predictions(db_url, sample_predictions[:2], predictor)
    assert main(["records", "stats", "--db", db_url]) == 0
    assert "none with a reader's verdict" in capsys.readouterr().out
    open_store(db_url).add_feedback(ids[0], "fracture")
    open_store(db_url).add_feedback(ids[1], "no fracture")
    assert main(["records", "stats", "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert "agreement" in out and "95% CI" in out and "sensitivity" in out
    dest = tmp_path / "fb.csv"
    assert main(["records", "export", "--db", db_url, "--out", str(dest)]) == 0
    assert dest.read_text().startswith("path,label,group")


def test_api_records_name_only_export(db_url, predictor, tmp_path, capsys):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fracdet.cli import main
    from fracdet.serve.api import create_app
    from fracdet.serve.settings import Settings

    c = TestClient(create_app(predictor, Settings(db_url=db_url)))
    img = SAMPLES / "fractured" / "IMG0000352.jpg"
    r = c.post("/v1/predict", files=[("files", (img.name, img.read_bytes(), "image/jpeg"))])
    pid = r.json()["predictions"][0]["id"]
    assert c.post("/v1/feedback", json={"prediction_id": pid, "verdict": "fracture"}).status_code == 200
    dest = tmp_path / "fb.csv"
    assert main(["records", "export", "--db", db_url, "--out", str(dest)]) == 0
    assert "only their file name is known" in capsys.readouterr().err
    assert dest.read_text().splitlines()[1] == f"{img.name},fractured,"


def test_records_cli_needs_an_existing_sqlite_file(tmp_path, capsys):
    from fracdet.cli import main

    missing = tmp_path / "none.sqlite"
    assert main(["records", "stats", "--db", f"sqlite:///{missing}"]) == 2
    assert "no record database" in capsys.readouterr().err and not missing.exists()


def test_cli_predict_record_writes_every_readable_file(db_url, tmp_path):
    from fracdet.cli import main
    from fracdet.serve.records import open_store

    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    assert main(["predict", str(SAMPLES / "fractured"), str(bad), "--record", "--db", db_url, "--quiet",
                 "--out", str(tmp_path / "rows.csv")]) == 1  # the bad file is an error row, not a record
    rows = list(csv.DictReader(open(tmp_path / "rows.csv")))
    store = open_store(db_url)
    assert store.count() == 4
    by_name = {Path(r["path"]).name: float(r["probability"]) for r in rows if r["probability"]}
    for rec in (store.prediction(i) for i in range(1, 5)):
        assert abs(rec.probability - by_name[rec.file_name]) < 1e-6 and len(rec.model_sha256) == 64

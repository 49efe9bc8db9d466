"""The REST API (fracdet.serve): every route, every error code, the API key, DICOM uploads, a
multi-view study, hostile uploads (the server keeps serving), records and the access log."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

from serve_helpers import png_bomb, write_dicom  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
FRACTURED = SAMPLES / "fractured" / "IMG0000352.jpg"
NOT_FRACTURED = SAMPLES / "not_fractured" / "IMG0000048.jpg"
KEY = "test-key-123"


@pytest.fixture(scope="module")
def predictor():
    from fracdet.inference import load_model

    return load_model(threads=1)


@pytest.fixture()
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'records.sqlite'}"


def make_client(predictor, db_url, **kw):
    from fracdet.serve.api import create_app
    from fracdet.serve.settings import Settings

    return TestClient(create_app(predictor, Settings(db_url=db_url, **kw)))


@pytest.fixture()
def client(predictor, db_url):
    return make_client(predictor, db_url)


def upload(*paths_or_bytes, name: str | None = None):
    files = []
    for item in paths_or_bytes:
        if isinstance(item, Path):
            files.append(("files", (item.name, item.read_bytes(), "application/octet-stream")))
        else:
            files.append(("files", (name or "upload.jpg", item, "image/jpeg")))
    return files


def assert_error(r, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["status"] == status
    for w in words:
        assert w in body["error"]["message"]
    assert "\n" not in body["error"]["message"]
    return body


# ---------------------------------------------------------------- routes
def test_health_and_model(client, predictor):
    h = client.get("/v1/health").json()
    assert h["status"] == "ok" and h["model_loaded"] is True
    assert h["model"]["sha256"] == predictor.artifact.sha256
    m = client.get("/v1/model").json()
    assert m["architecture"] == predictor.artifact.architecture
    assert m["sha256"] == predictor.artifact.sha256
    ops = m["operating_points"]
    assert ops["doubt_threshold"] <= ops["threshold"] <= ops["fracture_threshold"]
    assert m["data"]["count"] > 0
    assert "ci" in m["metrics"]["test"] and "low" in m["metrics"]["test"]["ci"]["roc_auc"]
    assert "not a medical device" in m["notice"]
    assert client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]


def test_predict_one_and_several_images(client, predictor):
    r = client.post("/v1/predict", files=upload(FRACTURED, NOT_FRACTURED))
    assert r.status_code == 200, r.text
    body = r.json()
    preds = body["predictions"]
    assert [p["file"] for p in preds] == [FRACTURED.name, NOT_FRACTURED.name]
    direct = predictor.predict(FRACTURED)
    p = preds[0]
    assert p["probability"] == pytest.approx(direct.probability, abs=1e-5)
    assert p["label"] == direct.label and p["verdict"] == direct.verdict
    assert p["boxes"] and p["boxes"] == [pytest.approx(list(b), abs=1e-3) for b in direct.boxes]  # its box head's
    assert p["thresholds"] == {"label": pytest.approx(predictor.threshold),
                               "doubt": pytest.approx(predictor.doubt_threshold),
                               "fracture": pytest.approx(predictor.fracture_threshold)}
    assert p["model"] == {"name": "default.fracdet", "sha256": predictor.artifact.sha256}
    assert p["dicom"] is None and p["id"] == 1 and preds[1]["id"] == 2
    import hashlib

    assert p["input_sha256"] == hashlib.sha256(FRACTURED.read_bytes()).hexdigest()
    assert body["studies"] == []  # plain images: no study


def test_predict_dicom_and_a_multi_view_study(client, tmp_path):
    study = "1.2.826.0.1.3680043.8.498.1"
    a = write_dicom(tmp_path / "a.dcm", study=study, seed=1)
    b = write_dicom(tmp_path / "b", study=study, seed=2)  # no extension: sniffed by its DICM marker
    other = write_dicom(tmp_path / "c.dcm", seed=3)
    r = client.post("/v1/predict", files=upload(a, b, other))
    assert r.status_code == 200, r.text
    body = r.json()
    preds = body["predictions"]
    assert len(preds) == 3
    assert preds[0]["dicom"]["study_uid"] == study and preds[0]["dicom"]["modality"] == "CR"
    assert preds[0]["dicom"]["sop_uid"] and preds[0]["dicom"]["series_uid"] and preds[0]["dicom"]["frame"] == 0
    [s] = body["studies"]  # the lone third view makes no study entry
    assert s["study_uid"] == study and s["n_views"] == 2 and s["aggregation"] == "max"
    assert s["probability"] == pytest.approx(max(preds[0]["probability"], preds[1]["probability"]))
    assert s["verdict"] in ("fracture", "doubt", "no fracture")
    assert s["views"] == [preds[0]["id"], preds[1]["id"]]


def test_heatmap_overlay(client):
    r = client.post("/v1/predict?heatmap=true", files=upload(FRACTURED))
    assert r.status_code == 200, r.text
    p = r.json()["predictions"][0]
    png = base64.b64decode(p["overlay_png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    w, h = Image.open(FRACTURED).size
    box = p["heatmap_box"]
    assert 0 <= box["x"] < box["x"] + box["width"] <= w and 0 <= box["y"] < box["y"] + box["height"] <= h


def test_feedback_is_recorded(client, db_url):
    r = client.post("/v1/predict", files=upload(FRACTURED))
    pid = r.json()["predictions"][0]["id"]
    fb = client.post("/v1/feedback", json={"prediction_id": pid, "verdict": "no fracture", "reader": "dr x"})
    assert fb.status_code == 200, fb.text
    assert fb.json()["reader_label"] == "not fractured" and fb.json()["prediction_id"] == pid
    from fracdet.serve.records import open_store

    [(pred, feedback)] = open_store(db_url).reviewed()
    assert pred.file_name == FRACTURED.name and feedback.reader == "dr x" and feedback.reader_fractured is False
    assert_error(client.post("/v1/feedback", json={"prediction_id": 999, "verdict": "fracture"}), 404, "999")
    assert_error(client.post("/v1/feedback", json={"prediction_id": pid, "verdict": "perhaps"}), 400, "perhaps")
    assert_error(client.post("/v1/feedback", json={"verdict": "fracture"}), 400, "prediction_id")


def test_without_records_feedback_is_refused(predictor):
    c = make_client(predictor, None)
    r = c.post("/v1/predict", files=upload(FRACTURED))
    assert r.status_code == 200 and r.json()["predictions"][0]["id"] is None
    assert_error(c.post("/v1/feedback", json={"prediction_id": 1, "verdict": "fracture"}), 503)


# ---------------------------------------------------------------- errors
def test_api_key(predictor, db_url):
    c = make_client(predictor, db_url, api_key=KEY)
    assert c.get("/v1/health").status_code == 200  # health needs no key
    assert_error(c.get("/v1/model"), 401, "X-API-Key")
    assert_error(c.get("/v1/model", headers={"X-API-Key": "wrong"}), 401)
    assert_error(c.post("/v1/predict", files=upload(FRACTURED)), 401)
    assert_error(c.post("/v1/feedback", json={"prediction_id": 1, "verdict": "fracture"}), 401)
    ok = c.post("/v1/predict", files=upload(FRACTURED), headers={"X-API-Key": KEY})
    assert ok.status_code == 200
    assert c.get("/v1/model", headers={"X-API-Key": KEY}).status_code == 200
    schemes = c.get("/openapi.json").json()["components"]["securitySchemes"]
    assert any(s.get("name") == "X-API-Key" for s in schemes.values())


def test_a_wrong_key_is_refused_before_the_body_is_read(predictor, db_url, caplog):
    c = make_client(predictor, db_url, api_key=KEY)
    with caplog.at_level(logging.INFO, logger="fracdet.serve.access"):
        assert_error(c.post("/v1/predict", files=upload(FRACTURED)), 401)
    [line] = [r.getMessage() for r in caplog.records if r.name == "fracdet.serve.access"]
    assert " 401 in=0B " in line  # nothing of the upload was read


def test_api_key_from_environment(monkeypatch):
    from fracdet.serve.settings import Settings

    monkeypatch.setenv("FRACDET_API_KEY", "from-env")
    assert Settings.api_key_from_env(None) == "from-env"
    assert Settings.api_key_from_env("given") == "given"
    monkeypatch.setenv("FRACDET_API_KEY", "")
    assert Settings.api_key_from_env(None) is None


def test_hostile_uploads_get_the_right_status_and_the_server_keeps_serving(predictor, db_url, tmp_path):
    c = make_client(predictor, db_url, max_upload_mb=1.0, max_pixels=20_000_000)
    assert_error(c.post("/v1/predict", files=upload(b"this is plain text, not a radiograph\n", name="x.jpg")),
                 415, "x.jpg", "text")
    assert_error(c.post("/v1/predict", files=upload(b"", name="empty.png")), 400, "empty")
    assert_error(c.post("/v1/predict", files=upload(b"\xff\xd8\xff\xe0" + b"\x00" * 300, name="broken.jpg")),
                 400, "broken.jpg")
    assert_error(c.post("/v1/predict", files=upload(png_bomb(), name="bomb.png")), 413, "bomb.png", "900,000,000 pixels")
    assert_error(c.post("/v1/predict", files=upload(png_bomb(5000, 5000), name="big.png")), 413, "5000x5000")
    mr = write_dicom(tmp_path / "mr.dcm", modality="MR")
    body = assert_error(c.post("/v1/predict", files=upload(mr)), 422, "mr.dcm", "MR")
    assert body["error"]["code"] == "refused"
    assert_error(c.post("/v1/predict", files=upload(b"\xff\xd8\xff" + b"\x00" * (2 * 2**20), name="huge.jpg")),
                 413, "too large")
    assert_error(c.post("/v1/predict"), 400, "files")
    assert_error(c.get("/v1/nowhere"), 404)
    # still serving, and nothing recorded for the refused files
    assert c.get("/v1/health").status_code == 200
    ok = c.post("/v1/predict", files=upload(FRACTURED))
    assert ok.status_code == 200 and ok.json()["predictions"][0]["id"] == 1


def test_pixel_limit_is_checked_before_decoding(predictor, db_url, monkeypatch):
    from PIL import Image

    def never(*a, **k):  # decoding a bomb would be the failure
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(Image.Image, "load", never)
    c = make_client(predictor, db_url)
    assert_error(c.post("/v1/predict", files=upload(png_bomb(), name="bomb.png")), 413)


def test_too_many_files(predictor, db_url):
    c = make_client(predictor, db_url, max_files=2)
    assert_error(c.post("/v1/predict", files=upload(FRACTURED, FRACTURED, FRACTURED)), 413, "too many files")


def test_uploads_live_only_in_generated_temp_files(client, monkeypatch, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    seen = []
    import fracdet.serve.uploads as uploads

    real = uploads.check_header

    def spy(up, *a, **k):
        seen.append(up.path)
        return real(up, *a, **k)

    monkeypatch.setattr(uploads, "check_header", spy)
    monkeypatch.setattr("fracdet.serve.api.check_header", spy)
    r = client.post("/v1/predict", files=[("files", ("../../etc/evil name.jpg", FRACTURED.read_bytes(), "image/jpeg"))])
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["file"] == "evil name.jpg"
    assert seen and seen[0].name == "0001.jpg" and str(spool) in str(seen[0])
    assert not seen[0].exists() and list(spool.iterdir()) == []  # deleted after the request


def test_access_log_one_line_per_request_without_content(client, caplog):
    with caplog.at_level(logging.INFO, logger="fracdet.serve.access"):
        client.get("/v1/health")
        client.post("/v1/predict", files=upload(FRACTURED))
    lines = [r.getMessage() for r in caplog.records if r.name == "fracdet.serve.access"]
    assert len(lines) == 2
    assert '"GET /v1/health" 200' in lines[0] and '"POST /v1/predict" 200' in lines[1]
    assert all(len(line) < 200 for line in lines)


def test_inference_runs_off_the_event_loop(client, monkeypatch):
    import threading

    import fracdet.serve.api as api

    threads = []
    real = api._Service.predict

    def spy(self, *a, **k):
        threads.append(threading.current_thread().name)
        return real(self, *a, **k)

    monkeypatch.setattr(api._Service, "predict", spy)
    assert client.post("/v1/predict", files=upload(FRACTURED)).status_code == 200
    assert threads and threads[0].startswith("fracdet-infer")


def test_bad_database_url_fails_at_start(predictor):
    from fracdet.errors import FracdetError

    with pytest.raises(FracdetError, match="--db"):
        make_client(predictor, "nosuchdb://x/y")


def test_serving_onnx_imports_no_torch(tmp_path):
    script = f"""
import sys, json
from fastapi.testclient import TestClient
from fracdet.inference import load_model
from fracdet.serve.api import create_app
from fracdet.serve.settings import Settings
c = TestClient(create_app(load_model(backend="onnx", threads=1), Settings(db_url="sqlite:///{tmp_path}/r.sqlite")))
r = c.post("/v1/predict", files=[("files", ("a.jpg", open({str(FRACTURED)!r}, "rb").read(), "image/jpeg"))])
print(json.dumps({{"status": r.status_code, "torch": "torch" in sys.modules}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"status": 200, "torch": False}


def test_cli_serve_parses_its_options():
    from fracdet.cli import build_parser

    a = build_parser().parse_args(["serve", "--port", "9000", "--db", "sqlite:///x.sqlite", "--max-upload-mb", "5",
                                   "--max-pixels", "1000", "--workers", "3", "--api-key", "k"])
    assert (a.port, a.db, a.max_upload_mb, a.max_pixels, a.workers, a.api_key) == (9000, "sqlite:///x.sqlite", 5.0,
                                                                                    1000, 3, "k")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--workers", "0"])


def test_page_is_one_self_contained_file(predictor, db_url):
    import re

    c = make_client(predictor, db_url, api_key=KEY)
    r = c.get("/")  # the page itself holds no data: no key needed; its calls send the key typed in
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "Research use only" in html and "not a medical device" in html
    assert "/v1/predict" in html and "/v1/feedback" in html and "X-API-Key" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # no CDN, no external font
    assert "@import" not in html and "<link" not in html


def test_upload_limit_without_content_length(predictor, db_url):
    """A chunked body (no Content-Length) is cut off once it passes the limit: 413."""
    c = make_client(predictor, db_url, max_upload_mb=0.25)
    boundary = "fracdetboundary"

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.jpg\"\r\n"
               "Content-Type: image/jpeg\r\n\r\n").encode() + b"\xff\xd8\xff"
        for _ in range(64):
            yield b"\x00" * 16384  # 1 MiB in all
        yield f"\r\n--{boundary}--\r\n".encode()

    r = c.post("/v1/predict", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert_error(r, 413, "too large")
    assert c.get("/v1/health").status_code == 200

"""``fracdet evaluate`` writes the clinical report: CIs, subgroups, calibration, operating
points, figures and one self-contained HTML page — rendered here in headless Chromium."""

import csv
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from fracdet.artifact import ModelArtifact, save_artifact
from fracdet.cli import main
from fracdet.metrics import CI_METRICS
from fracdet.models import create_model
from fracdet.report import render_html, subgroups_of
from fracdet.data.layouts import Sample
from fracdet.transforms import PreprocessSpec
from optional import missing_optional
from synth import write_image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _model(tmp_path):
    torch.manual_seed(0)
    model = create_model("simple_cnn", pretrained=False, head_hidden=16, dropout=0.1).eval()
    art = ModelArtifact(architecture="simple_cnn", state_dict=model.state_dict(),
                        preprocess=PreprocessSpec(input_size=48, mean=(0.5,) * 3, std=(0.25,) * 3),
                        model_config={"head_hidden": 16, "dropout": 0.1}, threshold=0.45, temperature=2.0,
                        doubt_threshold=0.3, fracture_threshold=0.6, threshold_note="chosen for the test")
    return save_artifact(art, tmp_path / "m.fracdet")


def _manifest(tmp_path, n=40):
    rows = []
    for i in range(n):
        label = i % 2
        path = write_image(tmp_path / "imgs" / f"{i:03d}.png", bool(label), i)
        rows.append([path.name and f"imgs/{path.name}", label, "", "test", ("hand", "leg")[i % 4 // 2]])
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group", "split", "region"])
        w.writerows(rows)
    return tmp_path / "manifest.csv"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    run = tmp / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("phase,epoch,train_loss,train_acc,val_loss,val_acc,val_auroc,lr\n"
                                     "head,0,0.9,0.6,0.8,0.6,0.7,0.001\nhead,1,0.7,0.7,0.7,0.7,0.75,0.001\n"
                                     "finetune,2,0.5,0.8,0.6,0.75,0.8,0.0001\n")
    out = tmp / "ev"
    assert main(["evaluate", str(_manifest(tmp)), "--model", str(_model(tmp)), "--out", str(out),
                 "--bootstrap", "200", "--run", str(run)]) == 0
    return out


def test_metrics_json_has_cis_subgroups_calibration_and_verdicts(report):
    m = json.loads((report / "metrics.json").read_text())
    assert set(m["ci"]) == set(CI_METRICS)
    for k, c in m["ci"].items():
        assert c["n_resamples"] == 200 and np.isclose(c["estimate"], m[k], equal_nan=True), k
        if c["estimate"] == c["estimate"]:
            assert c["low"] <= c["estimate"] <= c["high"], k
        else:  # undefined (e.g. NPV with no negative calls): undefined interval, not an error
            assert c["low"] != c["low"] and c["high"] != c["high"], k
    assert set(m["subgroups"]["region"]) == {"hand", "leg"}
    assert m["subgroups"]["region"]["hand"]["n"] == 20 and "ci" in m["subgroups"]["region"]["hand"]
    cal = m["calibration"]
    assert cal["temperature"] == 2.0 and 0 <= cal["ece_after"] <= 1 and 0 <= cal["ece_before"] <= 1
    assert m["operating_points"]["doubt"]["threshold"] == pytest.approx(0.3, abs=1e-3)
    total = sum(sum(v.values()) for v in m["verdicts"].values())
    assert total == m["n"] == 40
    rows = list(csv.DictReader(open(report / "predictions.csv")))
    assert {r["verdict"] for r in rows} <= {"fracture", "doubt", "no fracture"}
    assert "95% CI" in (report / "metrics.txt").read_text()


def test_html_is_self_contained_with_all_figures(report):
    html = (report / "report.html").read_text()
    figures = json.loads((report / "metrics.json").read_text())["figures"]
    for f in ("roc_curve.png", "pr_curve.png", "reliability.png", "score_histograms.png", "samples.png",
              "subgroups.png", "curves.png"):
        assert f in figures and (report / f).is_file(), f
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == len(figures) + 1  # + the confusion matrix
    assert not re.search(r'(src|href)="(?!data:)', html) and "<script" not in html
    for text in ("Not a medical device", "95% confidence intervals", "Subgroups", "hand", "ECE before",
                 "doubt (high sensitivity)", "chosen for the test"):
        assert text in html, text


def test_render_html_escapes():
    html = render_html({"n": 1, "model": "<b>x</b>", "ci": {}}, "/nonexistent")
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html


def test_subgroups_of_fracatlas_flags(tmp_path):
    s = [Sample(tmp_path, 1, region="hand", meta={"hardware": 1, "frontal": 1, "lateral": 0}),
         Sample(tmp_path, 0, region=None, meta={"hardware": 0, "frontal": 1, "lateral": 1}),
         Sample(tmp_path, 0)]
    g = subgroups_of(s)
    assert g == {"region": ["hand", None, None], "hardware": ["hardware", "no hardware", None],
                 "view": ["frontal", "multiple", None]}


def _browser():
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def _run_browser(args, tmp_path):
    browser = _browser()
    if browser is None:
        missing_optional("no chromium binary (apt-get install chromium)")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish rendering the report in 120 s")


def test_report_renders_in_headless_chromium(report, tmp_path):
    # a copy with a probe appended: counts the figures the browser actually decoded
    probe = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
             "document.body.setAttribute('data-decoded',i.filter(x=>x.complete&&x.naturalWidth>100).length);"
             "document.body.setAttribute('data-images',i.length);});</script>")
    page = tmp_path / "probe.html"
    page.write_text((report / "report.html").read_text().replace("</body>", probe + "</body>"))
    res = _run_browser(["--virtual-time-budget=5000", "--dump-dom", page.as_uri()], tmp_path)
    dom = res.stdout
    assert "fracdet evaluation" in dom, res.stderr[-2000:]
    n_images = int(re.search(r'data-images="(\d+)"', dom).group(1))
    decoded = int(re.search(r'data-decoded="(\d+)"', dom).group(1))
    n_figures = len(json.loads((report / "metrics.json").read_text())["figures"]) + 1
    assert n_images == decoded == n_figures
    shot = tmp_path / "shot.png"
    _run_browser([f"--screenshot={shot}", "--window-size=1200,2400", (report / "report.html").as_uri()], tmp_path)
    assert shot.is_file()
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    non_white = (pixels.min(axis=2) < 230).mean()
    colourful = (np.abs(pixels[..., 2] - pixels[..., 0]) > 60).mean()  # the blue ROC/histogram lines
    assert non_white > 0.02 and colourful > 0.001, (non_white, colourful)

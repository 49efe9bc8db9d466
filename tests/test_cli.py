"""The command line end to end on synthetic data, and its one-line errors for bad input."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fracdet.cli import main
from synth import make_class_folders, make_split_folders, write_image

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "simple_cnn", "--no-pretrained", "--input-size", "48", "--batch-size", "8",
        "--head-hidden", "16", "--accelerator", "cpu", "--devices", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = make_split_folders(root / "data", {"train": 10, "val": 5, "test": 5})
    run = root / "run"
    assert main(["train", str(data), "--out", str(run), "--epochs1", "1", "--epochs2", "1", *TINY]) == 0
    return data, run


def test_train_evaluate_predict(trained, tmp_path, capsys):
    data, run = trained
    model = run / "model.fracdet"
    assert model.is_file()
    out = tmp_path / "eval"
    assert main(["evaluate", str(data), "--model", str(model), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "'test' split" in text and "sensitivity" in text and "ROC-AUC" in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 10 and {"accuracy", "precision", "recall", "specificity", "f1", "ppv", "npv", "roc_auc",
                             "confusion_matrix", "classification_report"} <= set(m)
    for f in ("roc_curve.png", "confusion_matrix.png", "metrics.txt", "predictions.csv"):
        assert (out / f).stat().st_size > 0
    preds = tmp_path / "p.csv"
    assert main(["predict", str(data / "test"), "--model", str(model), "--out", str(preds)]) == 0
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == 10 and {"path", "probability", "label", "threshold"} <= set(rows[0])
    assert all(0 <= float(r["probability"]) <= 1 and r["label"] in ("fractured", "not fractured") for r in rows)
    pj = tmp_path / "p.json"
    assert main(["predict", str(data / "test" / "fractured"), "--model", str(model), "--out", str(pj), "--quiet"]) == 0
    assert len(json.loads(pj.read_text())) == 5


def test_predict_reports_bad_files_and_goes_on(trained, tmp_path, capsys):
    _, run = trained
    folder = tmp_path / "mixed"
    write_image(folder / "good.png", True, 1)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (folder / "empty.png").write_bytes(b"")
    readme = tmp_path / "readme.txt"
    readme.write_text("not an image")
    out = tmp_path / "rows.csv"
    code = main(["predict", str(folder), str(readme), "--model", str(run / "model.fracdet"), "--out", str(out)])
    assert code == 1
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert rows["good.png"]["error"] == "" and rows["good.png"]["probability"]
    for name in ("corrupt.jpg", "empty.png", "readme.txt"):
        assert rows[name]["error"] and rows[name]["probability"] == ""
    assert "3 of 4 file(s) could not be read" in capsys.readouterr().err


def _one_line_error(args, capsys, *expect):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for e in expect:
        assert e in err, err
    return err


def test_clear_errors(tmp_path, capsys, trained):
    _, run = trained
    model = ["--model", str(run / "model.fracdet")]
    (tmp_path / "empty").mkdir()
    _one_line_error(["evaluate", str(tmp_path / "empty"), *model], capsys, "empty")
    bad = make_class_folders(tmp_path / "weird", 2, names=("normal", "broken_bones"))
    _one_line_error(["train", str(bad), *TINY], capsys, "broken_bones", "normal")
    _one_line_error(["evaluate", str(tmp_path / "nope"), *model], capsys, "nope")
    _one_line_error(["predict", str(tmp_path / "empty"), *model], capsys, "no image files")
    notmodel = tmp_path / "x.fracdet"
    notmodel.write_text("hello")
    _one_line_error(["predict", str(tmp_path), "--model", str(notmodel)], capsys, "x.fracdet")
    _one_line_error(["train", str(trained[0]), "--model", "resnet51"], capsys, "resnet51", "resnet50")


def test_models_and_help_list(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0" in out and "resnet50" in out and "simple_cnn" in out
    proc = subprocess.run([sys.executable, "-m", "fracdet", "--help"], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and "train" in proc.stdout and "not a medical device" in proc.stdout


def test_shared_cli_choices_match_the_library():
    from fracdet.cli.options import BACKEND_CHOICES, LAYOUT_CHOICES
    from fracdet.data.layouts import LAYOUTS
    from fracdet.inference import BACKENDS

    assert LAYOUT_CHOICES == ("auto", *LAYOUTS)
    assert BACKEND_CHOICES == BACKENDS


def test_a_light_install_is_told_which_extra_to_add(monkeypatch, capsys):
    import fracdet.cli.train as cli_train

    def missing(_args):
        raise ModuleNotFoundError("No module named 'lightning'", name="lightning")

    monkeypatch.setattr(cli_train, "_cmd_train", missing)  # bound when main builds its parser
    assert main(["train", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: fracdet train needs lightning, which this install lacks: "
                           "pip install 'fracdet[train]'")

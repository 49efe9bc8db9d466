"""`fracdet tune`: an Optuna study over training options on validation ROC-AUC, resumable in SQLite,
writing a config file that `fracdet train --config` takes."""

import csv
import json

import pytest

from fracdet.cli import main
from fracdet.config import read_config_file
from synth import make_class_folders

optuna = pytest.importorskip("optuna")

TINY = ["--model", "simple_cnn", "--no-pretrained", "--input-size", "32", "--epochs1", "1", "--epochs2", "1",
        "--batch-size", "8", "--accelerator", "cpu", "--devices", "1", "--no-progress", "--calibration", "platt"]


def test_tune_two_trials_then_a_rerun_resumes_the_study(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", 12)
    out = tmp_path / "tune"
    assert main(["tune", str(data), "--trials", "2", "--out", str(out), "--input-sizes", "32,40", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "best validation ROC-AUC" in printed
    study = optuna.load_study(study_name="fracdet-tune", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 2 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert all(len(t.intermediate_values) == 2 for t in study.trials)  # one report per epoch, both phases
    best = read_config_file(out / "best.json")
    assert "data" not in best and best["model"] == "simple_cnn" and best["input_size"] in (32, 40)
    assert best["head_lr"] == study.best_trial.params["head_lr"]
    assert best["augment"]["rotation"] == study.best_trial.params["augment.rotation"]
    # trials never saw a test image: their manifest holds the train and val splits only
    rows = list(csv.DictReader((out / "split.csv").open()))
    assert {r["split"] for r in rows} == {"train", "val"} and len(rows) < 24
    assert not (out / "trials" / "trial-000" / "eval-test").exists()
    assert not (out / "trials" / "trial-000" / "model.fracdet").exists()  # weights dropped (no --keep-runs)

    # the same command again finds the study done: nothing is retrained, the same best configuration
    before = (out / "best.json").read_text()
    assert main(["tune", str(data), "--trials", "2", "--out", str(out), "--input-sizes", "32,40", *TINY]) == 0
    assert len(optuna.load_study(study_name="fracdet-tune", storage=f"sqlite:///{out / 'study.db'}").trials) == 2
    assert (out / "best.json").read_text() == before


@pytest.mark.slow
def test_tune_rerun_with_more_trials_continues_and_its_best_config_trains(tmp_path):
    data = make_class_folders(tmp_path / "data", 12)
    out = tmp_path / "tune"
    assert main(["tune", str(data), "--trials", "2", "--out", str(out), *TINY]) == 0
    # the same command with more trials continues the study instead of starting again
    assert main(["tune", str(data), "--trials", "3", "--out", str(out), *TINY]) == 0
    study = optuna.load_study(study_name="fracdet-tune", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2]
    summary = json.loads((out / "tune.json").read_text())
    assert summary["finished"] == 3 and "test split never used" in summary["objective"]
    assert len(list(csv.reader((out / "trials.csv").open()))) == 4

    # the best configuration trains as it is
    best = read_config_file(out / "best.json")
    assert main(["train", str(data), "--config", str(out / "best.json"), "--out", str(tmp_path / "run"), "--no-int8",
                 "--no-progress"]) == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["head_lr"] == best["head_lr"] and cfg["model"] == "simple_cnn"

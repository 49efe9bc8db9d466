"""`fracdet cv` (group-aware stratified k-fold) and `fracdet train --config FILE`."""

import csv
import json

import numpy as np
import pytest

from fracdet.cli import main
from fracdet.config import TrainConfig, read_config_file, write_config_file
from fracdet.crossval import fold_splits, summarise
from fracdet.data.layouts import Dataset, Sample
from fracdet.errors import FracdetError
from synth import make_class_folders

TINY = ["--model", "simple_cnn", "--no-pretrained", "--input-size", "32", "--epochs1", "1", "--epochs2", "1",
        "--batch-size", "8", "--head-hidden", "8", "--accelerator", "cpu", "--devices", "1", "--no-progress"]


def test_folds_are_stratified_group_aware_and_cover_every_image_once(tmp_path):
    samples = [Sample(tmp_path / f"{i}.png", label=int(i % 3 == 0), group=f"g{i // 2}") for i in range(60)]
    splits = fold_splits(Dataset(samples, tmp_path, "csv"), 5, 0.15 / 0.85, seed=1)
    assert len(splits) == 5
    held = np.array([[sp == "test" for sp in s] for s in splits])
    assert (held.sum(axis=0) == 1).all()  # every image held out exactly once
    for s in splits:
        for g in {x.group for x in samples}:  # a group never straddles two roles within a fold
            assert len({sp for x, sp in zip(samples, s) if x.group == g}) == 1
        for role in ("train", "val", "test"):
            assert {x.label for x, sp in zip(samples, s) if sp == role} == {0, 1}
    with pytest.raises(FracdetError, match="too few"):
        fold_splits(Dataset(samples[:6], tmp_path, "csv"), 5, 0.2, seed=1)


def test_summary_mean_and_sample_sd():
    s = summarise([{"roc_auc": 0.8}, {"roc_auc": 0.9}, {"roc_auc": float("nan")}])
    assert s["roc_auc"]["mean"] == pytest.approx(0.85) and s["roc_auc"]["sd"] == pytest.approx(np.std([.8, .9], ddof=1))
    assert s["roc_auc"]["n"] == 2


def test_config_file_round_trip_and_refusals(tmp_path):
    p = write_config_file(tmp_path / "c.yaml", {"head_lr": 0.01, "dropout": 0.2, "augment": {"rotation": 5.0},
                                                 "input_size": None})
    assert read_config_file(p) == {"head_lr": 0.01, "dropout": 0.2, "augment": {"rotation": 5.0}, "input_size": None}
    assert TrainConfig.from_dict(read_config_file(p)).augment.rotation == 5.0
    for bad, why in (({"head_lr": 0.01, "lr": 1}, "unknown option"), ({"augment": {"spin": 1}}, "augment.spin"),
                     ({"dropout": "high"}, "dropout must be a number"), ({"pretrained": 1}, "true or false"),
                     ({"phase1_epochs": 1.5}, "an integer"), ({"fractions": [0.5, 0.5]}, "fractions")):
        write_config_file(tmp_path / "bad.json", bad)
        with pytest.raises(FracdetError, match=why):
            read_config_file(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(FracdetError, match="broken.json: not a valid JSON"):
        read_config_file(tmp_path / "broken.json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(FracdetError, match="must hold a mapping"):
        read_config_file(tmp_path / "list.yaml")


def test_train_config_flags_override_the_file(tmp_path, capsys):
    from fracdet.cli.train import config_from_args, train_parser

    cfg_file = write_config_file(tmp_path / "c.json", {"head_lr": 0.01, "dropout": 0.2, "pretrained": False,
                                                        "augment": {"rotation": 5.0, "hflip": False}})
    a = train_parser().parse_args(["data", "--config", str(cfg_file), "--dropout", "0.4"])
    cfg = config_from_args(a)
    assert (cfg.head_lr, cfg.dropout, cfg.pretrained, cfg.data) == (0.01, 0.4, False, "data")
    assert cfg.augment.rotation == 5.0 and cfg.augment.hflip is False and cfg.augment.zoom == 0.10
    write_config_file(tmp_path / "bad.json", {"learning_rate": 1})
    assert main(["train", str(tmp_path), "--config", str(tmp_path / "bad.json")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown option(s) learning_rate" in err[0]


def test_cv_cli_writes_per_fold_and_mean_sd(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", 12)
    cfg_file = write_config_file(tmp_path / "c.json", {"dropout": 0.1, "calibration": "platt"})
    out = tmp_path / "cv"
    assert main(["cv", str(data), "--folds", "2", "--out", str(out), "--config", str(cfg_file), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "mean ± sd" in printed and "roc_auc" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert [f["fold"] for f in m["folds"]] == [1, 2]
    assert sum(f["n"] for f in m["folds"]) == 24  # each image held out once
    assert all(f["calibration"] == "platt" for f in m["folds"]) and m["config"]["dropout"] == 0.1
    for key in ("roc_auc", "sensitivity", "specificity", "calibration.ece_after", "operating_points.doubt.sensitivity"):
        s = m["summary"][key]
        vals = [f["metrics"][key] for f in m["folds"] if key in f["metrics"]]
        assert s["mean"] == pytest.approx(np.mean(vals)) and s["sd"] >= 0
    rows = list(csv.reader((out / "metrics.csv").open()))
    assert rows[0][:2] == ["fold", "n"] and [r[0] for r in rows[1:]] == ["1", "2", "mean", "sd"]
    for k in (1, 2):
        assert (out / f"fold-{k}" / "run" / "model.fracdet").is_file()
        assert (out / f"fold-{k}" / "run" / "eval-test" / "report.html").is_file()
    assert (out / "metrics.txt").read_text().startswith("metric")

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fracdet.artifact import load_artifact
from fracdet.config import TrainConfig
from fracdet.train import read_metrics_csv, train
from fracdet.transforms import AugmentConfig
from synth import make_class_folders

REPO = Path(__file__).resolve().parents[1]


def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), model="simple_cnn", pretrained=False, input_size=48, batch_size=8,
                phase1_epochs=1, phase2_epochs=1, head_hidden=16, progress=False, accelerator="cpu", devices="1")
    base.update(kw)
    return TrainConfig(**base)


def test_two_phases_write_a_complete_run_folder(tmp_path):
    data = make_class_folders(tmp_path / "data", 14)
    res = train(_cfg(data, tmp_path / "run"))
    run = res.run_dir
    for name in ("config.json", "split.csv", "metrics.csv", "curves.png", "model.fracdet", "model_card.md",
                 "metrics.json", "eval-test/roc_curve.png", "eval-test/confusion_matrix.png"):
        assert (run / name).is_file(), name
    rows = read_metrics_csv(run / "metrics.csv")
    assert [r["phase"] for r in rows] == ["head", "finetune"]
    assert all(r["val_auroc"] is not None and r["train_loss"] is not None for r in rows)
    art = load_artifact(res.artifact_path)
    assert art.architecture == "simple_cnn" and art.preprocess.input_size == 48
    assert 0.0 <= art.threshold <= 1.0 and art.temperature > 0
    assert art.training["phase1_epochs"] == 1 and art.data["count"] == 28
    assert set(art.metrics) >= {"val", "test", "calibration"}
    assert "ci" in art.metrics["val"] and "ci" in art.metrics["test"]
    # the int8 step ran: a graph and its measured drift on val (and test) against float32
    assert art.int8_onnx and art.int8["check"]["n"] == art.metrics["val"]["n"] and "test" in art.int8
    assert isinstance(art.int8["accepted"], bool)
    assert json.loads((run / "config.json").read_text())["model"] == "simple_cnn"
    assert "Not a medical device" in (run / "model_card.md").read_text()
    # the split travels inside the model; evaluating on the training data uses it: the same test images
    recorded = art.recorded_split()
    assert len(recorded) == 28 and sorted(set(recorded.values())) == ["test", "train", "val"]
    from fracdet.evaluate import evaluate

    ev = evaluate(data, res.artifact_path, out_dir=tmp_path / "ev", backend="onnx")  # float32, as in training
    assert "recorded 'test' split" in ev.split_note
    assert ev.metrics["n"] == art.metrics["test"]["n"]
    assert ev.metrics["roc_auc"] == pytest.approx(art.metrics["test"]["roc_auc"], abs=1e-6)


def test_a_run_started_from_a_model_file_records_that_file_by_its_digest(tmp_path):
    import hashlib

    data = make_class_folders(tmp_path / "data", 8)
    first = train(_cfg(data, tmp_path / "r1", phase2_epochs=0, int8=False)).artifact_path
    second = train(_cfg(data, tmp_path / "r2", phase2_epochs=0, int8=False, weights=str(first))).artifact_path
    training = load_artifact(second).training
    assert training["weights"] == str(first)
    assert training["weights_sha256"] == hashlib.sha256(Path(first).read_bytes()).hexdigest()
    assert "weights_sha256" not in load_artifact(first).training  # ImageNet or random start: nothing to name


def test_phase1_trains_only_the_head_and_phase2_the_backbone(tmp_path):
    data = make_class_folders(tmp_path / "data", 8)
    cfg = _cfg(data, tmp_path / "r1", phase2_epochs=0, augment=AugmentConfig.off())
    import lightning as L

    from fracdet.models import create_model

    L.seed_everything(cfg.seed, verbose=False)  # train() seeds the same way before creating the model
    init = create_model("simple_cnn", pretrained=False, head_hidden=16).state_dict()
    art = load_artifact(train(cfg).artifact_path)
    bb = [k for k in init if k.startswith("backbone.") and k.endswith("weight")]
    head = [k for k in init if k.startswith("head.") and k.endswith("weight")]
    same = lambda k: np.array_equal(art.state_dict[k], init[k].half().numpy())  # noqa: E731  (artifacts store fp16)
    assert all(same(k) for k in bb), "phase 1 must not change the frozen backbone"
    assert not all(same(k) for k in head), "phase 1 must train the head"
    cfg2 = _cfg(data, tmp_path / "r2", phase1_epochs=0, phase2_epochs=1, augment=AugmentConfig.off(),
                unfreeze_from="block3")
    art2 = load_artifact(train(cfg2).artifact_path)
    sd2 = art2.state_dict
    assert np.array_equal(sd2["backbone.block1.0.weight"], init["backbone.block1.0.weight"].half().numpy())
    assert not np.array_equal(sd2["backbone.block4.0.weight"], init["backbone.block4.0.weight"].half().numpy())


def test_refinish_rebuilds_the_artifact_from_the_checkpoint(tmp_path):
    from fracdet.train import refinish

    data = make_class_folders(tmp_path / "data", 8)
    first = train(_cfg(data, tmp_path / "run", augment=AugmentConfig.off()))
    a = load_artifact(first.artifact_path)
    first.artifact_path.unlink()
    again = refinish(tmp_path / "run")
    b = load_artifact(again.artifact_path)
    assert set(a.state_dict) == set(b.state_dict)
    assert all(np.array_equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert b.threshold == pytest.approx(a.threshold) and b.temperature == pytest.approx(a.temperature)
    assert b.metrics["test"]["roc_auc"] == pytest.approx(a.metrics["test"]["roc_auc"])


@pytest.mark.parametrize("opt,sched", [("sgd", "cosine"), ("adam", "none")])
def test_optimizers_and_schedules(tmp_path, opt, sched):
    data = make_class_folders(tmp_path / "data", 6)
    res = train(_cfg(data, tmp_path / "run", optimizer=opt, scheduler=sched, monitor="val_loss", phase1_epochs=0))
    assert res.artifact_path.is_file()


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    data = make_class_folders(tmp_path / "data", 10)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("FRACDET_RUN_DIR", None)
    cmd = [sys.executable, "-m", "fracdet", "train", str(data), "--out", str(tmp_path / "run"),
           "--model", "simple_cnn", "--no-pretrained", "--input-size", "48", "--batch-size", "4",
           "--epochs1", "1", "--epochs2", "1", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
           "--head-hidden", "16"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr + proc.stdout
    assert "GLOBAL_RANK: 1" in log and "Starting with 2 processes" in log, log[-3000:]
    assert load_artifact(tmp_path / "run" / "model.fracdet").training["strategy"] == "ddp"
    assert [r["phase"] for r in read_metrics_csv(tmp_path / "run" / "metrics.csv")] == ["head", "finetune"]


@pytest.mark.parametrize("env,first", [
    ({}, True), ({"RANK": "0", "LOCAL_RANK": "0"}, True), ({"RANK": "3", "LOCAL_RANK": "1"}, False),
    ({"LOCAL_RANK": "0", "RANK": "2"}, False),  # torchrun on the second node: its local rank 0 is not first
    ({"SLURM_PROCID": "0"}, True), ({"SLURM_PROCID": "5"}, False),
    ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False), ({"NODE_RANK": "0", "LOCAL_RANK": "0"}, True),
])
def test_only_the_first_process_of_all_nodes_writes_the_run_folder(monkeypatch, env, first):
    from fracdet.train import is_first_process

    for var in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert is_first_process() is first

"""``fracdet train --resume``: a run killed mid-epoch continues to the uninterrupted run's result."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fracdet.artifact import load_artifact
from fracdet.errors import FracdetError
from fracdet.train import read_metrics_csv, resume
from synth import make_class_folders

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--model", "simple_cnn", "--no-pretrained", "--input-size", "32", "--batch-size", "2", "--epochs1", "2",
        "--epochs2", "2", "--head-hidden", "8", "--no-int8", "--accelerator", "cpu", "--devices", "1", "--no-progress"]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}  # one thread: same sums each run
    env.pop("FRACDET_RUN_DIR", None)
    return env


def _fracdet(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fracdet", "train", *args], env=_env(), cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def _kill_when(proc: subprocess.Popen, ckpt: Path) -> None:
    """SIGKILL ``proc`` as soon as ``ckpt`` appears (the next epoch has just begun)."""
    deadline = time.monotonic() + 600
    while not ckpt.is_file():
        assert proc.poll() is None, f"training ended before {ckpt.name} appeared: {proc.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _epoch_of(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"])


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_uninterrupted_result(tmp_path):
    data = make_class_folders(tmp_path / "data", 20)
    _finish(_fracdet(str(data), "--out", "whole", *ARGS, cwd=tmp_path))

    run = tmp_path / "killed"
    ckpts = run / "checkpoints"
    # killed in phase 1, epoch 2 of 2 (its first epoch's checkpoint written, the second's not)
    _kill_when(_fracdet(str(data), "--out", str(run), *ARGS, cwd=tmp_path), ckpts / "head-last.ckpt")
    assert _epoch_of(ckpts / "head-last.ckpt") == 0, "the kill came after the second epoch had ended"
    assert not (run / "model.fracdet").exists()
    # resumed, then killed again in phase 2, epoch 2 of 2
    _kill_when(_fracdet("--resume", str(run), cwd=tmp_path), ckpts / "finetune-last.ckpt")
    assert _epoch_of(ckpts / "finetune-last.ckpt") == 0, "the kill came after the fine-tuning's second epoch"
    assert _epoch_of(ckpts / "head-last.ckpt") == 1
    out = _finish(_fracdet("--resume", str(run), cwd=tmp_path))
    assert "resuming" in out, out[-2000:]

    whole, resumed = read_metrics_csv(tmp_path / "whole" / "metrics.csv"), read_metrics_csv(run / "metrics.csv")
    assert [r["phase"] for r in resumed] == ["head", "head", "finetune", "finetune"]
    for a, b in zip(whole, resumed, strict=True):
        for k in ("train_loss", "train_acc", "val_loss", "val_auroc", "lr"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), (a["epoch"], k)
    a, b = load_artifact(tmp_path / "whole" / "model.fracdet"), load_artifact(run / "model.fracdet")
    assert set(a.state_dict) == set(b.state_dict)
    for k in a.state_dict:
        np.testing.assert_allclose(b.state_dict[k].astype(np.float32), a.state_dict[k].astype(np.float32),
                                   rtol=1e-3, atol=1e-5, err_msg=k)
    assert b.threshold == pytest.approx(a.threshold) and b.temperature == pytest.approx(a.temperature)
    assert b.metrics["val"]["roc_auc"] == pytest.approx(a.metrics["val"]["roc_auc"])
    assert b.training["epochs_run"] == a.training["epochs_run"] == 4

    with pytest.raises(FracdetError, match="has finished"):
        resume(run)


def test_resume_refuses_what_it_cannot_continue(tmp_path):
    with pytest.raises(FracdetError, match="no such run folder"):
        resume(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FracdetError, match="not a fracdet run folder"):
        resume(tmp_path / "empty")
    proc = subprocess.run([sys.executable, "-m", "fracdet", "train", "--resume", str(tmp_path / "empty")],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "not a fracdet run folder" in err[0] and "Traceback" not in proc.stderr


def test_resume_refuses_changed_data_and_a_broken_checkpoint(tmp_path):
    from fracdet.config import TrainConfig
    from fracdet.train import train

    data = make_class_folders(tmp_path / "data", 6)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), model="simple_cnn", pretrained=False, input_size=32,
                      batch_size=4, phase1_epochs=1, phase2_epochs=1, head_hidden=8, progress=False,
                      accelerator="cpu", devices="1", int8=False)
    run = train(cfg).run_dir
    (run / "model.fracdet").unlink()  # as if killed while finishing
    last = run / "checkpoints" / "finetune-last.ckpt"
    good = last.read_bytes()
    last.write_bytes(good[: len(good) // 2])
    with pytest.raises(FracdetError, match="not a resumable checkpoint"):
        resume(run)
    last.write_bytes(good)
    (data / "fractured" / "img_1_000.png").unlink()
    with pytest.raises(FracdetError, match="no longer gives this run's split"):
        resume(run)

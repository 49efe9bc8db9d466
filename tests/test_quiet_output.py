"""Issue 11: a training run's output has one line per event and no third-party chatter
(doubled Lightning lines, the litlogger advertisement, dependencies' deprecation warnings,
``Trainer(limit_train_batches=1.0)`` notices), while fracdet's own events and third-party
warnings stay visible once."""

import collections
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from fracdet.logsetup import QuietFilter
from synth import make_split_folders

REPO = Path(__file__).resolve().parents[1]
LEVEL = re.compile(r"^(INFO|WARNING|ERROR|DEBUG|CRITICAL)(:\s*|\s+)")
# Two real events with one wording: the network built for training, and the one save_artifact
# rebuilds from the weights to export the ONNX graph (fracdet.models.factory logs both).
KNOWN_REPEATS = re.compile(r"^created \S+ \((random init|.*weights.*)\)$")


def _events(text: str) -> list[str]:
    """Log lines without their level prefix (``INFO: x`` from Lightning's own handler and
    ``INFO     x`` from ours become the same event)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            out.append(LEVEL.sub("", line).strip())
    return out


def test_training_output_is_one_line_per_event(tmp_path):
    data = make_split_folders(tmp_path / "data", {"train": 8, "val": 4, "test": 4})
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "FRACDET_ALLOCATOR": "system", "COLUMNS": "300"}
    env.pop("FRACDET_RUN_DIR", None)
    cmd = [sys.executable, "-m", "fracdet", "train", str(data), "--out", str(tmp_path / "run"),
           "--model", "simple_cnn", "--no-pretrained", "--input-size", "48", "--batch-size", "8",
           "--head-hidden", "16", "--epochs1", "1", "--epochs2", "1", "--no-int8", "--no-progress",
           "--accelerator", "cpu", "--devices", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    text = proc.stderr + proc.stdout
    assert proc.returncode == 0, text[-3000:]

    counts = collections.Counter(_events(text))
    doubled = {line: n for line, n in counts.items() if n > 1 and not KNOWN_REPEATS.match(line)}
    assert not doubled, f"lines printed more than once: {doubled}\n{text}"
    lower = text.lower()
    for noise in ("litlogger", "litmodels", "💡", "deprecationwarning", "futurewarning", "deprecated",
                  "limit_train_batches", "limit_val_batches", "gpu available", "tpu available",
                  "checkpoint directory", "`trainer.fit` stopped"):
        assert noise not in lower, f"{noise!r} in the output:\n{text}"

    def once(pattern: str) -> None:
        hits = [line for line in text.splitlines() if re.search(pattern, line)]
        assert len(hits) == 1, f"{pattern!r} appears {len(hits)} times:\n{text}"

    once(r"phase 1/2 head: ")
    once(r"phase 2/2 finetune: ")
    once(r"phase 1/2 head done")
    once(r"phase 2/2 finetune done")
    once(r"saved model artifact .*model\.fracdet")
    once(r"^run folder: ")
    once(r"^model: ")


def _record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_quiet_filter_keeps_warnings_once_and_drops_chatter():
    f = QuietFilter(verbose=0)
    info = "lightning.pytorch.utilities.rank_zero"
    assert f.filter(_record("fracdet.train", logging.INFO, "phase 1/2 head: ..."))
    assert not f.filter(_record(info, logging.INFO, "GPU available: False, used: False"))
    assert not f.filter(_record(info, logging.INFO, "💡 Tip: try installing [litlogger](...)"))
    assert f.filter(_record("lightning.fabric.utilities.distributed", logging.INFO,
                            "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2"))
    warn = _record("py.warnings", logging.WARNING, "UserWarning: something real (x.py:1)")
    assert f.filter(warn) and not f.filter(warn), "a third-party warning shows once"
    assert f.filter(_record("lightning.pytorch", logging.ERROR, "boom")) and f.filter(
        _record("lightning.pytorch", logging.ERROR, "boom")), "errors are never deduplicated"

    loud = QuietFilter(verbose=1)  # -v: third-party INFO too, still no advertisements
    assert loud.filter(_record(info, logging.INFO, "GPU available: False, used: False"))
    assert not loud.filter(_record(info, logging.INFO, "💡 Tip: try installing [litlogger](...)"))

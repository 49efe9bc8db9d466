"""``fracdet predict --out FILE.csv``: rows written as they come; ``--resume`` skips finished files."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fracdet.cli import main
from fracdet.errors import FracdetError
from fracdet.inference.writer import PredictionWriter, partial_path, read_complete_rows
from synth import tiny_model_file, write_image

REPO = Path(__file__).resolve().parents[1]


def _images(folder: Path, n: int) -> list[Path]:
    return [write_image(folder / f"img_{i:03d}.png", bool(i % 2), i) for i in range(n)]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_a_cut_output_resumes_with_every_file_exactly_once(tmp_path):
    model = tiny_model_file(tmp_path)
    images = _images(tmp_path / "in", 9)
    out = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path / "in"), "--model", str(model), "--out", str(out), "--quiet"]) == 0
    whole = _rows(out)
    assert sorted(r["path"] for r in whole) == sorted(map(str, images))
    assert list(whole[0])[:3] == ["path", "probability", "label"]
    assert not partial_path(out).exists()

    # an interrupted run: the journal holds five whole rows and half of the sixth
    text = out.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    partial_path(out).write_text("".join(lines[:6]) + lines[6][: len(lines[6]) // 2], encoding="utf-8")
    out.unlink()
    assert main(["predict", str(tmp_path / "in"), "--model", str(model), "--out", str(out), "--quiet",
                 "--resume"]) == 0
    again = _rows(out)
    assert sorted(r["path"] for r in again) == sorted(map(str, images)), "every file exactly once"
    assert {r["path"]: r["probability"] for r in again} == {r["path"]: r["probability"] for r in whole}
    assert list(again[0]) == list(whole[0]) and not partial_path(out).exists()

    # resuming a finished output predicts nothing and keeps it as it is
    before = out.read_bytes()
    assert main(["predict", str(tmp_path / "in"), "--model", str(model), "--out", str(out), "--quiet",
                 "--resume"]) == 0
    assert out.read_bytes() == before
    # a new file is added to a finished output
    extra = write_image(tmp_path / "in" / "new.png", True, 99)
    assert main(["predict", str(tmp_path / "in"), "--model", str(model), "--out", str(out), "--quiet",
                 "--resume"]) == 0
    assert sorted(r["path"] for r in _rows(out)) == sorted(map(str, [*images, extra]))


def test_the_journal_reader_drops_cut_lines_and_the_last_file(tmp_path):
    p = tmp_path / "j.csv"
    p.write_text('path,probability,error\r\na.png,0.1,\r\nb.dcm,0.2,\r\nb.dcm,0.3,\r\nc.png,,"bad\nfile', encoding="utf-8")
    assert [r["path"] for r in read_complete_rows(p)] == ["a.png", "b.dcm", "b.dcm"]
    # the last file's rows go too: a multi-frame file may have been cut between frames
    assert [r["path"] for r in read_complete_rows(p, drop_last_file=True)] == ["a.png"]
    p.write_text('path,probability,error\r\na.png,0.1,"two\r\nlines"\r\nb.png,0.2,"cut\r\n', encoding="utf-8")
    assert [r["path"] for r in read_complete_rows(p)] == ["a.png"]
    p.write_text("x,y\r\n1,2\r\n", encoding="utf-8")
    with pytest.raises(FracdetError, match="no 'path' column"):
        read_complete_rows(p)


def test_resume_needs_a_csv(tmp_path, capsys):
    with pytest.raises(FracdetError, match="continues a .csv"):
        PredictionWriter(tmp_path / "o.json", resume=True)
    assert main(["predict", str(tmp_path), "--resume"]) == 2
    assert "--resume continues a --out FILE.csv" in capsys.readouterr().err


def test_an_exception_keeps_the_rows_written_so_far(tmp_path):
    from fracdet.inference.prediction import Prediction

    out = tmp_path / "o.csv"
    out.write_text("old complete output\n")
    with pytest.raises(RuntimeError):
        with PredictionWriter(out) as w:
            w.add(Prediction(path="a.png", probability=0.25, label="not fractured", threshold=0.5))
            assert [r["path"] for r in read_complete_rows(partial_path(out))] == ["a.png"]  # flushed already
            raise RuntimeError("killed")
    assert out.read_text() == "old complete output\n", "the old output stays whole until a run completes"
    with PredictionWriter(out, resume=True) as w:
        assert w.finished == set()  # the last file of a journal is redone
        w.add(Prediction(path="a.png", probability=0.25, label="not fractured", threshold=0.5))
        w.add(Prediction(path="b.png", probability=0.75, label="fractured", threshold=0.5))
    assert [r["path"] for r in _rows(out)] == ["a.png", "b.png"]


@pytest.mark.slow
def test_a_sigkilled_predict_resumes(tmp_path):
    model = tiny_model_file(tmp_path)
    images = _images(tmp_path / "in", 400)
    out = tmp_path / "out.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "fracdet", "predict", str(tmp_path / "in"), "--model", str(model), "--out", str(out),
           "--quiet", "--batch-size", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = partial_path(out)
    deadline = time.monotonic() + 300
    while not (journal.is_file() and journal.read_text().count("\n") > 20):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not out.exists()
    done = len(read_complete_rows(journal))
    assert 20 <= done < len(images), "killed after the run ended"
    proc = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == sorted(map(str, images))

"""Every entry point survives a hostile batch (issue 14, item 4).

One folder holds good radiographs and everything a careless or hostile sender may put
beside them: zero-byte, truncated and corrupt JPEG/PNG/DICOM, text named ``.jpg``, a
decompression bomb (a PNG and a DICOM whose headers claim 30000×30000 / 60000×60000),
16-bit, palette, CMYK and RGBA images, 1×1 and 20000-px-wide images, names with spaces and
non-ASCII characters, an unreadable file, a FIFO, a symbolic-link loop. ``fracdet predict``
(CLI and Python API), ``fracdet audit``, ``fracdet explain`` and ``fracdet evaluate`` each
give one error row (or skip line) per bad file, complete the rest, and never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synth import write_image

from fracdet.cli import main

# name -> what it must give: "ok" (a prediction) or "error" (an error row / skip line).
# Good images and readable oddities sit in the class folders; every file is listed here.
GOOD = "ok"
BAD = "error"
REFUSED = "not assessable"  # read, but not an image the model can judge (fracdet.io.quality): no verdict, no error


def _png_claiming(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1) * 4))
            + chunk(b"IEND", b""))


def _encoded(a: np.ndarray, mode: str, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).convert(mode).save(buf, fmt, **kw) if mode != "I;16" else \
        Image.fromarray(a.astype(np.uint16) * 257).save(buf, fmt, **kw)
    return buf.getvalue()


def _dicom_bytes(pixels: np.ndarray, **elements) -> bytes | None:
    """A DX file of ``pixels`` (16 bits stored), or None without pydicom."""
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return None
    from synth import dicom_bytes

    return dicom_bytes(pixels, BodyPartExamined="HAND", **elements)


def build_hostile(root: Path, fifo: bool = True, loop: bool = True) -> dict[str, str]:
    """Write the hostile batch under root/{fractured,not_fractured}; returns {relative path: ok|error}."""
    from synth import xray_array

    expect: dict[str, str] = {}
    rng = np.random.default_rng(0)

    def put(rel: str, data: bytes | None, outcome: str) -> None:
        if data is None:
            return
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        expect[rel] = outcome

    for label, folder in ((1, "fractured"), (0, "not_fractured")):
        for i in range(3):
            write_image(root / folder / f"good_{i}.png", bool(label), label * 10 + i)
            expect[f"{folder}/good_{i}.png"] = GOOD
    a = xray_array(True, 7, (96, 80))
    jpg = _encoded(a, "L", "JPEG", quality=90)
    png = _encoded(a, "L", "PNG")
    dcm = _dicom_bytes(a.astype(np.uint16) * 16)
    f, n = "fractured", "not_fractured"
    put(f"{f}/zero.jpg", b"", BAD)
    put(f"{f}/zero.png", b"", BAD)
    put(f"{n}/zero.dcm", b"", BAD)
    put(f"{f}/truncated.jpg", jpg[:200], BAD)  # the header and a few bytes of scan
    put(f"{n}/truncated.png", png[: len(png) // 3], GOOD)  # decoded as far as present, with a warning
    put(f"{f}/truncated.dcm", dcm[: len(dcm) // 2] if dcm else None, BAD)
    put(f"{n}/corrupt.jpg", jpg[:20] + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(), BAD)
    put(f"{f}/corrupt.png", png[:33] + b"\x00\x00\x10\x00IDAT" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), BAD)
    put(f"{n}/corrupt.dcm", b"\x00" * 128 + b"DICM" + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(), BAD)
    put(f"{f}/text.jpg", b"this is a text file, not a JPEG\n" * 5, BAD)
    put(f"{n}/bomb.png", _png_claiming(30000, 30000), BAD)
    if dcm is not None:
        bomb = _dicom_bytes(np.zeros((16, 16), np.uint16))
        assert bomb is not None
        # the same header with Rows/Columns 60000: US tags (0028,0010)/(0028,0011) patched in place
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(bomb))
        ds.Rows = ds.Columns = 60000
        buf = io.BytesIO()
        ds.save_as(buf)
        put(f"{f}/bomb.dcm", buf.getvalue(), BAD)
        put(f"{n}/good.dcm", dcm, GOOD)
    put(f"{f}/sixteen bit.png", _encoded(a, "I;16", "PNG"), GOOD)
    put(f"{n}/palette.png", _encoded(a, "P", "PNG"), GOOD)
    put(f"{f}/cmyk.jpg", _encoded(np.stack([a, a // 2, 255 - a], -1), "CMYK", "JPEG"), REFUSED)  # a colour image
    rgba = np.dstack([np.stack([a, a, a], -1), np.full(a.shape, 200, np.uint8)])
    put(f"{n}/rgba.png", _encoded(rgba, "RGBA", "PNG"), GOOD)
    put(f"{f}/one.png", _encoded(np.zeros((1, 1), np.uint8), "L", "PNG"), BAD)
    put(f"{n}/wide.png", _encoded(np.tile(a[:32, :1], (1, 20000)), "L", "PNG"), REFUSED)  # 32 px high
    put(f"{f}/name with spaces.png", png, GOOD)
    put(f"{n}/röntgen 骨折 ü.png", png, GOOD)
    put(f"{f}/unreadable.png", png, GOOD if os.geteuid() == 0 else BAD)  # root reads a mode-000 file
    os.chmod(root / f"{f}/unreadable.png", 0)
    if fifo:
        os.mkfifo(root / f"{n}/pipe.jpg")
        expect[f"{n}/pipe.jpg"] = BAD
    if loop:
        (root / f"{f}/loop.jpg").symlink_to(root / f"{f}/loop.jpg")
        expect[f"{f}/loop.jpg"] = BAD
    (root / f"{n}/cycle").symlink_to(root)  # a folder loop: walks must not follow it
    return expect


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    from synth import tiny_model_file

    return tiny_model_file(tmp_path_factory.mktemp("hostile-model"), input_size=48, threshold=0.4, temperature=2.0)


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile") / "data"
    return root, build_hostile(root)


def _rel(root: Path, path: str) -> str:
    return Path(path).relative_to(root).as_posix()


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text, text


def _check_rows(root: Path, expect: dict[str, str], rows: dict[str, tuple[str | None, str | None]]) -> None:
    """rows: {relative path: (probability or None, error or None)} — one per file, right outcome."""
    assert sorted(rows) == sorted(expect)  # every file once; the folder loop was not followed
    for rel, outcome in expect.items():
        prob, error = rows[rel]
        if outcome == GOOD:
            assert prob is not None and not error, (rel, error)
            assert 0.0 <= float(prob) <= 1.0
        elif outcome == REFUSED:
            assert prob is None and not error, (rel, prob, error)
        else:
            assert prob is None and error, (rel, prob)
            assert "\n" not in error and "Traceback" not in error, (rel, error)


def test_cli_predict_survives(batch, model_path, tmp_path, capsys):
    root, expect = batch
    out = tmp_path / "rows.csv"
    code = main(["predict", str(root), "--model", str(model_path), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    _no_traceback(captured.err + captured.out)
    assert code == 1  # some files failed
    got = {_rel(root, r["path"]): (r["probability"] or None, r["error"] or None) for r in csv.DictReader(out.open())}
    _check_rows(root, expect, got)
    n_bad = sum(v == BAD for v in expect.values())
    assert f"{n_bad} of {len(expect)} file(s) could not be read" in captured.err


def test_python_api_survives(batch, model_path):
    from fracdet.inference import load_model

    root, expect = batch
    preds = list(load_model(model_path).predict_paths([root], batch_size=4))
    got = {_rel(root, p.path): (None if p.probability is None else str(p.probability), p.error) for p in preds}
    _check_rows(root, expect, got)
    for p in preds:  # the reasons a person reads
        if p.error:
            assert p.error.strip() and len(p.error) < 400, p.error
    reasons = {_rel(root, p.path): p.error for p in preds if p.error}
    assert "too large" in reasons["not_fractured/bomb.png"] and "FRACDET_MAX_PIXELS" in reasons["not_fractured/bomb.png"]
    assert "empty file" in reasons["fractured/zero.jpg"] and "empty file" in reasons["not_fractured/zero.dcm"]
    assert "too small" in reasons["fractured/one.png"]
    assert "text" in reasons["fractured/text.jpg"]
    assert "named pipe" in reasons["not_fractured/pipe.jpg"]
    assert "symbolic link loop" in reasons["fractured/loop.jpg"]
    if "fractured/bomb.dcm" in reasons:
        assert "too large" in reasons["fractured/bomb.dcm"]


def test_explain_survives(batch, model_path, tmp_path, capsys):
    root, expect = batch
    out = tmp_path / "explain"
    code = main(["explain", str(root), "--model", str(model_path), "--out", str(out)])
    captured = capsys.readouterr()
    _no_traceback(captured.err + captured.out)
    assert code == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    bad = sorted(rel for rel, v in expect.items() if v == BAD)
    assert sorted(_rel(root, line[len("error: "):].split(": ", 1)[0]) for line in errors) == bad
    assert len(list(out.glob("*.png"))) == sum(v == GOOD for v in expect.values())


def test_audit_survives(tmp_path, capsys):
    root = tmp_path / "data"
    expect = build_hostile(root, fifo=False, loop=False)  # those two: see the tests below
    report = tmp_path / "audit.json"
    code = main(["audit", str(root), "--json", str(report), "--no-cache"])
    captured = capsys.readouterr()
    _no_traceback(captured.err + captured.out)
    assert code in (0, 1)  # 1: the batch holds identical files under both labels (a conflict)
    files = {_rel(root, f["path"]): f for f in json.loads(report.read_text())["files"]}
    assert sorted(files) == sorted(expect)
    for rel, outcome in expect.items():
        assert files[rel]["ok"] is (outcome != BAD), (rel, files[rel].get("error"))
        if outcome == BAD:
            assert files[rel]["error"] and "\n" not in files[rel]["error"]


def test_evaluate_survives(tmp_path, model_path, capfd):  # capfd: skip lines go through logging
    root = tmp_path / "data"
    expect = build_hostile(root, loop=False)  # the symlink loop: see test_evaluate_with_a_symlink_loop
    out = tmp_path / "evaluation"
    code = main(["evaluate", str(root), "--model", str(model_path), "--out", str(out), "--bootstrap", "20"])
    captured = capfd.readouterr()
    _no_traceback(captured.err + captured.out)
    assert code == 0
    rows = {_rel(root, r["path"]) for r in csv.DictReader((out / "predictions.csv").open())}
    assert rows == {rel for rel, v in expect.items() if v != BAD}  # evaluate scores what it reads (no refusal)
    log = "".join((captured.out + captured.err).split())  # rich folds long lines, even inside a path
    bad = [rel for rel, v in expect.items() if v == BAD]
    assert log.count("skippingunreadable") == len(bad)  # one skip line per bad file, naming it
    for rel in bad:
        assert f"{rel}:" in log, rel


def test_audit_does_not_block_on_a_fifo(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "data"
    for label, folder in ((1, "fractured"), (0, "not_fractured")):
        for i in range(2):
            write_image(root / folder / f"good_{i}.png", bool(label), label * 10 + i)
    os.mkfifo(root / "fractured" / "pipe.jpg")
    try:
        proc = subprocess.run([sys.executable, "-m", "fracdet", "audit", str(root), "--json", str(tmp_path / "a.json"),
                               "--no-cache"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("fracdet audit blocked on a FIFO")
    assert proc.returncode in (0, 1) and "named pipe" in proc.stdout + proc.stderr


def test_audit_with_a_symlink_loop(tmp_path, capsys):
    root = tmp_path / "data"
    for label, folder in ((1, "fractured"), (0, "not_fractured")):
        for i in range(2):
            write_image(root / folder / f"good_{i}.png", bool(label), label * 10 + i)
    (root / "fractured" / "loop.jpg").symlink_to(root / "fractured" / "loop.jpg")
    code = main(["audit", str(root), "--json", str(tmp_path / "a.json"), "--no-cache"])
    err = capsys.readouterr().err
    _no_traceback(err)
    assert code in (0, 1), err


def test_evaluate_with_a_symlink_loop(tmp_path, model_path, capsys):
    root = tmp_path / "data"
    for label, folder in ((1, "fractured"), (0, "not_fractured")):
        for i in range(3):
            write_image(root / folder / f"good_{i}.png", bool(label), label * 10 + i)
    (root / "fractured" / "loop.jpg").symlink_to(root / "fractured" / "loop.jpg")
    code = main(["evaluate", str(root), "--model", str(model_path), "--out", str(tmp_path / "ev"), "--bootstrap", "20"])
    err = capsys.readouterr().err
    _no_traceback(err)
    assert code == 0, err


# ----------------------------------------------------------------------------- main: one line, exit 2


def _one_line(capsys, code: int) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured.err
    _no_traceback(captured.err)
    lines = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, captured.err
    return lines[0]


def _with_func(parser, func):
    sub = next(a for a in parser._actions if a.dest == "command")
    for p in sub.choices.values():
        p.set_defaults(func=func)
    return parser


def test_unexpected_exception_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys, tmp_path):
    from fracdet.cli import build_parser

    def boom(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr("fracdet.cli.build_parser", lambda: _with_func(build_parser(), boom))
    line = _one_line(capsys, main(["predict", str(tmp_path)]))
    assert line == "error: fracdet predict: RuntimeError: something broke (--debug shows the traceback)"
    for argv, env in ((["predict", str(tmp_path), "--debug"], None), (["--debug", "predict", str(tmp_path)], None),
                      (["predict", str(tmp_path)], "1")):
        if env:
            monkeypatch.setenv("FRACDET_DEBUG", env)
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback (most recent call last)" in err and "RuntimeError: something" in err
        assert err.strip().splitlines()[-1] == "error: fracdet predict: RuntimeError: something broke"
    monkeypatch.delenv("FRACDET_DEBUG")

    def missing(args):  # an OSError with a file name: the file and the reason
        raise FileNotFoundError(2, "No such file or directory", "/nowhere/x.csv")

    monkeypatch.setattr("fracdet.cli.build_parser", lambda: _with_func(build_parser(), missing))
    assert _one_line(capsys, main(["info"])) == "error: /nowhere/x.csv: No such file or directory"

    def memory(args):
        raise MemoryError()

    monkeypatch.setattr("fracdet.cli.build_parser", lambda: _with_func(build_parser(), memory))
    assert _one_line(capsys, main(["info"])) == (
        "error: fracdet info: MemoryError: (no message) (--debug shows the traceback)")


def _train_args(tmp_path: Path, *extra: str) -> list[str]:
    from synth import make_class_folders

    data = make_class_folders(tmp_path / "data", 4)
    return ["train", str(data), "--model", "simple_cnn", "--no-pretrained", "--out", str(tmp_path / "run"),
            "--epochs1", "1", "--epochs2", "1", "--no-int8", "--no-progress", *extra]


def test_bad_unfreeze_from_is_refused_before_training(tmp_path, capsys):
    line = _one_line(capsys, main(_train_args(tmp_path, "--unfreeze-from", "block9")))
    assert "unknown stage 'block9' for simple_cnn" in line and "block1, block2, block3, block4" in line
    assert not (tmp_path / "run").exists()  # refused before the run folder, the audit or phase 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_accelerator_gpu_without_a_gpu(tmp_path, capsys):
    line = _one_line(capsys, main(_train_args(tmp_path, "--accelerator", "gpu")))
    assert line == "error: --accelerator gpu: no gpu is available on this machine (use --accelerator cpu or auto)"
    assert not (tmp_path / "run").exists()
    line = _one_line(capsys, main(_train_args(tmp_path / "b", "--accelerator", "banana")))
    assert "unknown accelerator 'banana'" in line

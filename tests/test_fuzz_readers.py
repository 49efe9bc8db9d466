"""Property-based and fuzz tests of the readers (issue 14, item 4).

* Generated images — shapes, bit depths, modes (1, L, I;16, I, F, P, LA, RGB, RGBA, CMYK) and
  formats (PNG, TIFF, BMP, JPEG) — read back in the pixel convention: float32, H×W, [0, 1],
  exactly for the lossless grey ones.
* Byte mutations (flips, overwrites, insertions, deletions, truncation) of a valid JPEG, PNG,
  TIFF and DICOM never raise anything but :class:`~fracdet.errors.ImageReadError`.
* The atheris target ``tests/fuzz_readers.py`` runs for 60 s in a slow test.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fracdet.errors import ImageReadError
from fracdet.io import read_frames, read_image

from optional import missing_optional

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_DIR = Path(tempfile.mkdtemp(prefix="fracdet-hypothesis-"))

# mode -> (formats that store it, how to make its array from uint8 noise)
_MODES = {
    "1": (("PNG", "BMP", "TIFF"), lambda a: a > 127),
    "L": (("PNG", "BMP", "TIFF", "JPEG"), lambda a: a),
    "I;16": (("PNG", "TIFF"), lambda a: a.astype(np.uint16) * 257),
    "I": (("TIFF",), lambda a: a.astype(np.int32) * 65793 - 2**23),
    "F": (("TIFF",), lambda a: a.astype(np.float32) / 255.0),
    "P": (("PNG", "BMP"), lambda a: a),
    "LA": (("PNG",), lambda a: a),
    "RGB": (("PNG", "BMP", "TIFF", "JPEG"), lambda a: a),
    "RGBA": (("PNG", "TIFF"), lambda a: a),
    "CMYK": (("JPEG", "TIFF"), lambda a: a),
}
_CHANNELS = {"LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}
_SUFFIX = {"PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "JPEG": ".jpg"}


def _pil(mode: str, a: np.ndarray) -> Image.Image:
    arr = _MODES[mode][1](a)
    if mode == "1":
        return Image.fromarray(arr.astype(np.uint8) * 255, "L").convert("1")
    if mode == "P":
        return Image.fromarray(arr, "L").convert("P")
    if mode == "I;16":
        return Image.fromarray(arr)  # uint16 -> I;16
    if mode in _CHANNELS:
        return Image.frombytes(mode, (a.shape[1], a.shape[0]), np.ascontiguousarray(arr).tobytes())
    return Image.fromarray(arr)


def _convention(x, shape: tuple[int, int] | None = None) -> np.ndarray:
    px = x.pixels
    assert px.dtype == np.float32 and px.ndim == 2 and px.size > 0
    assert np.isfinite(px).all() and px.min() >= 0.0 and px.max() <= 1.0
    if shape is not None:
        assert px.shape == shape
    return px


@SETTINGS
@given(h=st.integers(16, 48), w=st.integers(16, 48), mode=st.sampled_from(sorted(_MODES)),
       fmt_index=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_generated_images_read_back_in_the_convention(h, w, mode, fmt_index, seed):
    formats = _MODES[mode][0]
    fmt = formats[fmt_index % len(formats)]
    rng = np.random.default_rng(seed)
    shape = (h, w, _CHANNELS[mode]) if mode in _CHANNELS else (h, w)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    im = _pil(mode, a)
    assert im.mode == mode
    path = _DIR / f"gen{_SUFFIX[fmt]}"
    im.save(path, fmt)
    px = _convention(read_image(path), (h, w))
    if fmt != "JPEG" and mode == "L":
        np.testing.assert_allclose(px, a / 255.0, atol=1e-6)
    if fmt != "JPEG" and mode == "I;16":
        np.testing.assert_allclose(px, a.astype(np.float64) * 257 / 65535.0, atol=1e-6)
    if mode == "F":
        np.testing.assert_allclose(px, a / 255.0, atol=1e-6)


# ----------------------------------------------------------------------------- byte mutations


def _seed_files() -> dict[str, bytes]:
    a = (np.add.outer(np.arange(40), np.arange(32)) * 3 % 256).astype(np.uint8)
    a[8:16, 8:16] = 250
    out = {}
    for fmt, mode in (("JPEG", "L"), ("PNG", "L"), ("PNG", "RGBA"), ("TIFF", "I;16")):
        buf = io.BytesIO()
        (Image.fromarray(a).convert(mode) if mode != "I;16" else Image.fromarray(a.astype(np.uint16) * 257)).save(buf, fmt)
        out[f"{fmt}-{mode}{_SUFFIX[fmt]}"] = buf.getvalue()
    try:
        import pydicom  # noqa: F401
    except ImportError:  # DICOM mutations need pydicom to build the seed
        return out
    from synth import dicom_bytes

    out["DICOM.dcm"] = dicom_bytes(np.stack([a, a[::-1]]), bits_stored=12, BodyPartExamined="HAND",
                                   PhotometricInterpretation="MONOCHROME1", RescaleSlope=2, RescaleIntercept=-100,
                                   WindowCenter=2048, WindowWidth=4096)
    return out


SEEDS = _seed_files()

_mutation = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("set"), st.floats(0, 1, exclude_max=True), st.sampled_from([0, 0xFF, 0x7F, 0x80, 0x01])),
    st.tuples(st.just("insert"), st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.floats(0, 1, exclude_max=True), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True), st.just(0)),
)


def _mutate(data: bytes, mutations) -> bytes:
    b = bytearray(data)
    for op, where, arg in mutations:
        if not b:
            break
        i = int(where * len(b))
        if op == "flip":
            b[i] ^= arg
        elif op == "set":
            b[i] = arg
        elif op == "insert":
            b[i:i] = arg
        elif op == "delete":
            del b[i:i + arg]
        else:
            del b[i:]
    return bytes(b)


@SETTINGS
@given(name=st.sampled_from(sorted(SEEDS)), mutations=st.lists(_mutation, min_size=1, max_size=6),
       suffix=st.sampled_from(["same", ".png", ".jpg", ".dcm", ""]))
def test_byte_mutations_raise_only_image_read_errors(name, mutations, suffix):
    data = _mutate(SEEDS[name], mutations)
    ext = Path(name).suffix if suffix == "same" else suffix
    path = _DIR / f"mutated{ext}"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncated files warn, and are then decoded
        try:
            _convention(read_image(path, max_pixels=4_000_000))
        except ImageReadError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(path))
        if ext == ".dcm":
            try:
                frames = read_frames(path, max_pixels=4_000_000)
                for i in range(min(2, len(frames))):
                    _convention(frames[i])
            except ImageReadError as exc:
                assert "\n" not in str(exc)


def test_unmutated_seeds_read():
    for name, data in SEEDS.items():
        path = _DIR / f"seed{Path(name).suffix}"
        path.write_bytes(data)
        _convention(read_image(path), (40, 32))


# ----------------------------------------------------------------------------- atheris


@pytest.mark.slow
def test_atheris_fuzz_readers_60s(tmp_path):
    try:
        import atheris  # noqa: F401
    except ImportError:
        missing_optional("atheris is not installed (pip install atheris; it needs a wheel or clang for this Python)")
    target = Path(__file__).with_name("fuzz_readers.py")
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(target), "--seed", str(corpus)], check=True, timeout=120)
    env = {**os.environ, "FRACDET_MAX_PIXELS": "4000000"}
    fuzz = [sys.executable, str(target), str(corpus), "-max_total_time=60", "-rss_limit_mb=3000",
            f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"]
    # libFuzzer's rss is the process's peak RSS, and on Linux a child started by fork/vfork + exec
    # inherits its parent's peak: from a pytest process that has grown past 3 GB the fuzzer was
    # "out of memory" before its first input.  A shell that forks the fuzzer (`; exit $?` keeps
    # it from exec'ing in place) gives it a peak of its own.
    proc = subprocess.run(["sh", "-c", '"$@"; exit $?', "sh", *fuzz],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    log = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines()
                    if not line.startswith("INFO: Instrumenting"))
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert proc.returncode == 0 and not crashes, f"fuzzing found a crash ({crashes}):\n{log[-6000:]}"
    assert "Done" in log and "runs in" in log

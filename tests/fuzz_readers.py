"""atheris fuzz target for the image and DICOM readers (issue 14).

Each input is written to a file and read with :func:`fracdet.io.read_image` (DICOM through
the registered reader) and, for DICOM, :func:`fracdet.io.read_frames` (first two frames).
The only exception allowed out is :class:`~fracdet.errors.ImageReadError`; anything else is
a crash. A result must hold the pixel convention (float32 H×W in [0, 1]).

    python tests/fuzz_readers.py CORPUS_DIR -max_total_time=60   # seeds: --seed CORPUS_DIR

``tests/test_fuzz_readers.py`` runs it for a bounded time in a slow test.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import warnings
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import numpy as np  # noqa: F401  (instrumented with the readers)
    from PIL import Image

    from fracdet.errors import ImageReadError
    from fracdet.io import read_frames, read_image

_SUFFIXES = (".png", ".jpg", ".dcm", ".tif", ".bmp", "")
_DIR = Path(tempfile.mkdtemp(prefix="fracdet-fuzz-"))


def _check(x) -> None:
    px = x.pixels
    if px.dtype != np.float32 or px.ndim != 2 or px.size == 0:
        raise AssertionError(f"pixel convention broken: {px.dtype} {px.shape}")
    if not (np.isfinite(px).all() and px.min() >= 0.0 and px.max() <= 1.0):
        raise AssertionError("pixel values outside [0, 1]")


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    if not data:
        return
    suffix = _SUFFIXES[data[0] % len(_SUFFIXES)]
    path = _DIR / f"input{suffix}"
    path.write_bytes(data[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _check(read_image(path, max_pixels=4_000_000))
        except ImageReadError:
            pass
        if suffix == ".dcm":
            try:
                frames = read_frames(path, max_pixels=4_000_000)
                for i in range(min(2, len(frames))):
                    _check(frames[i])
            except ImageReadError:
                pass


def write_seeds(folder: Path) -> None:
    """Valid PNG, JPEG, TIFF and DICOM files (prefixed with the byte that picks the suffix)."""
    folder.mkdir(parents=True, exist_ok=True)
    a = (np.add.outer(np.arange(24), np.arange(20)) * 5 % 256).astype(np.uint8)
    for k, (fmt, mode) in enumerate([("PNG", "L"), ("JPEG", "L"), ("PNG", "RGBA"), ("TIFF", "I;16")]):
        buf = io.BytesIO()
        im = Image.fromarray(a).convert(mode) if mode != "I;16" else Image.fromarray(a.astype(np.uint16) * 257)
        im.save(buf, fmt)
        prefix = {"PNG": 0, "JPEG": 1, "TIFF": 3}[fmt]
        (folder / f"seed{k}").write_bytes(bytes([prefix]) + buf.getvalue())
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return
    from synth import dicom_bytes

    frames = (np.arange(2 * 20 * 18, dtype=np.uint16) * 5).reshape(2, 20, 18)
    data = dicom_bytes(frames, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    (folder / "seed-dicom").write_bytes(bytes([2]) + data)


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--seed":
        write_seeds(Path(sys.argv[2]))
        return
    os.environ.setdefault("FRACDET_MAX_PIXELS", "4000000")
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

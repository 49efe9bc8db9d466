"""Inputs for the serving tests: small DICOM radiographs and hostile files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def write_dicom(path: Path, *, modality: str = "CR", study: str | None = None, size: int = 192,
                seed: int = 0) -> Path:
    """A minimal single-frame 12-bit CR file of the given modality: one of the sample films (by
    ``seed``), its shorter side ``size`` px, with faint seeded noise (a real radiograph, which the
    shipped model's out-of-distribution check accepts; synthetic shapes it refuses — and so may a film
    shrunk far below the model's 384 px input: at 96 px it refused two of the eight)."""
    from PIL import Image

    from synth import CR_STORAGE, dicom_bytes

    films = sorted((Path(__file__).resolve().parents[1] / "samples").glob("*/*.jpg"))
    rng = np.random.default_rng(seed)
    with Image.open(films[seed % len(films)]) as im:
        im = im.convert("L")
        scale = size / min(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
        film = np.asarray(im, np.float64) * 16
    pixels = (film + rng.normal(0, 4, film.shape)).clip(0, 4095).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dicom_bytes(pixels, sop_class=CR_STORAGE, modality=modality, bits_stored=12, study=study,
                                 BodyPartExamined="HAND", ViewPosition="PA"))
    return path


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims ``width`` × ``height`` pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")

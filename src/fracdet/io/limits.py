"""The pixel limit: the largest image (or DICOM frame) fracdet decodes, checked from the
header before any pixel is decoded (a leaf shared by the image and DICOM readers)."""

from __future__ import annotations

import contextvars
import os
from pathlib import Path

from fracdet.errors import FracdetError, ImageReadError

DEFAULT_MAX_PIXELS = 100_000_000
"""Largest image (or DICOM frame) read, in pixels, unless ``$FRACDET_MAX_PIXELS`` or a
``max_pixels`` argument says otherwise: 100 Mpx, ~10000×10000 — above any radiograph
(a 43×43 cm detector at 100 µm is 18 Mpx), below what makes a 2-core machine swap
(100 Mpx decode to 400 MB of float32)."""
MAX_PIXELS_ENV = "FRACDET_MAX_PIXELS"
_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("fracdet_max_pixels", default=None)


def max_pixels(override: int | None = None) -> int:
    """The pixel limit in effect: ``override`` if given, else the one :func:`read_image` is
    applying (its ``max_pixels`` argument), else ``$FRACDET_MAX_PIXELS`` (an integer, ``1e8``
    allowed), else :data:`DEFAULT_MAX_PIXELS`."""
    if override is None:
        override = _LIMIT.get()
    if override is not None:
        return _positive(override)
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value <= 0:
        raise FracdetError(f"{MAX_PIXELS_ENV} must be a positive number of pixels, got {raw!r}")
    return value


def _positive(n: int) -> int:
    if int(n) <= 0:
        raise ValueError(f"max_pixels must be a positive number of pixels, got {n}")
    return int(n)


def check_pixel_limit(path: str | Path, width: int, height: int, frames: int = 1,
                      limit: int | None = None) -> None:
    """Raise :class:`ImageReadError` when one ``width``×``height`` image (each of
    ``frames`` frames) exceeds the pixel limit (:func:`max_pixels`) — called with header
    values, before any pixel is decoded."""
    limit = max_pixels(limit)
    w, h = int(width), int(height)
    if w < 0 or h < 0 or w * h > limit:
        what = "frame" if frames > 1 else "image"
        raise ImageReadError(
            path,
            f"{what} too large ({w}x{h} = {w * h / 1e6:.1f} Mpx; the limit is {limit / 1e6:g} Mpx, "
            f"set {MAX_PIXELS_ENV} to raise it)",
        )

"""The one pixel convention of fracdet: an :class:`XRay`.

``pixels`` is a float32 ``(H, W)`` array in ``[0, 1]`` with **bone bright**, exactly as an
X-ray viewer shows the film.  Every reader (:mod:`fracdet.io.images`, :mod:`fracdet.io.dicom`)
returns one; everything downstream takes one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIN_SIDE = 16
"""Images with either side below this many pixels are rejected."""


@dataclass
class XRay:
    """One decoded radiograph.

    ``pixels``: float32 ``(H, W)`` in ``[0, 1]``, bone bright. ``meta`` holds at least
    ``original_size`` (full-resolution ``(W, H)`` in the returned orientation, even when
    decoded at reduced scale), ``mode``, ``bit_depth``, ``format`` and ``truncated``.
    """

    pixels: np.ndarray
    path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

"""Reading X-ray images into one pixel convention.

Pixel convention (the only one used anywhere in fracdet): an :class:`XRay` holds a
``float32`` array of shape ``(H, W)`` with values in ``[0, 1]``, where **bone is
bright**, exactly as an X-ray viewer displays the film. Colour files are reduced to
luminance (ITU-R 601 weights), alpha is composited over black, 16-bit files are
scaled by their bit depth (``/65535``), and the EXIF orientation is applied so the
array is upright as displayed.

:func:`read_image` never lets a raw Pillow traceback escape: every failure is an
:class:`~fracdet.errors.ImageReadError` whose message is ``"<path>: <reason>"`` on
one line. Other formats plug in via :func:`register_reader`; registered readers are
tried, in registration order, before the built-in Pillow reader.

DICOM is registered here (reader ``"dicom"``): files with the ``DICM`` preamble — any
name, with or without extension — and ``.dcm``/``.dicom``/``.dic`` files are read by
:mod:`fracdet.io.dicom` (imported, with pydicom, only when such a file is read).
:func:`read_image` returns frame 0 of a multi-frame DICOM;
:func:`fracdet.io.dicom.read_frames` returns every frame, decoded one at a time.

**Pixel limit.** Hostile files claim huge sizes in a few header bytes (a 30000×30000
PNG is a few kilobytes). The size is checked from the header before anything is decoded
— Pillow opens lazily, DICOM headers are read without the pixel data — against
:data:`DEFAULT_MAX_PIXELS` (100 Mpx per image or DICOM frame), ``$FRACDET_MAX_PIXELS``,
or the ``max_pixels`` argument of :func:`read_image` (see :func:`max_pixels`). Pillow's
own ``MAX_IMAGE_PIXELS`` follows that limit and its ``DecompressionBombWarning``/``Error``
become the same one-line :class:`~fracdet.errors.ImageReadError`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from fracdet.errors import ImageReadError
from fracdet.io.limits import (  # noqa: F401  (re-exported: the limit is part of reading images)
    _LIMIT,
    _positive,
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    check_pixel_limit,
    max_pixels,
)
from fracdet.io.quality import colour_fraction
from fracdet.io.xray import MIN_SIDE, XRay

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "MIN_SIDE",
    "XRay",
    "has_dicom_preamble",
    "is_dicom_file",
    "is_image_file",
    "looks_like_image",
    "iter_image_files",
    "max_pixels",
    "check_pixel_limit",
    "read_image",
    "register_reader",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"}
)
DICOM_EXTENSIONS: frozenset[str] = frozenset({".dcm", ".dicom", ".dic"})

_HEAD_BYTES = 132

def _sync_pillow(limit: int) -> None:
    """Pillow's own bomb check (a warning above ``MAX_IMAGE_PIXELS``, an error above twice
    that) must not refuse what ``limit`` allows; it is only ever raised here (the global is
    shared between threads), and :func:`check_pixel_limit` applies the actual limit."""
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < limit:
        Image.MAX_IMAGE_PIXELS = limit


_sync_pillow(DEFAULT_MAX_PIXELS)
_TRUNCATED_LOCK = threading.Lock()
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class _Reader:
    name: str
    can_read: Callable[[Path, bytes], bool]
    read: Callable[[Path, int | None], XRay]


_READERS: list[_Reader] = []


def register_reader(
    name: str,
    can_read: Callable[[Path, bytes], bool],
    read: Callable[[Path, int | None], XRay],
) -> None:
    """Register a reader tried before Pillow; re-registering ``name`` replaces it.

    ``can_read(path, head)`` receives the path and the file's first 132 bytes;
    ``read(path, min_size)`` returns an :class:`XRay` in the package convention.
    """
    _READERS[:] = [r for r in _READERS if r.name != name]
    _READERS.append(_Reader(name, can_read, read))


def is_image_file(path: str | Path) -> bool:
    """True when ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def has_dicom_preamble(path: str | Path) -> bool:
    """True when the file carries the DICOM Part 10 marker ``DICM`` at byte 128."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never open a FIFO: it would block
            return False
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError:
        return False
    return _is_dicm(head)


def _is_dicm(head: bytes) -> bool:
    return len(head) >= _HEAD_BYTES and head[128:132] == b"DICM"


def is_dicom_file(path: str | Path) -> bool:
    """True for a DICOM extension (``.dcm``, ``.dicom``, ``.dic``) or the ``DICM`` preamble."""
    p = Path(path)
    return p.suffix.lower() in DICOM_EXTENSIONS or (p.is_file() and has_dicom_preamble(p))


def looks_like_image(path: str | Path) -> bool:
    """What folder walks keep: an image extension (:func:`is_image_file`), or any other
    name — extensionless or UID-like (``1.2.840...``) — whose content starts with the
    DICOM preamble. ``DICOMDIR`` index files are left out."""
    p = Path(path)
    if is_image_file(p) or p.suffix.lower() in DICOM_EXTENSIONS:
        return True
    if p.name.upper() == "DICOMDIR":
        return False
    return has_dicom_preamble(p)


def iter_image_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Yield files as given (any extension) and image files found under folders.

    Folders are walked recursively in sorted order; hidden files and folders are
    skipped. Files found in folders are kept when :func:`looks_like_image` (image
    extension, or DICOM detected by its preamble whatever the name). Given files are
    yielded even if missing or not images, so the caller can report them.
    """
    for item in paths:
        p = Path(item)
        if not p.is_dir():
            yield p
            continue
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith(".") and looks_like_image(Path(dirpath) / name):
                    yield Path(dirpath) / name


def read_image(path: str | Path, min_size: int | None = None, max_pixels: int | None = None) -> XRay:
    """Read one image file as an :class:`XRay` (see the module docstring).

    ``min_size``: the caller needs the shorter side to be at least this many pixels;
    large JPEGs are then decoded at a reduced scale (much faster), never below it.
    ``max_pixels``: refuse larger images (each DICOM frame) before decoding them; default
    :func:`max_pixels` (``$FRACDET_MAX_PIXELS`` or 100 Mpx).
    Raises :class:`ImageReadError` on any failure.
    """
    token = _LIMIT.set(None if max_pixels is None else _positive(max_pixels))
    try:
        return _read_image(Path(path), min_size)
    finally:
        _LIMIT.reset(token)


def _read_image(p: Path, min_size: int | None) -> XRay:
    if not p.exists():
        if p.is_symlink():
            raise ImageReadError(p, "broken symbolic link or symbolic link loop")
        raise ImageReadError(p, "file not found")
    if p.is_dir():
        raise ImageReadError(p, "is a folder, not an image file")
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block open() forever, a device reads forever
            raise ImageReadError(p, f"not a regular file ({file_kind(st.st_mode)})")
        size = st.st_size
        with open(p, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError as exc:
        raise ImageReadError(p, f"cannot open file ({exc.strerror or exc})") from None
    if size == 0:
        raise ImageReadError(p, "empty file (0 bytes)")

    for reader in _READERS:
        try:
            accepted = bool(reader.can_read(p, head))
        except Exception as exc:  # a broken plug-in must not break reading
            logger.debug("reader %s: can_read failed on %s: %s", reader.name, p, exc)
            accepted = False
        if accepted:
            try:
                xray = reader.read(p, min_size)
            except ImageReadError:
                raise
            except Exception as exc:
                raise ImageReadError(p, f"{reader.name} reader failed: {_one_line(exc)}") from None
            _check_size(p, xray.meta.get("original_size", xray.pixels.shape[::-1]))
            return xray
    try:
        return _read_pil(p, min_size, head)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(p, "image too large to decode (out of memory)") from None
    except Exception as exc:  # Pillow on a hostile file: struct.error, IndexError, ... - one line
        raise ImageReadError(p, f"corrupt image data ({type(exc).__name__}: {_one_line(exc)})") from None


# ----------------------------------------------------------------------------- Pillow


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (from its ``st_mode``)."""
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a plain file"


def _check_size(p: Path, size: tuple[int, int]) -> None:
    w, h = int(size[0]), int(size[1])
    if min(w, h) < MIN_SIDE:
        raise ImageReadError(
            p, f"image too small ({w}x{h} px; each side must be at least {MIN_SIDE} px)"
        )


def looks_like_text(head: bytes) -> bool:
    """Whether a file's first bytes read as UTF-8 text (no NUL byte): a text file named like an image."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _unidentified_reason(p: Path, head: bytes) -> str:
    ext = p.suffix.lower() or "(no extension)"
    if p.suffix.lower() in DICOM_EXTENSIONS:
        return "DICOM file but no DICOM reader is available"
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        kind = "text, not image data" if looks_like_text(head) else "not valid image data"
        return f"corrupt or not an image: '{ext}' file contains {kind}"
    kind = "a text file" if looks_like_text(head) else "not a recognised image"
    supported = ", ".join(sorted(IMAGE_EXTENSIONS))
    return f"unsupported file type '{ext}': {kind} (supported: {supported})"


def _open(p: Path, head: bytes, min_size: int | None) -> tuple[Image.Image, dict[str, Any]]:
    limit = max_pixels()
    _sync_pillow(limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(p)
    except UnidentifiedImageError:
        raise ImageReadError(p, _unidentified_reason(p, head)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(claimed.group(1)) / 1e6:.1f} Mpx" if claimed else "header size"
        raise ImageReadError(
            p, f"image too large ({size}; the limit is {limit / 1e6:g} Mpx, set {MAX_PIXELS_ENV} to raise it)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise ImageReadError(p, f"corrupt image data ({_one_line(exc)})") from None
    try:
        check_pixel_limit(p, *im.size, limit=limit)  # from the header: nothing decoded yet
    except ImageReadError:
        im.close()
        raise
    try:
        n_frames = int(getattr(im, "n_frames", 1))
    except Exception:  # counting frames seeks through the file: a corrupt one fails here
        n_frames = 1
    meta: dict[str, Any] = {
        "format": im.format,
        "mode": im.mode,
        "stored_size": im.size,
        "frames": n_frames,
    }
    try:
        _check_size(p, im.size)
    except ImageReadError:
        im.close()
        raise
    if min_size and im.format == "JPEG" and im.mode in ("RGB", "L"):
        # Decode straight to luminance (JPEG's Y channel is the ITU-R 601 luma used for
        # colour files anyway) and, when the file is much larger than needed, at 1/2, 1/4
        # or 1/8 scale: 3-4x faster decoding, measured on FracAtlas.
        target = max(int(min_size), MIN_SIDE)
        w, h = im.size
        req = (w, h)
        if min(w, h) >= 2 * target:
            scale = target / min(w, h)
            req = (max(target, math.ceil(w * scale)), max(target, math.ceil(h * scale)))
        if im.mode == "RGB":  # luminance-only decoding drops the colour: measure it first, at 1/8 scale
            meta["colour_fraction"] = _jpeg_colour_fraction(p, im.size)
        try:
            im.draft("L", req)
        except (OSError, ValueError) as exc:  # pragma: no cover - best effort
            logger.debug("draft failed on %s: %s", p, exc)
    return im, meta


def _jpeg_colour_fraction(p: Path, size: tuple[int, int]) -> float | None:
    """:func:`~fracdet.io.quality.colour_fraction` of a colour JPEG decoded at 1/8 scale (cheap)."""
    try:
        with Image.open(p) as im:
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            return colour_fraction(np.asarray(im.convert("RGB")))
    except Exception as exc:  # a truncated or odd file: the full decode reports it
        logger.debug("%s: colour not measured (%s)", p, _one_line(exc))
        return None


def _load(p: Path, head: bytes, min_size: int | None) -> tuple[Image.Image, dict[str, Any]]:
    """Open and fully decode; retry truncated files with truncated loading allowed."""
    im, meta = _open(p, head, min_size)
    try:
        im.load()
        meta["truncated"] = False
        return im, meta
    except OSError as exc:
        msg = str(exc)
        if "truncated" not in msg and "broken data stream" not in msg:
            im.close()
            raise ImageReadError(p, f"corrupt image data ({_one_line(exc)})") from None
    except (ValueError, SyntaxError, EOFError, MemoryError) as exc:
        im.close()
        raise ImageReadError(p, f"corrupt image data ({_one_line(exc)})") from None
    # Truncated: reopen and decode what is present. The flag is module-global in
    # Pillow, so it is flipped only under a lock and always restored.
    im.close()
    im, meta = _open(p, head, min_size)
    with _TRUNCATED_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            im.load()
        except Exception as exc:
            raise ImageReadError(p, f"corrupt image data ({_one_line(exc)})") from None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous
    warnings.warn(f"{p}: truncated image, decoded what was present", stacklevel=3)
    meta["truncated"] = True
    return im, meta


def _to_float(im: Image.Image) -> tuple[np.ndarray, int]:
    """Convert a decoded image to float32 in [0, 1]: luminance H×W, or H×W×3/4 for colour
    modes (see :func:`_luminance`); returns (array, bits)."""
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im, dtype=np.float32) / 65535.0, 16
    if mode == "I":
        a = np.asarray(im, dtype=np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo >= 0 and hi <= 65535:
            return (a / 65535.0).astype(np.float32), 16
        return _minmax(a), 32
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        finite = a[np.isfinite(a)]
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        if finite.size and finite.min() >= 0 and finite.max() <= 1:
            return a.astype(np.float32), 32
        return _minmax(a), 32
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0, 1
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / 255.0, 8
    if mode == "P":
        has_alpha = "transparency" in im.info or (
            im.palette is not None and im.palette.mode == "RGBA"
        )
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    if mode in ("LA", "La", "PA"):
        la = np.asarray(im.convert("LA"), dtype=np.float32) / 255.0
        return la[..., 0] * la[..., 1], 8
    if mode not in ("RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in mode else "RGB")  # CMYK, YCbCr, LAB, RGBX, ...
        mode = im.mode
    a = np.asarray(im, dtype=np.float32) / 255.0
    return a, 8  # H×W×3 or ×4: colour, reduced by _luminance once measured


def _luminance(a: np.ndarray) -> np.ndarray:
    """ITU-R 601 luminance of an H×W×3 (RGB) or H×W×4 (RGBA, composited over black) array."""
    lum = a[..., :3] @ _LUMA
    if a.shape[-1] == 4:
        lum = lum * a[..., 3]
    return lum


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def _read_pil(p: Path, min_size: int | None, head: bytes) -> XRay:
    im, meta = _load(p, head, min_size)
    try:
        orientation = 1
        try:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
        except Exception:  # malformed EXIF: ignore orientation
            orientation = 1
        decoded_size = im.size
        if orientation != 1:
            try:
                im = ImageOps.exif_transpose(im)
            except Exception as exc:
                reason = _one_line(exc)
                warnings.warn(f"{p}: ignoring unreadable EXIF orientation ({reason})", stacklevel=3)
                orientation = 1
        try:
            pixels, bits = _to_float(im)
            if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):  # colour: measured before luminance
                meta["colour_fraction"] = colour_fraction(pixels)
                pixels = _luminance(pixels)
        except (OSError, ValueError, TypeError, MemoryError) as exc:
            reason = f"unsupported pixel format '{im.mode}' ({_one_line(exc)})"
            raise ImageReadError(p, reason) from None
    finally:
        im.close()
    pixels = np.ascontiguousarray(np.clip(pixels, 0.0, 1.0), dtype=np.float32)
    if pixels.ndim != 2:
        raise ImageReadError(p, f"unsupported pixel layout (array shape {pixels.shape})")
    if meta.get("truncated") and pixels.size and float(pixels.min()) == float(pixels.max()):
        # Pillow's truncated mode fills what it cannot decode: a uniform result means nothing was
        raise ImageReadError(p, "corrupt or truncated image data (nothing could be decoded)")
    w, h = meta.pop("stored_size")
    swapped = orientation in (5, 6, 7, 8)
    meta.update(
        original_size=(h, w) if swapped else (w, h),
        bit_depth=bits,
        orientation=orientation,
        scale=pixels.shape[0] / (w if swapped else h),
    )
    if decoded_size != (w, h):
        logger.debug("%s: decoded at reduced scale %s from %s", p, decoded_size, (w, h))
    return XRay(pixels=pixels, path=str(p), meta=meta)


# ----------------------------------------------------------------------------- DICOM


def _dicom_can_read(path: Path, head: bytes) -> bool:
    return _is_dicm(head) or path.suffix.lower() in DICOM_EXTENSIONS


def _dicom_read(path: Path, min_size: int | None) -> XRay:
    from fracdet.io.dicom import read_dicom  # lazy: pydicom only when a DICOM is read

    return read_dicom(path, min_size)


register_reader("dicom", _dicom_can_read, _dicom_read)

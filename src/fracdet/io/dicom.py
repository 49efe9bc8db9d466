"""Reading DICOM radiographs into the package's pixel convention, as a viewer shows them.

The grayscale pipeline, in the order PS3.3/PS3.4 define it:

1. **Stored values** — decoded by pydicom (uncompressed, either endianness) or, for
   compressed transfer syntaxes, by the pylibjpeg plug-ins (JPEG baseline/extended/
   lossless and JPEG-LS via ``pylibjpeg-libjpeg``, JPEG 2000 via ``pylibjpeg-openjpeg``,
   RLE via ``pylibjpeg-rle``). Values are masked to *Bits Stored* and sign-extended when
   *Pixel Representation* is 1, so bits above *High Bit* (overlays, junk) never leak in.
2. **Modality LUT** — the *Modality LUT Sequence* or *Rescale Slope/Intercept*
   (``pydicom.pixels.apply_modality_lut``).
3. **VOI** — the *VOI LUT Sequence* when present (pydicom's ``apply_voi``, as
   ``apply_voi_lut(prefer_lut=True)`` chooses), otherwise *Window Center/Width* with
   the *VOI LUT Function* (LINEAR, LINEAR_EXACT, SIGMOID; PS3.3 C.11.2.1.2). The first
   VOI (index 0) is used unless :class:`DicomOptions` ``window`` says otherwise;
   ``window=None`` ignores the stored VOI. **Scaling to [0, 1]:** a window maps its
   range onto [0, 1]; a VOI LUT maps [min, max] of its output entries onto [0, 1]; with
   no VOI (or ``window=None``) the min–max of the frame's modality values is stretched
   to [0, 1] (not the Bits Stored range, which leaves 12-in-16-bit and rescaled data
   nearly black).
4. **Polarity** — MONOCHROME1 is inverted (minimum value white) so that bone is
   bright as in MONOCHROME2. *Presentation LUT Shape* INVERSE inverts a MONOCHROME2
   image; on a MONOCHROME1 image it describes that same inversion (the DX IOD
   requires INVERSE with MONOCHROME1, PS3.3 C.8.11.6.1.2) and is not applied twice.
5. The result is float32 H×W in [0, 1], bone bright (see :mod:`fracdet.io.images`).

Colour (RGB, YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT; pydicom and the JPEG 2000
decoder return RGB) is scaled by its Bits Stored range and reduced to luminance with
the same ITU-R 601 weights as other images. PALETTE COLOR and other interpretations
are refused unless forced (palette images are then expanded through their colour LUT).

**Limits.** Rows×Columns of a frame is checked against the pixel limit
(:func:`fracdet.io.limits.max_pixels`: ``max_pixels`` argument, ``$FRACDET_MAX_PIXELS``, 100 Mpx)
from a header read that stops before the pixel data, so a file claiming a huge frame is
refused before its pixel data is read or decoded. FIFOs, sockets and devices are refused
without being opened.

**What is refused.** A modality that is not a projection radiograph (CT, MR, US, NM,
PT, ...; see :data:`RADIOGRAPH_MODALITIES`) and unsupported photometric
interpretations raise :class:`~fracdet.errors.ImageReadError` unless
``DicomOptions(force=True)`` (CLI ``--force``). Files with no pixel data (reports,
presentation states, DICOMDIR), encapsulated documents (PDF/CDA) and corrupt or
truncated files always raise it, with a one-line reason.

**Frames.** :func:`read_frames` returns one :class:`XRay` per frame
(``meta["frame"]`` = 0, 1, ...) as a lazy sequence (:class:`Frames`): each frame is decoded
when it is taken (``pydicom.pixels.pixel_array(ds, index=i)``), so iterating a 500-frame file
holds one decoded frame at a time. :func:`read_dicom` — what
:func:`fracdet.io.read_image` uses for DICOM, e.g. in training — returns frame 0 only,
with ``meta["frames"]`` giving the count, so a multi-frame file is one training image.

**Metadata** in ``XRay.meta``: ``sop_uid``, ``study_uid``, ``series_uid``,
``body_part``, ``view`` (View Position), ``laterality``, ``modality``, ``frame``,
``frames``, ``photometric``, ``transfer_syntax``, ``voi`` (what display transform was
applied) plus the common keys (``format="DICOM"``, ``original_size``, ``bit_depth``,
...). No patient-identifying attributes are copied.

pydicom is imported lazily; without it reading a DICOM file raises a one-line
:class:`~fracdet.errors.ImageReadError` saying ``pip install 'fracdet[dicom]'``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import operator
import os
import stat
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fracdet.errors import ImageReadError
from fracdet.io.limits import check_pixel_limit
from fracdet.io.quality import colour_fraction
from fracdet.io.xray import MIN_SIDE, XRay

__all__ = [
    "COLOUR_PHOTOMETRICS",
    "DICOM_META_KEYS",
    "DicomOptions",
    "Frames",
    "GRAYSCALE_PHOTOMETRICS",
    "RADIOGRAPH_MODALITIES",
    "dicom_options",
    "display_pixels",
    "get_options",
    "modality_values",
    "read_dicom",
    "read_frames",
    "voi_values",
]

logger = logging.getLogger(__name__)

RADIOGRAPH_MODALITIES: frozenset[str] = frozenset(
    {"CR", "DX", "DR", "RG", "RF", "XA", "PX", "IO", "MG", "OT", "SC", ""}
)
"""Modalities read without ``force``: computed/digital radiography (CR, DX and the
non-standard DR), radiographic imaging (RG), fluoroscopy/angiography (RF, XA), dental
(PX, IO), mammography (MG), and secondary captures / digitised film (OT, SC, or no
Modality at all)."""

GRAYSCALE_PHOTOMETRICS = frozenset({"MONOCHROME1", "MONOCHROME2"})
COLOUR_PHOTOMETRICS = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})

DICOM_META_KEYS = (
    "study_uid", "series_uid", "sop_uid", "modality", "body_part", "view", "laterality",
)
_META_TAGS = {
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "sop_uid": "SOPInstanceUID",
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "view": "ViewPosition",
}
_ENCAPSULATED_DOC_PREFIX = "1.2.840.10008.5.1.4.1.1.104."
_INSTALL_HINT = "pip install 'fracdet[dicom]'"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


@dataclass(frozen=True)
class DicomOptions:
    """How DICOM files are read.

    ``force``: read modalities and photometric interpretations that are refused by
    default. ``window``: index of the VOI LUT / window to apply (0 = the first, as a
    viewer opens the image); ``None`` ignores the stored VOI and stretches the min–max
    of the modality values.
    """

    force: bool = False
    window: int | None = 0


_OPTIONS: contextvars.ContextVar[DicomOptions] = contextvars.ContextVar(
    "fracdet_dicom_options", default=DicomOptions()
)


def get_options() -> DicomOptions:
    """The options in effect (set with :func:`dicom_options`)."""
    return _OPTIONS.get()


@contextlib.contextmanager
def dicom_options(options: DicomOptions | None = None, **kwargs: Any) -> Iterator[DicomOptions]:
    """Use ``options`` (or ``DicomOptions(**kwargs)``) for DICOM reads inside the block,
    including those made through :func:`fracdet.io.read_image`."""
    opts = options if options is not None else DicomOptions(**kwargs)
    token = _OPTIONS.set(opts)
    try:
        yield opts
    finally:
        _OPTIONS.reset(token)


# ----------------------------------------------------------------------------- helpers


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _error(path: Path, reason: str, meta: dict[str, Any] | None = None) -> ImageReadError:
    err = ImageReadError(path, reason)
    err.meta = dict(meta or {})  # type: ignore[attr-defined]  # carried into error rows
    return err


def _pydicom(path: Path) -> Any:
    try:
        import pydicom
    except ImportError:
        raise _error(path, f"DICOM support is not installed ({_INSTALL_HINT})") from None
    return pydicom


def _str(ds: Any, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    if value is None:
        return ""
    return " ".join(str(value).split())


def _header_meta(ds: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, kw in _META_TAGS.items():
        value = _str(ds, kw)
        if value:
            meta[key] = value.upper() if key == "modality" else value
    laterality = _str(ds, "ImageLaterality") or _str(ds, "Laterality")
    if laterality:
        meta["laterality"] = laterality
    return meta


def _header_limit(pydicom: Any, path: Path, limit: int | None) -> None:
    """Check Rows×Columns against the pixel limit from a header read that stops before the
    pixel data. A header that cannot be read is left to the full read, which says why."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            head = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                                   specific_tags=["Rows", "Columns", "NumberOfFrames"])
            rows, cols = int(head.Rows), int(head.Columns)
            frames = max(1, int(head.get("NumberOfFrames") or 1))
    except Exception:
        return
    check_pixel_limit(path, cols, rows, frames, limit=limit)


def _read_dataset(path: Path, limit: int | None = None) -> Any:
    pydicom = _pydicom(path)
    from pydicom.errors import InvalidDicomError

    _header_limit(pydicom, path, limit)

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ds = pydicom.dcmread(path)
            except InvalidDicomError:
                # A .dcm with no preamble/meta header (old ACR-NEMA style): try harder,
                # then check that it parsed into something image-like.
                ds = pydicom.dcmread(path, force=True)
                if "PixelData" not in ds and "Rows" not in ds and "SOPClassUID" not in ds:
                    raise InvalidDicomError("no DICOM preamble and no DICOM elements") from None
                _guess_transfer_syntax(ds)
    except InvalidDicomError as exc:
        raise _error(path, f"not a DICOM file ({_one_line(exc)})") from None
    except MemoryError:
        raise _error(path, "DICOM file too large to read") from None
    except Exception as exc:
        raise _error(path, f"corrupt or truncated DICOM file ({_one_line(exc)})") from None
    truncated = [w for w in caught if "end of file" in str(w.message).lower()]
    if truncated:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = _header_meta(ds)
        raise _error(path, "truncated DICOM file (end of file reached inside the data)", meta)
    return ds


def _guess_transfer_syntax(ds: Any) -> None:
    """Files without a File Meta header are uncompressed; record how they were parsed."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in ds.file_meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit is None:
        implicit = True
    if little is None:
        little = True
    ds.file_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def _sop_class_name(ds: Any) -> str:
    uid = ds.get("SOPClassUID") or (ds.get("file_meta") or {}).get("MediaStorageSOPClassUID")
    if uid is None:
        return "unknown SOP class"
    try:
        name = uid.name
    except Exception:
        name = str(uid)
    return str(name)


def _check_dataset(path: Path, ds: Any, opts: DicomOptions, meta: dict[str, Any]) -> str:
    """Refuse what fracdet cannot judge; returns the photometric interpretation."""
    sop = str(ds.get("SOPClassUID") or "")
    if "EncapsulatedDocument" in ds or sop.startswith(_ENCAPSULATED_DOC_PREFIX):
        mime = _str(ds, "MIMETypeOfEncapsulatedDocument") or _sop_class_name(ds)
        raise _error(path, f"encapsulated document ({mime}), not an image", meta)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if "Rows" in ds and "Columns" in ds:
            reason = "no pixel data (file truncated or pixel data missing)"
        else:
            reason = f"no pixel data ({_sop_class_name(ds)}), not an image"
        raise _error(path, reason, meta)
    modality = meta.get("modality", "")
    if modality not in RADIOGRAPH_MODALITIES:
        if not opts.force:
            raise _error(
                path,
                f"modality {modality} is not a radiograph; fracdet judges X-ray radiographs "
                "(CR, DX, RG, ...) — use --force to predict anyway",
                meta,
            )
        meta["forced"] = f"modality {modality}"
    photometric = _str(ds, "PhotometricInterpretation").upper()
    samples = int(ds.get("SamplesPerPixel") or 1)
    if not photometric:
        photometric = "MONOCHROME2" if samples == 1 else "RGB"
    if photometric not in GRAYSCALE_PHOTOMETRICS | COLOUR_PHOTOMETRICS:
        if not opts.force:
            raise _error(
                path,
                f"unsupported photometric interpretation {photometric} (supported: "
                "MONOCHROME1, MONOCHROME2, RGB, YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT) "
                "— use --force to read it anyway",
                meta,
            )
        meta["forced"] = ", ".join(filter(None, [meta.get("forced"), f"photometric {photometric}"]))
    return photometric


def _decode(path: Path, ds: Any, index: int | None, meta: dict[str, Any]) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, index=index)
    except MemoryError:
        raise _error(path, "pixel data too large to decode", meta) from None
    except Exception as exc:
        msg = _one_line(exc)
        tsyntax = meta.get("transfer_syntax", "unknown transfer syntax")
        if "plugin" in msg.lower() or "no pixel data decoders" in msg.lower():
            reason = f"cannot decode {tsyntax}: no decoder installed ({_INSTALL_HINT})"
        else:
            reason = f"corrupt or truncated pixel data ({tsyntax}: {msg})"
        raise _error(path, reason, meta) from None
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _bits_stored(ds: Any, arr: np.ndarray) -> int:
    default = arr.dtype.itemsize * 8
    try:
        bits = int(ds.get("BitsStored") or default)
    except (TypeError, ValueError):
        bits = default
    return max(1, min(bits, default))


def _mask_stored(ds: Any, arr: np.ndarray) -> np.ndarray:
    """Keep only Bits Stored bits, sign-extended when Pixel Representation is 1."""
    if arr.dtype.kind not in "iu":
        return arr
    bits = _bits_stored(ds, arr)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    if bits >= arr.dtype.itemsize * 8:
        if signed and arr.dtype.kind == "u":
            return arr.view(arr.dtype.str.replace("u", "i"))
        return arr
    a = arr.astype(np.int64) & ((1 << bits) - 1)
    if signed:
        a = np.where(a >= (1 << (bits - 1)), a - (1 << bits), a)
    return a


def modality_values(ds: Any, stored: np.ndarray) -> np.ndarray:
    """Stored values (masked to Bits Stored, sign-extended) → Modality LUT or rescale."""
    from pydicom.pixels import apply_modality_lut

    a = _mask_stored(ds, stored)
    if a.dtype.kind == "f":
        return a.astype(np.float64)
    return np.asarray(apply_modality_lut(a, ds), dtype=np.float64)


def _minmax(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.float64)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    out = np.where(finite, values, lo)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float64)
    return (out - lo) / (hi - lo)


def _multi(ds: Any, keyword: str) -> list[float]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    items = list(value) if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) else [value]
    out = []
    for v in items:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            return []
    return out


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 windowing, output in [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        out = (values - center) / width + 0.5
    else:  # LINEAR
        w1 = max(width - 1.0, 1e-12)
        out = (values - (center - 0.5)) / w1 + 0.5
    return np.clip(out, 0.0, 1.0)


def voi_values(ds: Any, values: np.ndarray, window: int | None = 0) -> tuple[np.ndarray, str]:
    """Modality values → displayed values in [0, 1] (before polarity); returns the
    values and a short description of the VOI used."""
    if window is None:
        return _minmax(values), "min-max (VOI ignored)"
    seq = ds.get("VOILUTSequence")
    if seq:
        from pydicom.pixels.processing import apply_voi

        idx = window if window < len(seq) else 0
        if idx != window:
            logger.warning("VOI LUT %d not present (%d stored); using the first", window, len(seq))
        item = seq[idx]
        desc = list(item.LUTDescriptor)
        n_entries = int(desc[0]) or 65536
        first = int(desc[1])
        # 16-bit first-mapped values may be stored as US though meant as SS
        if first >= 32768 and values.min() < 0:
            first -= 65536
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = np.asarray(apply_voi(values, ds, index=idx), dtype=np.float64)
            entries = np.asarray(
                apply_voi(np.arange(first, first + n_entries, dtype=np.float64), ds, index=idx),
                dtype=np.float64,
            )
        lo, hi = float(entries.min()), float(entries.max())
        if hi <= lo:
            return np.zeros(values.shape, dtype=np.float64), f"VOI LUT {idx} (constant)"
        return (out - lo) / (hi - lo), f"VOI LUT {idx}"
    centers, widths = _multi(ds, "WindowCenter"), _multi(ds, "WindowWidth")
    n = min(len(centers), len(widths))
    if n:
        idx = window if window < n else 0
        if idx != window:
            logger.warning("window %d not present (%d stored); using the first", window, n)
        c, w = centers[idx], widths[idx]
        function = _str(ds, "VOILUTFunction").upper() or "LINEAR"
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            function = "LINEAR"
        if w > (0 if function != "LINEAR" else 1):
            return _window(values, c, w, function), f"window {c:g}/{w:g} {function.lower()}"
    return _minmax(values), "min-max"


def _inverted(ds: Any, photometric: str) -> bool:
    if photometric == "MONOCHROME1":
        return True
    return _str(ds, "PresentationLUTShape").upper() == "INVERSE"


def display_pixels(
    ds: Any, stored: np.ndarray, photometric: str | None = None, window: int | None = 0,
    meta: dict[str, Any] | None = None,
) -> np.ndarray:
    """One decoded frame (H×W or H×W×3 stored values) → float32 H×W in [0, 1], bone bright."""
    photometric = photometric or (_str(ds, "PhotometricInterpretation").upper() or "MONOCHROME2")
    meta = meta if meta is not None else {}
    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples > 1 and stored.ndim == 3:
        bits = _bits_stored(ds, stored)
        if stored.dtype.kind == "f":
            rgb = _minmax(stored.astype(np.float64))
        else:
            rgb = stored.astype(np.float64) / float((1 << bits) - 1)
        meta["colour_fraction"] = colour_fraction(np.clip(rgb[..., :3], 0.0, 1.0))  # before luminance
        out = np.clip(rgb[..., :3], 0.0, 1.0) @ _LUMA
        meta["voi"] = "colour → luminance"
    elif photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = np.asarray(apply_color_lut(stored, ds), dtype=np.float64)
        maxval = float(rgb.max()) if rgb.size else 1.0
        scale = 255.0 if maxval <= 255 else 65535.0
        meta["colour_fraction"] = colour_fraction(np.clip(rgb / scale, 0.0, 1.0)[..., :3])
        out = np.clip(rgb / scale, 0.0, 1.0) @ _LUMA
        meta["voi"] = "palette → luminance"
    elif stored.ndim == 2:
        values = modality_values(ds, stored)
        out, meta["voi"] = voi_values(ds, values, window)
        if _inverted(ds, photometric):
            out = 1.0 - out
    else:
        raise ValueError(f"unsupported pixel layout (array shape {stored.shape})")
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


# ----------------------------------------------------------------------------- reading


def _open(path: str | Path, opts: DicomOptions | None,
          limit: int | None = None) -> tuple[Path, Any, dict[str, Any], str, int]:
    p = Path(path)
    try:
        return _open_checked(p, opts, limit)
    except ImageReadError:
        raise
    except MemoryError:
        raise _error(p, "DICOM file too large to read") from None
    except Exception as exc:  # pydicom converts elements lazily: a hostile value fails here
        raise _error(p, f"corrupt DICOM file ({type(exc).__name__}: {_one_line(exc)})") from None


def _open_checked(p: Path, opts: DicomOptions | None,
                  limit: int | None) -> tuple[Path, Any, dict[str, Any], str, int]:
    opts = opts or get_options()
    if not p.exists():
        raise _error(p, "broken symbolic link or symbolic link loop" if p.is_symlink() else "file not found")
    if p.is_dir():
        raise _error(p, "is a folder, not an image file")
    try:
        st = os.stat(p)
    except OSError as exc:
        raise _error(p, f"cannot open file ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever
        raise _error(p, "not a regular file (a named pipe, socket or device)")
    if st.st_size == 0:
        raise _error(p, "empty file (0 bytes)")
    ds = _read_dataset(p, limit)
    meta: dict[str, Any] = _header_meta(ds)
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is not None:
        try:
            meta["transfer_syntax"] = str(tsyntax.name)
        except Exception:
            meta["transfer_syntax"] = str(tsyntax)
    photometric = _check_dataset(p, ds, opts, meta)
    try:
        frames = max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        frames = 1
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception:
        raise _error(p, "DICOM image without valid Rows/Columns", meta) from None

    if min(rows, cols) < MIN_SIDE:
        raise _error(p, f"image too small ({cols}x{rows} px; each side must be at least {MIN_SIDE} px)", meta)
    try:
        check_pixel_limit(p, cols, rows, frames, limit=limit)  # again: the header read may have failed
    except ImageReadError as exc:
        raise _error(p, exc.reason, meta) from None
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
    meta.update(
        format="DICOM", mode=photometric, photometric=photometric, bit_depth=bits,
        frames=frames, original_size=(cols, rows), scale=1.0, truncated=False, orientation=1,
    )
    return p, ds, meta, photometric, frames


def _frame_xray(p: Path, ds: Any, stored: np.ndarray, photometric: str, meta: dict[str, Any],
                frame: int, window: int | None) -> Any:

    m = dict(meta)
    m["frame"] = frame
    try:
        pixels = display_pixels(ds, stored, photometric, window, m)
    except ImageReadError:
        raise
    except MemoryError:
        raise _error(p, "image too large to convert", meta) from None
    except Exception as exc:
        raise _error(p, f"cannot convert pixel data ({_one_line(exc)})", meta) from None
    if pixels.ndim != 2:
        raise _error(p, f"unsupported pixel layout (array shape {pixels.shape})", meta)
    return XRay(pixels=pixels, path=str(p), meta=m)


def _quiet(fn: Any) -> Any:
    """pydicom warns about every odd value it meets; the reader reports by exceptions."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)

    return wrapper


@_quiet
def read_dicom(path: str | Path, min_size: int | None = None,
               options: DicomOptions | None = None, max_pixels: int | None = None) -> Any:
    """Read frame 0 of a DICOM file as an :class:`~fracdet.io.images.XRay`.

    ``min_size`` is accepted for the reader-registry signature; DICOM is always decoded
    at full resolution. Options default to those set with :func:`dicom_options`;
    ``max_pixels``: the per-frame pixel limit (default :func:`fracdet.io.limits.max_pixels`).
    """
    opts = options or get_options()
    p, ds, meta, photometric, frames = _open(path, opts, max_pixels)
    stored = _decode(p, ds, 0 if frames > 1 else None, meta)
    if frames > 1:
        meta["note"] = f"multi-frame DICOM: frame 0 of {frames} (read_frames gives all)"
    return _frame_xray(p, ds, stored, photometric, meta, 0, opts.window)


class Frames(Sequence):  # type: ignore[type-arg]
    """The frames of one DICOM file, each decoded when it is taken (``frames[i]``, iteration)
    and not kept: memory holds the file's bytes and one decoded frame, however many frames.
    A frame that cannot be decoded raises :class:`~fracdet.errors.ImageReadError` when taken."""

    def __init__(self, p: Path, ds: Any, meta: dict[str, Any], photometric: str, count: int,
                 window: int | None) -> None:
        self._p, self._ds, self._meta, self._photometric = p, ds, meta, photometric
        self._count, self._window = count, window

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        i = operator.index(index)
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError(f"frame {index} out of range ({self._count} frames)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = _decode(self._p, self._ds, i if self._count > 1 else None, self._meta)
            return _frame_xray(self._p, self._ds, stored, self._photometric, self._meta, i, self._window)

    def __repr__(self) -> str:
        return f"Frames({str(self._p)!r}, {self._count} frames)"


@_quiet
def read_frames(path: str | Path, options: DicomOptions | None = None,
                max_pixels: int | None = None) -> Frames:
    """Every frame of a DICOM file: one :class:`~fracdet.io.images.XRay` per frame, as a lazy
    sequence (:class:`Frames`; ``list(...)`` decodes them all). The header is checked here
    (refusals, pixel limit ``max_pixels`` per frame); frames are decoded one at a time."""
    opts = options or get_options()
    p, ds, meta, photometric, frames = _open(path, opts, max_pixels)
    return Frames(p, ds, meta, photometric, frames, opts.window)


def study_uid(path: str | Path) -> str | None:
    """The StudyInstanceUID of a DICOM file, read from the header only (None if absent or
    unreadable): views of one study must stay on one side of a split."""
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"], force=True)
    except Exception:
        return None
    uid = _str(ds, "StudyInstanceUID")
    return uid or None

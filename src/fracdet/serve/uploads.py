"""Uploaded files, taken with suspicion: the type sniffed from the content (magic bytes, never
the client's file name), written only to a temporary file with a generated name (deleted after
the request), the pixel count read from the header before anything is decoded (decompression
bombs), and DICOM modalities that fracdet does not judge refused."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from fracdet.io.images import looks_like_text
from fracdet.serve.errors import ApiError

KINDS = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "bmp": ".bmp", "dicom": ".dcm"}
"""Accepted content types and the suffix their temporary file gets."""


def sniff(head: bytes) -> str | None:
    """The file type from its first bytes (at least 132 for DICOM's ``DICM`` marker), or None."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:2] == b"BM" and len(head) >= 26:
        return "bmp"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    return None


def safe_name(name: str | None) -> str:
    """The client's file name as data only (shown and recorded, never used as a path)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:200] or "upload"


@dataclass
class Upload:
    """One uploaded file, copied to ``path`` (a generated name in a private folder)."""

    name: str
    path: Path
    size: int
    sha256: str
    kind: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class UploadFolder:
    """A private temporary folder for one request's files; removed, with them, on exit."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fracdet-upload-"))
        self._n = 0

    def __enter__(self) -> "UploadFolder":
        return self

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def take(self, name: str | None, source: BinaryIO, budget: int) -> Upload:
        """Copy ``source`` (at most ``budget`` bytes, else 413), sniff it (415 when not an
        image we read) and name it ``<n><suffix of its sniffed type>``."""
        shown = safe_name(name)
        self._n += 1
        tmp = self.root / f"{self._n:04d}.part"
        h = hashlib.sha256()
        size = 0
        head = b""
        with open(tmp, "wb") as out:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                size += len(chunk)
                if size > budget:
                    raise ApiError(413, f"{shown}: upload too large (the limit is {budget / 2**20:.1f} MiB "
                                        "for all files of a request)")
                if len(head) < 132:
                    head += chunk[: 132 - len(head)]
                h.update(chunk)
                out.write(chunk)
        if size == 0:
            raise ApiError(400, f"{shown}: empty file (0 bytes)")
        kind = sniff(head)
        if kind is None:
            what = "text" if looks_like_text(head) else "unrecognised data"
            raise ApiError(415, f"{shown}: unsupported content ({what}); send JPEG, PNG, TIFF, BMP or DICOM "
                                "(DICOM needs its 'DICM' preamble)")
        path = tmp.with_name(f"{self._n:04d}{KINDS[kind]}")
        os.replace(tmp, path)
        return Upload(name=shown, path=path, size=size, sha256=h.hexdigest(), kind=kind)


def check_header(upload: Upload, max_pixels: int, force_dicom: bool = False) -> None:
    """Read the image's size (and, for DICOM, modality) from its header only; 413 beyond
    ``max_pixels``, 422 for a DICOM modality that is not a radiograph, 400 when unreadable."""
    if upload.kind == "dicom":
        _check_dicom(upload, max_pixels, force_dicom)
    else:
        _check_pillow(upload, max_pixels)


def _too_many(upload: Upload, w: int, h: int, frames: int, max_pixels: int) -> None:
    if w * h * max(frames, 1) > max_pixels:
        extra = f" × {frames} frames" if frames > 1 else ""
        raise ApiError(413, f"{upload.name}: image too large ({w}x{h} px{extra}; the limit is "
                            f"{max_pixels:,} pixels), refused before decoding")


def _check_pillow(upload: Upload, max_pixels: int) -> None:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: judged below
            with Image.open(upload.path) as im:  # reads the header only; pixels stay undecoded
                w, h = im.size
                frames = int(getattr(im, "n_frames", 1) or 1)
    except Image.DecompressionBombError as exc:  # Pillow's own guard, at twice its pixel limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "a decompression bomb"
        raise ApiError(413, f"{upload.name}: image too large ({size}; the limit is {max_pixels:,} pixels), "
                            "refused before decoding") from None
    except Exception as exc:
        raise ApiError(400, f"{upload.name}: unreadable {upload.kind} header "
                            f"({' '.join(str(exc).split())[:200] or type(exc).__name__})") from None
    upload.meta.update(width=w, height=h)
    _too_many(upload, w, h, 1 if upload.kind != "tiff" else frames, max_pixels)


def _check_dicom(upload: Upload, max_pixels: int, force: bool) -> None:
    try:
        import pydicom
    except ModuleNotFoundError:
        raise ApiError(415, f"{upload.name}: DICOM support is not installed on this server "
                            "(pip install 'fracdet[dicom]')") from None
    from fracdet.io.dicom import RADIOGRAPH_MODALITIES

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(upload.path, stop_before_pixels=True)
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames = int(ds.get("NumberOfFrames") or 1)
        modality = str(ds.get("Modality") or "").strip().upper()
    except Exception as exc:
        raise ApiError(400, f"{upload.name}: unreadable DICOM header "
                            f"({' '.join(str(exc).split())[:200] or type(exc).__name__})") from None
    upload.meta.update(width=cols, height=rows, frames=frames, modality=modality)
    if modality not in RADIOGRAPH_MODALITIES and not force:
        raise ApiError(422, f"{upload.name}: modality {modality or '(none)'} is not a radiograph; fracdet "
                            f"judges X-ray radiographs ({', '.join(sorted(RADIOGRAPH_MODALITIES))})")
    if rows and cols:
        _too_many(upload, cols, rows, frames, max_pixels)

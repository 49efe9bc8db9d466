"""Out-of-distribution images for benchmarks/ood_rates.py, written as files so that they take the
same path as any user's file (the readers, then the checks).  Everything is made here or comes
from installed packages (scikit-image's sample images, pydicom-data's DICOM files): nothing is
downloaded.  Each kind is a function ``folder -> list of written paths``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

COLOUR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "retina", "colorwheel", "immunohistochemistry",
                 "hubble_deep_field", "skin", "logo", "stereo_motorcycle", "cat", "lily", "eagle")
GREY_PHOTOS = ("camera", "moon", "coins", "page", "text", "horse", "clock", "brick", "grass", "gravel", "cell",
               "human_mitosis", "checkerboard", "binary_blobs", "microaneurysms", "shepp_logan_phantom")
CHEST = ("RG1_UNCI.dcm", "RG1_UNCR.dcm", "RG1_J2KI.dcm", "RG1_J2KR.dcm")
CT_MR = ("CT_small.dcm", "693_UNCR.dcm", "explicit_VR-UN.dcm", "bad_sequence.dcm", "eCT_Supplemental.dcm",
         "J2K_pixelrep_mismatch.dcm", "MR2_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "examples_overlay.dcm",
         "MR_small.dcm", "emri_small.dcm", "JPEG2000.dcm")
"""pydicom-data's CT, MR and NM (whole-body) slices."""


def _save(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92) if path.suffix == ".jpg" else img.save(path)
    return path


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(a, np.float64) * 255 + 0.5, 0, 255).astype(np.uint8)


def _skimage(name: str) -> np.ndarray | None:
    import skimage.data

    try:
        a = np.asarray(getattr(skimage.data, name)())
    except Exception as exc:  # images that scikit-image would download: not here, skipped
        log.info("scikit-image %s unavailable offline (%s)", name, type(exc).__name__)
        return None
    if name == "stereo_motorcycle":
        a = a[0]
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        a = _u8((a - a.min()) / max(float(a.max() - a.min()), 1e-9))
    return a


def blank(folder: Path) -> list[Path]:
    """Uniform and near-uniform images: five grey levels, faint noise, a faint gradient, as PNG and JPEG."""
    rng = np.random.default_rng(1)
    out = []
    for level in (0.0, 0.25, 0.5, 0.75, 1.0):
        a = np.full((512, 512), level)
        out.append(_save(Image.fromarray(_u8(a)), folder / f"uniform-{level:g}.png"))
        out.append(_save(Image.fromarray(_u8(a + rng.normal(0, 0.004, a.shape))), folder / f"faint-noise-{level:g}.jpg"))
        g = level * 0.9 + np.linspace(0, 0.03, 512)[None, :] * np.ones((384, 1))
        out.append(_save(Image.fromarray(_u8(g)), folder / f"faint-gradient-{level:g}.png"))
        rgb = np.stack([np.full((300, 400), level)] * 3, axis=-1)
        out.append(_save(Image.fromarray(_u8(rgb)), folder / f"uniform-rgb-{level:g}.jpg"))
    return out


def colour_photos(folder: Path) -> list[Path]:
    """scikit-image's colour sample images as JPEG and PNG, and one as a CMYK JPEG; a colour gradient."""
    out = []
    for name in COLOUR_PHOTOS:
        a = _skimage(name)
        if a is None or a.ndim != 3:
            continue
        img = Image.fromarray(a).convert("RGB")
        out.append(_save(img, folder / f"{name}.jpg"))
        out.append(_save(Image.fromarray(a), folder / f"{name}.png"))
        if name == "astronaut":
            out.append(_save(img.convert("CMYK"), folder / f"{name}-cmyk.jpg"))
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    grad = np.stack([xx, yy, 1 - xx], axis=-1)
    out.append(_save(Image.fromarray(_u8(grad)), folder / "colour-gradient.png"))
    return out


def grey_photos(folder: Path) -> list[Path]:
    """scikit-image's greyscale sample images (and grey versions of its colour ones): photographs,
    micrographs, a scanned page, a CT-like phantom — none a limb radiograph."""
    out = []
    for name in GREY_PHOTOS + COLOUR_PHOTOS:
        a = _skimage(name)
        if a is None:
            continue
        img = Image.fromarray(a).convert("L")
        if min(img.size) < 64:
            continue
        out.append(_save(img, folder / f"{name}-grey.png"))
    return out


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def screenshots(folder: Path, n: int = 24) -> list[Path]:
    """Rendered UI-like screenshots: title bar, text lines, buttons, boxes; half in colour, half grey."""
    rng = np.random.default_rng(2)
    words = "patient study series image report window level zoom fracture export settings help file edit view".split()
    out = []
    for i in range(n):
        w, h = int(rng.integers(640, 1400)), int(rng.integers(480, 900))
        colour = i % 2 == 0
        bg = (250, 250, 250) if i % 3 else (40, 44, 52)
        fg = (20, 20, 20) if i % 3 else (220, 220, 220)
        img = Image.new("RGB", (w, h), bg)
        d = ImageDraw.Draw(img)
        d.rectangle([0, 0, w, 36], fill=(30, 90, 200) if colour else (90, 90, 90))
        d.text((10, 8), " ".join(rng.choice(words, 4)), fill=(255, 255, 255), font=_font(18))
        y = 50
        while y < h - 30:
            kind = rng.integers(0, 4)
            if kind == 0:
                bw = int(rng.integers(80, 180))
                d.rectangle([20, y, 20 + bw, y + 28], fill=(60, 160, 90) if colour else (160, 160, 160), outline=fg)
                d.text((28, y + 5), str(rng.choice(words)), fill=(255, 255, 255), font=_font(16))
                y += 40
            elif kind == 1:
                d.rectangle([20, y, w - 20, y + 60], outline=fg)
                y += 70
            else:
                d.text((20, y), " ".join(rng.choice(words, int(rng.integers(3, 12)))), fill=fg,
                       font=_font(int(rng.integers(12, 22))))
                y += 26
        img = img if colour else img.convert("L")
        out.append(_save(img, folder / f"screenshot-{i:02d}.png"))
    return out


def noise(folder: Path) -> list[Path]:
    """Gaussian (grey and colour), uniform and salt-and-pepper noise, at three sizes, PNG and JPEG."""
    rng = np.random.default_rng(3)
    out = []
    for size in (128, 384, 1024):
        shape = (size, int(size * 1.25))
        out.append(_save(Image.fromarray(_u8(rng.normal(0.5, 0.2, shape))), folder / f"gaussian-{size}.png"))
        out.append(_save(Image.fromarray(_u8(rng.normal(0.5, 0.2, shape))), folder / f"gaussian-{size}.jpg"))
        out.append(_save(Image.fromarray(_u8(rng.normal(0.5, 0.2, shape + (3,)))), folder / f"gaussian-rgb-{size}.png"))
        out.append(_save(Image.fromarray(_u8(rng.uniform(0, 1, shape))), folder / f"uniform-{size}.png"))
        out.append(_save(Image.fromarray(_u8(rng.uniform(0, 1, shape + (3,)))), folder / f"uniform-rgb-{size}.jpg"))
        sp = np.where(rng.uniform(size=shape) < 0.5, 0.0, 1.0)
        out.append(_save(Image.fromarray(_u8(sp)), folder / f"salt-pepper-{size}.png"))
        sp2 = np.full(shape, 0.5)
        m = rng.uniform(size=shape)
        sp2[m < 0.15], sp2[m > 0.85] = 0.0, 1.0
        out.append(_save(Image.fromarray(_u8(sp2)), folder / f"salt-pepper-grey-{size}.png"))
    return out


def _dicom_files(names: tuple[str, ...]) -> list[Path]:
    from pydicom.data import get_testdata_file

    out = []
    for name in names:
        path = get_testdata_file(name)
        if path is None:
            log.info("pydicom-data has no %s", name)
            continue
        out.append(Path(path))
    return out


def _as_png(paths: list[Path], folder: Path, crops: bool) -> list[Path]:
    """Each DICOM file's frames as read by fracdet (its window, ``force``) saved as 8-bit PNG;
    ``crops``: also its central 80% and a flipped copy (more views of few films)."""
    from fracdet.io.dicom import DicomOptions, read_frames

    out = []
    for p in paths:
        try:
            frames = read_frames(p, DicomOptions(force=True))
        except Exception as exc:
            log.info("%s: unreadable (%s)", p.name, exc)
            continue
        for k, x in enumerate(frames[:3]):
            img = Image.fromarray(_u8(x.pixels))
            out.append(_save(img, folder / f"{p.stem}-{k}.png"))
            if crops:
                w, h = img.size
                out.append(_save(img.crop((w // 10, h // 10, w - w // 10, h - h // 10)), folder / f"{p.stem}-{k}-crop.png"))
                out.append(_save(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), folder / f"{p.stem}-{k}-flip.png"))
    return out


def chest(folder: Path) -> list[Path]:
    """pydicom-data's one chest radiograph (CR, four encodings) as DICOM, and as PNG with crops and flips."""
    dicoms = _dicom_files(CHEST)
    return dicoms + _as_png(dicoms[:1], folder, crops=True)


def ct_mr(folder: Path) -> list[Path]:
    """pydicom-data's CT, MR and NM slices as PNG (as a screenshot or export of a slice would come)."""
    return _as_png(_dicom_files(CT_MR), folder, crops=False)


def ct_mr_dicom(folder: Path) -> list[Path]:
    """The same slices as DICOM files (refused by the DICOM reader for their modality, an error row)."""
    return _dicom_files(CT_MR)


KINDS: dict[str, Callable[[Path], list[Path]]] = {
    "blank / near-uniform": blank, "colour photograph": colour_photos, "greyscale photograph": grey_photos,
    "screenshot": screenshots, "noise": noise, "chest X-ray": chest, "CT / MR slice (PNG)": ct_mr,
    "CT / MR slice (DICOM)": ct_mr_dicom,
}

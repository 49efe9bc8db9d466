"""Synthetic X-ray-like images and datasets written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def xray_array(fractured: bool, seed: int, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    """A dark field with a bright 'bone' bar; fractured ones have a dark gap across the bar."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = rng.normal(30, 8, size=(h, w))
    x0 = int(w * rng.uniform(0.3, 0.45))
    bw = int(w * 0.25)
    img[:, x0 : x0 + bw] = rng.normal(200, 10, size=(h, bw))
    if fractured:
        y = int(h * rng.uniform(0.3, 0.7))
        img[y : y + 4, x0 - 2 : x0 + bw + 2] = 40
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image(path: Path, fractured: bool, seed: int, size: tuple[int, int] = (96, 80)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(xray_array(fractured, seed, size)).save(path)
    return path


def make_class_folders(root: Path, n_per_class: int = 10, names: tuple[str, str] = ("not_fractured", "fractured"),
                       seed: int = 0, ext: str = ".png") -> Path:
    """Flat class folders: root/<name>/img_i<ext>."""
    for label, name in enumerate(names):
        for i in range(n_per_class):
            write_image(root / name / f"img_{label}_{i:03d}{ext}", bool(label), seed * 1000 + label * 100 + i)
    return root


def make_split_folders(root: Path, counts: dict[str, int] | None = None, seed: int = 0) -> Path:
    """root/{train,val,test}/{fractured,not_fractured}/*.png"""
    counts = counts or {"train": 12, "val": 6, "test": 6}
    for k, (split, n) in enumerate(counts.items()):
        make_class_folders(root / split, n, seed=seed * 10 + k)
    return root


def fracatlas_root() -> Path | None:
    """The real FracAtlas data (``$FRACDET_FRACATLAS`` or ``../shared/data/fracatlas``), or None."""
    import os

    env = os.environ.get("FRACDET_FRACATLAS")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/fracatlas"
    return root if (root / "dataset.csv").is_file() else None


DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage


def dicom_bytes(pixels: np.ndarray, *, sop_class: str = DX_STORAGE, modality: str = "DX", bits_stored: int = 16,
                study: str | None = None, **elements) -> bytes:
    """A minimal uncompressed 16-bit grayscale DICOM file (Part 10 bytes) of ``pixels``: H×W, or
    F×H×W for a multi-frame file. ``elements`` set or override attributes (e.g. ``ViewPosition``,
    ``PhotometricInterpretation``, ``WindowCenter``). Needs pydicom."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), generate_uid()
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def tiny_model_file(folder: Path, input_size: int = 48, threshold: float = 0.5, temperature: float = 1.0) -> Path:
    """A small seeded simple_cnn model file (random weights) for tests that need a real artifact."""
    import torch

    from fracdet.artifact import ModelArtifact, save_artifact
    from fracdet.models import create_model
    from fracdet.transforms import PreprocessSpec

    torch.manual_seed(0)
    model = create_model("simple_cnn", pretrained=False, head_hidden=16, dropout=0.1).eval()
    art = ModelArtifact(
        architecture="simple_cnn", state_dict=model.state_dict(),
        preprocess=PreprocessSpec(input_size=input_size, mean=(0.5,) * 3, std=(0.25,) * 3),
        model_config={"head_hidden": 16, "dropout": 0.1}, threshold=threshold, temperature=temperature,
        training={"seed": 1}, data={"count": 3},
    )
    return save_artifact(art, Path(folder) / "m.fracdet")

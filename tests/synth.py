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

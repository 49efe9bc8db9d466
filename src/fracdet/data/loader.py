"""Torch datasets and loaders over :class:`~fracdet.data.layouts.Sample` lists."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fracdet.errors import ImageReadError
from fracdet.io.images import read_image
from fracdet.transforms import ModelTransform

log = logging.getLogger(__name__)


class ImageDataset(Dataset):
    """Decodes, resizes and (for training) augments images; yields ``(tensor, label, index)``.

    With ``cache=True`` the resized 1×S×S image is kept in memory as uint8 after the first
    read, so later epochs skip decoding (augmentation is still drawn anew every time).
    A file that cannot be read is reported once and skipped by :func:`collate_skip_bad`.
    """

    def __init__(self, samples: Sequence[Any], transform: ModelTransform, cache: bool = False) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.cache: dict[int, np.ndarray] | None = {} if cache else None
        self.bad: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _prepared(self, i: int) -> np.ndarray:
        if self.cache is not None and i in self.cache:
            return self.cache[i].astype(np.float32) / 255.0
        xray = read_image(self.samples[i].path, min_size=self.transform.spec.input_size)
        x = self.transform.prepare(xray.pixels)
        if self.cache is not None:
            self.cache[i] = np.round(x * 255.0).astype(np.uint8)
        return x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int] | None:
        if i in self.bad:
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # truncated-JPEG warnings are for the audit, not every epoch
                x = self._prepared(i)
        except ImageReadError as exc:
            self.bad[i] = str(exc)
            log.warning("skipping unreadable training image: %s", exc)
            return None
        return torch.from_numpy(self.transform.finish(x)), int(self.samples[i].label), i


def collate_skip_bad(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack a batch, leaving out items that could not be read."""
    items = [b for b in batch if b is not None]
    if not items:
        empty = torch.empty(0)
        return empty.view(0, 3, 1, 1), empty.long(), empty.long()
    xs, ys, idx = zip(*items)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.float32), torch.tensor(idx)


def make_loader(
    samples: Sequence[Any],
    transform: ModelTransform,
    batch_size: int = 32,
    shuffle: bool = False,
    num_workers: int = 0,
    cache: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader over samples with the given transform."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        ImageDataset(samples, transform, cache=cache and num_workers == 0),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate_skip_bad,
        generator=gen,
        persistent_workers=num_workers > 0,
    )

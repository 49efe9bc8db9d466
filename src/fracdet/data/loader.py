"""Torch datasets and loaders over :class:`~fracdet.data.layouts.Sample` lists."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from fracdet.errors import ImageReadError
from fracdet.io.images import read_image
from fracdet.transforms import ModelTransform

log = logging.getLogger(__name__)


class ImageDataset(Dataset):
    """Decodes, resizes and (for training) augments images; yields ``(tensor, label, index)``.

    With ``cache=True`` the resized 1×S×S image is kept in memory as uint8 after the first
    read, so later epochs skip decoding (augmentation is still drawn anew every time); the
    first read gives the same uint8-rounded image, so an epoch sees the same pixels whether
    the cache is warm or not (a resumed run's first epoch equals the uninterrupted one's).
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
            return self.cache[i].astype(np.float32) / 255.0
        return x

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int] | None:
        """Item ``key``: an index, or ``(seed, index)`` (from :class:`EpochShuffle`) to draw the
        augmentation from ``seed`` rather than from the process's random state."""
        seed, i = key if isinstance(key, tuple) else (None, key)
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
        if seed is None:
            return torch.from_numpy(self.transform.finish(x)), int(self.samples[i].label), i
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.from_numpy(self.transform.finish(x)), int(self.samples[i].label), i


def collate_skip_bad(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack a batch, leaving out items that could not be read."""
    items = [b for b in batch if b is not None]
    if not items:
        empty = torch.empty(0)
        return empty.view(0, 3, 1, 1), empty.long(), empty.long()
    xs, ys, idx = zip(*items)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.float32), torch.tensor(idx)


def epoch_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed that depends only on ``seed`` and ``keys`` (e.g. phase, epoch, rank)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(k) for k in keys)]).generate_state(1)[0])


class EpochShuffle(RandomSampler):
    """A random order, and a seed per image for its augmentation, that depend on (seed, phase,
    epoch) alone, so a run resumed at epoch k shuffles and augments epoch k as the uninterrupted
    run did, whichever process loads the images. Yields ``(augmentation seed, index)``.

    Each ``iter()`` is the next epoch (Lightning takes a loader's iterator, and its first batch,
    before it calls ``set_epoch``, so the epoch is counted here); :meth:`start` sets the phase and
    the first epoch. Under DDP Lightning replaces it (it is a ``RandomSampler``) by its
    ``DistributedSampler``, seeded per epoch, and augmentation draws from the workers' RNG."""

    def __init__(self, data_source: Sequence[Any], seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed, self.phase, self.epoch = int(seed), 0, 0

    def start(self, phase: int, epoch: int = 0) -> None:
        """The next ``iter()`` gives epoch ``epoch`` of phase ``phase``."""
        self.phase, self.epoch = int(phase), int(epoch)

    def __iter__(self) -> Any:
        epoch, self.epoch = self.epoch, self.epoch + 1
        order = torch.randperm(len(self.data_source),
                               generator=torch.Generator().manual_seed(epoch_seed(self.seed, 1, self.phase, epoch)))
        base = epoch_seed(self.seed, 3, self.phase, epoch)
        return iter([((base * 1_000_003 + i) % (1 << 62), i) for i in order.tolist()])


def make_loader(
    samples: Sequence[Any],
    transform: ModelTransform,
    batch_size: int = 32,
    shuffle: bool = False,
    num_workers: int = 0,
    cache: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader over samples with the given transform.

    A shuffled loader uses :class:`EpochShuffle`: order and augmentation per epoch from the
    seed, so every epoch is reproducible on its own."""
    dataset = ImageDataset(samples, transform, cache=cache and num_workers == 0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffle(dataset, seed) if shuffle else None,
        num_workers=num_workers,
        collate_fn=collate_skip_bad,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )

"""Training-time augmentation (PyTorch/torchvision) on top of the evaluation transform.

The network input of training is the evaluation input of :mod:`fracdet.transforms` with
random geometric and intensity changes applied to the prepared 1×S×S image before the
model's normalisation, so training and prediction share one resize and one normalisation.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torchvision.transforms import v2

from fracdet.transforms import AugmentConfig, ModelTransform, PreprocessSpec


class _PixelNoise(torch.nn.Module):
    """Add zero-mean Gaussian noise with a std drawn uniformly from [0, ``max_std``]."""

    def __init__(self, max_std: float) -> None:
        super().__init__()
        self.max_std = float(max_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = float(torch.rand(())) * self.max_std
        return x + torch.randn_like(x) * std


def augmenter(aug: AugmentConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """The random augmentation of a 1×S×S [0, 1] tensor described by ``aug``."""
    ops: list[Any] = [
        v2.RandomAffine(
            degrees=aug.rotation,
            translate=(aug.translate, aug.translate),
            scale=(1.0 - aug.zoom, 1.0 + aug.zoom),
        )
    ]
    if aug.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if aug.brightness or aug.contrast:
        ops.append(v2.ColorJitter(brightness=aug.brightness, contrast=aug.contrast))
    if aug.blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=aug.blur_p))
    if aug.noise > 0 and aug.noise_p > 0:
        ops.append(v2.RandomApply([_PixelNoise(aug.noise)], p=aug.noise_p))
    pipeline = v2.Compose(ops)
    erase = v2.RandomErasing(p=aug.erasing_p, value=0.0) if aug.erasing_p > 0 else None

    def apply(x: torch.Tensor) -> torch.Tensor:
        x = pipeline(x).clamp_(0.0, 1.0)
        return erase(x) if erase is not None else x

    return apply


class TrainTransform(ModelTransform):
    """:class:`~fracdet.transforms.ModelTransform` that augments the prepared image first."""

    def __init__(self, spec: PreprocessSpec, augment: AugmentConfig) -> None:
        super().__init__(spec)
        self.augmenter = augmenter(augment)

    def finish(self, x: np.ndarray) -> np.ndarray:
        return super().finish(self.augmenter(torch.from_numpy(np.array(x, dtype=np.float32))).numpy())

    def finish_batch(self, prepared: list[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        return np.stack([self.finish(p) for p in prepared])


def build_train_transforms(spec: PreprocessSpec, augment: AugmentConfig | None = None) -> ModelTransform:
    """The training transform: augmentation (when enabled) then the model's normalisation."""
    aug = augment if augment is not None else AugmentConfig()
    return TrainTransform(spec, aug) if aug.enabled else ModelTransform(spec)


__all__ = ["TrainTransform", "augmenter", "build_train_transforms"]

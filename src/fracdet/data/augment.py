"""Training-time augmentation (PyTorch/torchvision) on top of the evaluation transform.

The network input of training is the evaluation input of :mod:`fracdet.transforms` with
random geometric and intensity changes applied to the prepared 1×S×S image before the
model's normalisation, so training and prediction share one resize and one normalisation.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torchvision import tv_tensors
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


def _geometric(aug: AugmentConfig) -> v2.Compose:
    """The random affine and flip of ``aug`` (one draw moves an image and its mask alike)."""
    ops: list[Any] = [
        v2.RandomAffine(
            degrees=aug.rotation,
            translate=(aug.translate, aug.translate),
            scale=(1.0 - aug.zoom, 1.0 + aug.zoom),
        )
    ]
    if aug.hflip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops)


def _photometric(aug: AugmentConfig) -> v2.Compose:
    """The intensity changes of ``aug`` (images only)."""
    ops: list[Any] = []
    if aug.brightness or aug.contrast:
        ops.append(v2.ColorJitter(brightness=aug.brightness, contrast=aug.contrast))
    if aug.blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=aug.blur_p))
    if aug.noise > 0 and aug.noise_p > 0:
        ops.append(v2.RandomApply([_PixelNoise(aug.noise)], p=aug.noise_p))
    return v2.Compose(ops or [v2.Identity()])


def augmenter(aug: AugmentConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """The random augmentation of a 1×S×S [0, 1] tensor described by ``aug``."""
    apply_pair = pair_augmenter(aug)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return apply_pair(x, None)[0]

    return apply


def pair_augmenter(aug: AugmentConfig) -> Callable[..., tuple[torch.Tensor, Any, Any]]:
    """``f(image, mask, boxes=None)``: the augmentation of :func:`augmenter` on a 1×S×S image,
    with the same geometric draw applied to a 1×S×S box mask (nearest neighbour; None: image
    alone) and to K×4 boxes (x0, y0, x1, y1 in input pixels; the bounding box of each moved box,
    clipped to the input); returns ``(image, mask, boxes)``."""
    geometric, photometric = _geometric(aug), _photometric(aug)
    erase = v2.RandomErasing(p=aug.erasing_p, value=0.0) if aug.erasing_p > 0 else None

    def apply(x: torch.Tensor, mask: torch.Tensor | None,
              boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, Any, Any]:
        extra: list[Any] = []
        if mask is not None:
            extra.append(tv_tensors.Mask(mask))
        if boxes is not None:
            extra.append(tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(x.shape[-2:])))
        moved = geometric(x, *extra) if extra else (geometric(x),)
        x = moved[0]
        mask = moved[1].as_subclass(torch.Tensor) if mask is not None else None
        boxes = moved[-1].as_subclass(torch.Tensor) if boxes is not None else None
        x = photometric(x).clamp_(0.0, 1.0)
        return (erase(x) if erase is not None else x), mask, boxes

    return apply


class TrainTransform(ModelTransform):
    """:class:`~fracdet.transforms.ModelTransform` that augments the prepared image first."""

    def __init__(self, spec: PreprocessSpec, augment: AugmentConfig) -> None:
        super().__init__(spec)
        self.pair_augmenter = pair_augmenter(augment)

    def augmenter(self, x: torch.Tensor) -> torch.Tensor:
        return self.pair_augmenter(x, None)[0]

    def finish(self, x: np.ndarray) -> np.ndarray:
        return super().finish(self.augmenter(torch.from_numpy(np.array(x, dtype=np.float32))).numpy())

    def finish_pair(self, x: np.ndarray, mask: np.ndarray,
                    boxes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`finish` of a prepared image and the same geometric change of its 1×S×S box mask
        and of its K×4 input-pixel boxes (x0, y0, x1, y1; None: none asked)."""
        img, m, b = self.pair_augmenter(torch.from_numpy(np.array(x, dtype=np.float32)), torch.from_numpy(mask),
                                        None if boxes is None else torch.as_tensor(boxes, dtype=torch.float32))
        return super().finish(img.numpy()), m.numpy(), None if b is None else b.numpy()

    def finish_batch(self, prepared: list[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        return np.stack([self.finish(p) for p in prepared])


def build_train_transforms(spec: PreprocessSpec, augment: AugmentConfig | None = None) -> ModelTransform:
    """The training transform: augmentation (when enabled) then the model's normalisation."""
    aug = augment if augment is not None else AugmentConfig()
    return TrainTransform(spec, aug) if aug.enabled else ModelTransform(spec)


__all__ = ["TrainTransform", "augmenter", "build_train_transforms", "pair_augmenter"]

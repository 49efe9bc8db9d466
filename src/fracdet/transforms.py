"""Preprocessing and augmentation as plain callables built from a model's spec.

Input is always the package's pixel convention (see :mod:`fracdet.io.images`): a float32
H×W array in [0, 1], bone bright.  Output is a float32 tensor C×S×S normalised with the
model's own mean/std, ready for the network.  The same :class:`PreprocessSpec` is stored in
every artifact, so prediction never depends on the training configuration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

Transform = Callable[[np.ndarray], torch.Tensor]


@dataclass
class PreprocessSpec:
    """How raw pixels become a network input (stored in every artifact)."""

    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channels: int = 3
    resize: str = "letterbox"  # "letterbox" keeps the aspect ratio, pads with black; or "stretch"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
            channels=int(d.get("channels", 3)),
            resize=str(d.get("resize", "letterbox")),
        )


@dataclass
class AugmentConfig:
    """Training-time augmentation; every part can be switched off or tuned."""

    rotation: float = 20.0  # degrees, ±
    translate: float = 0.10  # fraction of the size
    zoom: float = 0.10  # ± fraction
    hflip: bool = True
    brightness: float = 0.2
    contrast: float = 0.2
    blur_p: float = 0.1  # probability of a light Gaussian blur
    erasing_p: float = 0.1  # probability of random erasing
    # Gaussian pixel noise, std drawn uniformly up to ``noise`` (in [0, 1] pixel units), with
    # probability ``noise_p``.  Without it the FracAtlas model moved its probabilities by 0.07
    # on average under ±0.5/255 noise (below one grey level) — and under int8 inference alike.
    noise: float = 0.02
    noise_p: float = 0.5
    enabled: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AugmentConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(enabled=False)


def resize_to_input(pixels: np.ndarray, size: int, mode: str = "letterbox") -> torch.Tensor:
    """Resize an H×W [0,1] array to a 1×size×size tensor (bilinear, antialiased).

    Pillow's float ("F") resize is used rather than ``torch.nn.functional.interpolate``: the
    same antialiased bilinear filter (outputs agree to 1e-5), but it does not contend for
    PyTorch's intra-op threads, which made it 4× slower beside inference on 2 cores.
    """
    if mode not in ("letterbox", "stretch"):
        raise ValueError(f"unknown resize mode {mode!r} (use 'letterbox' or 'stretch')")
    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))
    h, w = pixels.shape[:2]
    if mode == "stretch":
        nh = nw = size
    else:
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.float32)
    canvas = np.zeros((1, size, size), dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[0, top : top + nh, left : left + nw] = out
    return torch.from_numpy(canvas)


class _PixelNoise(torch.nn.Module):
    """Add zero-mean Gaussian noise with a std drawn uniformly from [0, ``max_std``]."""

    def __init__(self, max_std: float) -> None:
        super().__init__()
        self.max_std = float(max_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = float(torch.rand(())) * self.max_std
        return x + torch.randn_like(x) * std


def _augmenter(aug: AugmentConfig) -> Callable[[torch.Tensor], torch.Tensor]:
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


class ModelTransform:
    """``f(pixels) -> C×S×S tensor``: a deterministic :meth:`prepare` (resize) then :meth:`finish`
    (augmentation when training, channels, normalisation).  The split lets a dataset cache
    the prepared 1×S×S images between epochs while augmentation stays random."""

    def __init__(self, spec: PreprocessSpec, train: bool = False, augment: AugmentConfig | None = None) -> None:
        self.spec = spec
        self.mean = np.asarray(spec.mean[: spec.channels], dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(spec.std[: spec.channels], dtype=np.float32).reshape(-1, 1, 1)
        # (x - mean) / std as x * scale + shift, one channel at a time, written in place
        self._scale = (1.0 / self.std).reshape(-1)
        self._shift = (-self.mean / self.std).reshape(-1)
        aug = augment if augment is not None else AugmentConfig()
        self.augmenter = _augmenter(aug) if train and aug.enabled else None

    def prepare(self, pixels: np.ndarray) -> torch.Tensor:
        """Resize to the model's input (1×S×S, [0, 1])."""
        return resize_to_input(pixels, self.spec.input_size, self.spec.resize)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Augment (training only), expand to the model's channels and normalise."""
        if self.augmenter is not None:
            x = self.augmenter(x)
        out = np.empty((len(self._scale),) + tuple(x.shape[-2:]), np.float32)
        self._normalise_into(x, out)
        return torch.from_numpy(out)

    def _normalise_into(self, x: torch.Tensor, out: np.ndarray) -> None:
        """Write the normalised channels of a 1×S×S image into ``out`` (C×S×S).  numpy, not
        torch: PyTorch's intra-op threads made this tiny step 25× slower beside inference on
        2 cores (measured)."""
        gray = x.numpy()[0]
        for c in range(len(self._scale)):
            np.multiply(gray, self._scale[c], out=out[c])
            out[c] += self._shift[c]

    def finish_batch(self, prepared: list[torch.Tensor], out: np.ndarray | None = None) -> torch.Tensor:
        """:meth:`finish` (no augmentation) of prepared 1×S×S images straight into one N×C×S×S
        batch, reusing ``out`` when it is large enough (no per-image copies, no fresh pages)."""
        if self.augmenter is not None:
            return torch.stack([self.finish(p) for p in prepared])
        n, s = len(prepared), self.spec.input_size
        shape = (n, len(self._scale), s, s)
        buf = out[:n] if out is not None and out.shape[0] >= n and out.shape[1:] == shape[1:] else np.empty(shape, np.float32)
        for i, p in enumerate(prepared):
            self._normalise_into(p, buf[i])
        return torch.from_numpy(buf)

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        return self.finish(self.prepare(pixels))


def build_transforms(spec: PreprocessSpec, train: bool = False, augment: AugmentConfig | None = None) -> ModelTransform:
    """Return the evaluation transform, or the training one with augmentation."""
    return ModelTransform(spec, train=train, augment=augment)


def spec_from_model(model_spec: Any, resize: str = "letterbox") -> PreprocessSpec:
    """Build the preprocessing spec from a registry :class:`~fracdet.models.ModelSpec`."""
    return PreprocessSpec(
        input_size=int(model_spec.input_size),
        mean=tuple(model_spec.mean),
        std=tuple(model_spec.std),
        channels=3,
        resize=resize,
    )


__all__ = ["AugmentConfig", "ModelTransform", "PreprocessSpec", "Transform", "build_transforms", "resize_to_input", "spec_from_model"]

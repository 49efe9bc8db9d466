"""Preprocessing as plain callables built from a model's spec — numpy and Pillow only.

Input is always the package's pixel convention (see :mod:`fracdet.io.xray`): a float32 H×W
array in [0, 1], bone bright.  Output is a float32 array C×S×S normalised with the model's own
mean/std, ready for the network.  The same :class:`PreprocessSpec` is stored in every
artifact, so prediction never depends on the training configuration.

One letterbox geometry (:func:`letterbox_window`) places an image in the model input
(:func:`resize_to_input`) and maps model-input maps back onto the image (fracdet.explain).
Training-time augmentation (PyTorch) lives in :mod:`fracdet.data.augment`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image

Transform = Callable[[np.ndarray], np.ndarray]
RESIZE_MODES = ("letterbox", "stretch")


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
    """Training-time augmentation; every part can be switched off or tuned (applied by
    :mod:`fracdet.data.augment`)."""

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


def letterbox_window(h: int, w: int, size: int, mode: str = "letterbox") -> tuple[int, int, int, int]:
    """(top, left, height, width) of an h×w image inside the size×size model input: scaled to
    fit (aspect kept) and centred for ``letterbox``, the whole input for ``stretch``."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r} (use 'letterbox' or 'stretch')")
    if mode == "stretch":
        return 0, 0, size, size
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return (size - nh) // 2, (size - nw) // 2, nh, nw


def resize_to_input(pixels: np.ndarray, size: int, mode: str = "letterbox") -> np.ndarray:
    """Resize an H×W [0,1] array to a 1×size×size float32 array (bilinear, antialiased),
    placed by :func:`letterbox_window` on black.

    Pillow's float ("F") resize: the same antialiased bilinear filter as PyTorch's
    ``interpolate(antialias=True)`` (outputs agree to 1e-5), without PyTorch.
    """
    h, w = pixels.shape[:2]
    top, left, nh, nw = letterbox_window(h, w, size, mode)
    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))
    out = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.float32)
    canvas = np.zeros((1, size, size), dtype=np.float32)
    canvas[0, top : top + nh, left : left + nw] = out
    return canvas


class ModelTransform:
    """``f(pixels) -> C×S×S array``: a deterministic :meth:`prepare` (resize) then :meth:`finish`
    (channels, normalisation).  The split lets a dataset cache the prepared 1×S×S images and
    lets a training subclass augment in between (:class:`fracdet.data.augment.TrainTransform`)."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec
        self.mean = np.asarray(spec.mean[: spec.channels], dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(spec.std[: spec.channels], dtype=np.float32).reshape(-1, 1, 1)
        # (x - mean) / std as x * scale + shift, one channel at a time, written in place
        self._scale = (1.0 / self.std).reshape(-1)
        self._shift = (-self.mean / self.std).reshape(-1)

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """Resize to the model's input (1×S×S, [0, 1])."""
        return resize_to_input(pixels, self.spec.input_size, self.spec.resize)

    def finish(self, x: np.ndarray) -> np.ndarray:
        """Expand a prepared 1×S×S image to the model's channels and normalise."""
        out = np.empty((len(self._scale),) + tuple(x.shape[-2:]), np.float32)
        self._normalise_into(x, out)
        return out

    def _normalise_into(self, x: np.ndarray, out: np.ndarray) -> None:
        """Write the normalised channels of a 1×S×S image into ``out`` (C×S×S)."""
        gray = np.asarray(x)[0]
        for c in range(len(self._scale)):
            np.multiply(gray, self._scale[c], out=out[c])
            out[c] += self._shift[c]

    def finish_batch(self, prepared: list[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        """:meth:`finish` of prepared 1×S×S images straight into one N×C×S×S batch, reusing
        ``out`` when it is large enough (no per-image copies, no fresh pages)."""
        n, s = len(prepared), self.spec.input_size
        shape = (n, len(self._scale), s, s)
        buf = out[:n] if out is not None and out.shape[0] >= n and out.shape[1:] == shape[1:] else np.empty(shape, np.float32)
        for i, p in enumerate(prepared):
            self._normalise_into(p, buf[i])
        return buf

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.finish(self.prepare(pixels))


def build_transforms(spec: PreprocessSpec) -> ModelTransform:
    """The evaluation transform of a model (for training with augmentation see
    :func:`fracdet.data.augment.build_train_transforms`)."""
    return ModelTransform(spec)


def spec_from_model(model_spec: Any, resize: str = "letterbox") -> PreprocessSpec:
    """Build the preprocessing spec from a registry :class:`~fracdet.models.ModelSpec`."""
    return PreprocessSpec(
        input_size=int(model_spec.input_size),
        mean=tuple(model_spec.mean),
        std=tuple(model_spec.std),
        channels=3,
        resize=resize,
    )


__all__ = ["AugmentConfig", "ModelTransform", "PreprocessSpec", "RESIZE_MODES", "Transform", "build_transforms",
           "letterbox_window", "resize_to_input", "spec_from_model"]

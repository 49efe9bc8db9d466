"""Test-time augmentation: a model wrapper that averages the views' logits.

Views: the image itself, its horizontal mirror, and small rotations (±``degrees``), each
padded with the letterbox's black. The wrapper returns the mean of the views' raw logits, so
the model's calibration map (temperature, Platt, beta or isotonic) applies downstream to it
exactly as to one view's logit; averaging probabilities under one map (the earlier rule) did
not commute with the others.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF


class TTAModel(nn.Module):
    """``model`` with test-time augmentation (hflip + rotations by ``angles`` degrees)."""

    def __init__(self, model: nn.Module, preprocess: Any,
                 angles: Sequence[float] = (-10.0, 10.0), hflip: bool = True) -> None:
        super().__init__()
        self.model = model
        self.angles = [float(a) for a in angles]
        self.hflip = hflip
        # black (0 in the pixel convention) after the model's normalisation, per channel
        self.fill = [float(-m / s) for m, s in zip(preprocess.mean, preprocess.std)][: preprocess.channels]

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = [x]
        if self.hflip:
            out.append(torch.flip(x, dims=[-1]))
        for a in self.angles:
            out.append(TF.rotate(x, a, interpolation=InterpolationMode.BILINEAR, fill=self.fill))
        return out

    def forward(self, x: torch.Tensor, own: torch.Tensor | None = None) -> torch.Tensor:
        """The mean logit of the views; ``own``: the image's own logit when the caller has run it
        already (it is not run again)."""
        views = self.views(x)
        if own is not None:
            views = views[1:]
        logits = [self.model(v.contiguous(memory_format=torch.channels_last)).float() for v in views]
        return torch.stack(([own.float()] if own is not None else []) + logits).mean(dim=0)


def with_tta(model: nn.Module, artifact: Any, angles: Sequence[float] = (-10.0, 10.0)) -> TTAModel:
    """Wrap ``model`` (built from ``artifact``) for test-time augmentation."""
    return TTAModel(model, artifact.preprocess, angles=angles).eval()


__all__ = ["TTAModel", "with_tta"]

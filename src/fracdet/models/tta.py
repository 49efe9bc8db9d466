"""Test-time augmentation: a model wrapper that averages views in probability space.

Views: the image itself, its horizontal mirror, and small rotations (±``degrees``), each
padded with the letterbox's black. The wrapper returns the logit of the mean calibrated
probability, scaled back by the temperature — ``T · logit(mean σ(zᵥ / T))`` — so the usual
``σ(z / T)`` downstream gives exactly the averaged probability and nothing else changes.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

EPS = 1e-6


class TTAModel(nn.Module):
    """``model`` with test-time augmentation (hflip + rotations by ``angles`` degrees)."""

    def __init__(self, model: nn.Module, temperature: float, preprocess: Any,
                 angles: Sequence[float] = (-10.0, 10.0), hflip: bool = True) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        probs = [torch.sigmoid(self.model(v.contiguous(memory_format=torch.channels_last)).float() / t)
                 for v in self.views(x)]
        p = torch.stack(probs).mean(dim=0).clamp(EPS, 1 - EPS)
        return t * (torch.log(p) - torch.log1p(-p))


def with_tta(model: nn.Module, artifact: Any, angles: Sequence[float] = (-10.0, 10.0)) -> TTAModel:
    """Wrap ``model`` (built from ``artifact``) for test-time augmentation."""
    return TTAModel(model, artifact.temperature, artifact.preprocess, angles=angles).eval()


__all__ = ["TTAModel", "with_tta"]

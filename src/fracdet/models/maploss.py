"""The map head's loss: per-cell BCE (or focal) against box masks reduced to the map's cells."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def cell_targets(masks: torch.Tensor, map_hw: tuple[int, int]) -> torch.Tensor:
    """N×h×w soft cell targets from N×1×S×S box masks: the share of each cell inside a box.

    (Measured on a synthetic blob: "positive when a box touches the cell" made every border
    cell as hot as the centre, and the map's maximum often fell on a border cell outside the box.)"""
    return F.adaptive_avg_pool2d(masks.float(), tuple(int(v) for v in map_hw))[:, 0]


def map_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
    """Mean per-cell BCE over the films with weight > 0 (focal with ``gamma`` > 0); ``targets``
    are N×h×w cell targets or N×1×S×S masks; 0 when no film in the batch has a map target."""
    if targets.dim() == 4:
        targets = cell_targets(targets, tuple(logits.shape[-2:]))
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma > 0:
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        bce = bce * (1 - p_t).pow(gamma)
    per_film = bce.flatten(1).mean(1)
    w = weights.to(per_film.dtype)
    return (per_film * w).sum() / w.sum().clamp_min(1.0)


__all__ = ["cell_targets", "map_loss"]

"""The map head's losses: per-cell BCE (or focal) against box masks reduced to the map's cells,
the box-mass loss that rewards the map for putting its peak inside a box, and a box head's loss."""

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


def box_mass_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """−log of the share of the map's spatial softmax that lies in the boxes (each cell counted by
    its share inside a box), averaged over the films with weight > 0 and some box in the map; 0 when
    none.  Per-cell BCE scores every cell alone, so nothing in it asks the maximum to be in the box;
    this loss does (the "energy" of box-guided training, on the map's own softmax)."""
    if targets.dim() == 4:
        targets = cell_targets(targets, tuple(logits.shape[-2:]))
    flat, share = logits.flatten(1), targets.flatten(1).to(logits.dtype)
    boxed = (weights > 0) & (share.sum(1) > 0)
    if not bool(boxed.any()):
        return logits.sum() * 0.0
    log_p = F.log_softmax(flat[boxed], dim=1)
    mass = torch.logsumexp(log_p + torch.log(share[boxed].clamp_min(1e-12)), dim=1)
    return -mass.mean()


def centre_loss(box_map: torch.Tensor, heat: torch.Tensor, reg: torch.Tensor, centre: torch.Tensor,
                reg_weight: float = 1.0) -> torch.Tensor:
    """A box head's loss (CenterNet): the penalty-reduced focal loss of the centre logits
    (``box_map[:, 0]``) against Gaussian ``heat`` maps, plus ``reg_weight`` × L1 of offset and
    log size (``box_map[:, 1:]`` against ``reg``) at the ``centre`` cells; per box centre."""
    p = torch.sigmoid(box_map[:, 0]).clamp(1e-4, 1 - 1e-4)
    pos = centre.to(p.dtype)
    n = pos.sum().clamp_min(1.0)
    focal = (-torch.log(p) * (1 - p) ** 2 * pos - torch.log(1 - p) * p ** 2 * (1 - heat) ** 4 * (1 - pos)).sum() / n
    m = pos.unsqueeze(1)
    return focal + reg_weight * (F.l1_loss(box_map[:, 1:] * m, reg * m, reduction="sum") / n)


__all__ = ["box_mass_loss", "cell_targets", "centre_loss", "map_loss"]

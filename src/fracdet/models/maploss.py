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


BOX_LOSSES = ("l1", "giou")


def centre_loss(box_map: torch.Tensor, heat: torch.Tensor, reg: torch.Tensor, weight: torch.Tensor,
                reg_weight: float = 1.0, box_loss: str = "l1") -> torch.Tensor:
    """A box head's loss (CenterNet): the penalty-reduced focal loss of the centre logits
    (``box_map[:, 0]``) against Gaussian ``heat`` maps (positive where it is 1: the centre
    cells), plus ``reg_weight`` × the box regression (``box_map[:, 1:]``: offset and log size, in
    cells) against ``reg``, weighted per cell by ``weight`` (:func:`fracdet.data.boxtargets.grid_targets`):
    ``box_loss`` "l1" on offset and log size, or "giou" (generalised IoU of the decoded box); per box centre."""
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box loss {box_loss!r} (expected one of {', '.join(BOX_LOSSES)})")
    p = torch.sigmoid(box_map[:, 0]).clamp(1e-4, 1 - 1e-4)
    pos = (heat >= 1.0).to(p.dtype)
    n = pos.sum().clamp_min(1.0)
    focal = (-torch.log(p) * (1 - p) ** 2 * pos - torch.log(1 - p) * p ** 2 * (1 - heat) ** 4 * (1 - pos)).sum() / n
    if box_loss == "l1":
        reg_loss = (F.l1_loss(box_map[:, 1:], reg, reduction="none") * weight.unsqueeze(1)).sum()
    else:
        from torchvision.ops import generalized_box_iou_loss

        cells = weight > 0
        pred = box_map[:, 1:].permute(0, 2, 3, 1)[cells]
        reg_loss = (generalized_box_iou_loss(_cell_box(pred), _cell_box(reg.permute(0, 2, 3, 1)[cells]),
                                             reduction="none") * weight[cells]).sum()
    return focal + reg_weight * reg_loss / n


def _cell_box(r: torch.Tensor) -> torch.Tensor:
    """K×4 (dy, dx, log h, log w) relative to a cell's centre → K×4 (x0, y0, x1, y1) in cells."""
    h, w = torch.exp(r[:, 2].clamp(-10, 10)), torch.exp(r[:, 3].clamp(-10, 10))
    return torch.stack([r[:, 1] - w / 2, r[:, 0] - h / 2, r[:, 1] + w / 2, r[:, 0] + h / 2], dim=1)


__all__ = ["BOX_LOSSES", "box_mass_loss", "cell_targets", "centre_loss", "map_loss"]

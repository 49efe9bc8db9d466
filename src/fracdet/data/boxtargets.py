"""Fracture boxes as training targets for a map head: a box mask in the network's input frame
(the one letterbox geometry, :func:`fracdet.transforms.letterbox_window`) that follows the
image through the same geometric augmentation.

Per film: fractured with boxes → the mask of its boxes, weight 1; not fractured → an empty
mask, weight 1 (every cell is negative); fractured without boxes → weight 0 (only the image
loss).  The mask is reduced to the map's cells in the loss (:mod:`fracdet.models.maploss`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from fracdet.data.loader import EpochShuffle, ImageDataset
from fracdet.errors import ImageReadError
from fracdet.transforms import ModelTransform, letterbox_window

log = logging.getLogger(__name__)
Box = tuple[float, float, float, float]  # x, y, w, h in pixels of the original file (COCO)
FRACATLAS_BOXES = "annotations/fracture_boxes_coco.json"


def find_boxes(data: str | Path) -> Path | None:
    """The COCO box file of a FracAtlas-layout folder (``annotations/fracture_boxes_coco.json``), if any."""
    p = Path(data)
    candidate = (p if p.is_dir() else p.parent) / FRACATLAS_BOXES
    return candidate if candidate.is_file() else None


def input_mask(boxes: Sequence[Box], image_hw: tuple[int, int], size: int, mode: str = "letterbox") -> np.ndarray:
    """1×S×S uint8 mask of ``boxes`` (original pixels of an image of ``image_hw``) where the
    letterbox puts them in the S×S model input; a box covers at least one input pixel."""
    h, w = int(image_hw[0]), int(image_hw[1])
    top, left, nh, nw = letterbox_window(h, w, size, mode)
    sy, sx = nh / h, nw / w
    mask = np.zeros((1, size, size), dtype=np.uint8)
    for x, y, bw, bh in boxes:
        c0, r0 = int(np.floor(left + x * sx)), int(np.floor(top + y * sy))
        c1, r1 = max(int(np.ceil(left + (x + bw) * sx)), c0 + 1), max(int(np.ceil(top + (y + bh) * sy)), r0 + 1)
        mask[0, max(r0, 0):min(r1, size), max(c0, 0):min(c1, size)] = 1
    return mask


def input_boxes(boxes: Sequence[Box], image_hw: tuple[int, int], size: int, mode: str = "letterbox") -> np.ndarray:
    """K×4 float32 (x0, y0, x1, y1) of COCO ``boxes`` (original pixels of an image of
    ``image_hw``) in the S×S model input, where the letterbox puts them."""
    h, w = int(image_hw[0]), int(image_hw[1])
    top, left, nh, nw = letterbox_window(h, w, size, mode)
    sy, sx = nh / h, nw / w
    out = [(left + x * sx, top + y * sy, left + (x + bw) * sx, top + (y + bh) * sy) for x, y, bw, bh in boxes]
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)


def grid_targets(xyxy: np.ndarray, size: int, grid: tuple[int, int], dense: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A box head's targets on an h×w ``grid`` over the S×S input from K×4 input-pixel boxes: the
    centre heatmap (a Gaussian at each box's centre cell, σ a sixth of the box's longer side in
    cells, at least ½ — CenterNet's rule; 1 exactly at the centre cells), per cell (dy, dx, log h,
    log w) in cells, and the regression weights: 1 at the centre cells (``dense`` 0, CenterNet),
    or (``dense`` in (0, 1), as TTFNet) also at every cell where the box's Gaussian is ≥ ``dense``,
    weighted by it, each box's weights summing to 1 (a cell two boxes claim goes to the one whose
    Gaussian is higher there, and the other's sum is less).  A box under one input pixel wide or
    high counts as one pixel."""
    gh, gw = int(grid[0]), int(grid[1])
    stride_y, stride_x = size / gh, size / gw
    heat = np.zeros((gh, gw), np.float32)
    reg = np.zeros((4, gh, gw), np.float32)
    weight = np.zeros((gh, gw), np.float32)
    owner = np.zeros((gh, gw), np.float32)  # the Gaussian of the box that holds each cell's regression
    rows, cols = np.mgrid[0:gh, 0:gw]
    for x0, y0, x1, y1 in np.asarray(xyxy, dtype=np.float64).reshape(-1, 4):
        cy, cx = (y0 + y1) / 2 / stride_y, (x0 + x1) / 2 / stride_x
        bh_c, bw_c = max(y1 - y0, 1.0) / stride_y, max(x1 - x0, 1.0) / stride_x
        r, c = min(max(int(cy), 0), gh - 1), min(max(int(cx), 0), gw - 1)
        sigma = max(0.5, max(bh_c, bw_c) / 6)
        g = np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma ** 2)).astype(np.float32)
        heat = np.maximum(heat, g)
        cells = (g >= dense) & (g > owner) if dense > 0 else np.zeros((gh, gw), bool)
        cells[r, c] = True  # the centre cell always
        w = np.where(cells, g, 0.0)
        weight = np.where(cells, w / w.sum(), weight)
        owner = np.where(cells, g, owner)
        reg[:, cells] = np.stack([cy - rows[cells] - 0.5, cx - cols[cells] - 0.5,
                                  np.full(int(cells.sum()), np.log(bh_c)), np.full(int(cells.sum()), np.log(bw_c))])
    return heat, reg, weight


def centre_targets(boxes: Sequence[Box], image_hw: tuple[int, int], size: int, grid: tuple[int, int],
                   mode: str = "letterbox", flip: bool = False, dense: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`grid_targets` of COCO ``boxes`` of an image of ``image_hw`` (``flip``: the image
    mirrored left–right)."""
    xyxy = input_boxes(boxes, image_hw, size, mode)
    if flip:
        xyxy = np.stack([size - xyxy[:, 2], xyxy[:, 1], size - xyxy[:, 0], xyxy[:, 3]], axis=1)
    return grid_targets(xyxy, size, grid, dense)


def _image_hw(path: Any) -> tuple[int, int]:
    """(H, W) of an image file from its header (the frame COCO boxes are given in)."""
    try:
        with Image.open(path) as im:
            return int(im.size[1]), int(im.size[0])
    except (OSError, ValueError):
        from fracdet.io.images import read_image

        xray = read_image(path)
        size = xray.meta.get("original_size")
        return (int(size[1]), int(size[0])) if size else tuple(int(v) for v in xray.pixels.shape[:2])  # type: ignore[return-value]


class BoxDataset(ImageDataset):
    """:class:`~fracdet.data.loader.ImageDataset` that also yields each film's box mask (1×S×S,
    moved by the same augmentation as the image) and its map-loss weight:
    ``(tensor, label, index, mask, weight)``; with ``box_grid`` (h, w) also a box head's targets
    on that grid from the film's boxes moved by the same draw: ``+ (heat, reg, regression weights)``
    (``box_dense``: see :func:`grid_targets`)."""

    def __init__(self, samples: Sequence[Any], transform: ModelTransform, boxes: dict[str, list[Box]],
                 cache: bool = False, box_grid: tuple[int, int] | None = None, box_dense: float = 0.0) -> None:
        super().__init__(samples, transform, cache=cache)
        self.boxes = boxes
        self.box_grid = None if box_grid is None else (int(box_grid[0]), int(box_grid[1]))
        self.box_dense = float(box_dense)
        self._hw: dict[int, tuple[int, int]] = {}

    def _found(self, i: int) -> list[Box]:
        s = self.samples[i]
        return list(self.boxes.get(Path(str(s.path)).name) or []) if int(s.label) else []

    def target(self, i: int) -> tuple[np.ndarray, float]:
        """The film's 1×S×S box mask and map-loss weight (see the module docstring)."""
        spec = self.transform.spec
        empty = np.zeros((1, spec.input_size, spec.input_size), dtype=np.uint8)
        if not int(self.samples[i].label):
            return empty, 1.0
        found = self._found(i)
        if not found:
            return empty, 0.0
        return input_mask(found, self.image_hw(i), spec.input_size, spec.resize), 1.0

    def image_hw(self, i: int) -> tuple[int, int]:
        """(H, W) of film ``i`` (the frame its COCO boxes are in), read once."""
        if i not in self._hw:
            self._hw[i] = _image_hw(self.samples[i].path)
        return self._hw[i]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        """Item ``key``: an index, or ``(seed, index)`` (from :class:`~fracdet.data.loader.EpochShuffle`)
        to draw the augmentation from ``seed``, as :class:`~fracdet.data.loader.ImageDataset` does."""
        seed, i = key if isinstance(key, tuple) else (None, key)
        if i in self.bad:
            return None
        spec = self.transform.spec
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x = self._prepared(i)
                mask, weight = self.target(i)
                found = self._found(i) if self.box_grid is not None else []
                xyxy = input_boxes(found, self.image_hw(i), spec.input_size, spec.resize) if found else \
                    np.zeros((0, 4), np.float32)
        except ImageReadError as exc:
            self.bad[i] = str(exc)
            log.warning("skipping unreadable training image: %s", exc)
            return None
        pair = getattr(self.transform, "finish_pair", None)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            if pair is not None:
                img, mask, moved = pair(x, mask, xyxy if self.box_grid is not None else None)
            else:
                img, moved = self.transform.finish(x), xyxy
        item = (torch.from_numpy(img), int(self.samples[i].label), i,
                torch.as_tensor(np.asarray(mask), dtype=torch.uint8), float(weight))
        if self.box_grid is None:
            return item
        kept = moved[(moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])]  # moved off the input: gone
        return item + tuple(torch.from_numpy(a) for a in grid_targets(kept, spec.input_size, self.box_grid,
                                                                                 self.box_dense))


def collate_boxes(batch: list[Any]) -> tuple[torch.Tensor, ...]:
    """Stack a :class:`BoxDataset` batch, leaving out items that could not be read."""
    items = [b for b in batch if b is not None]
    if not items:
        empty = torch.empty(0)
        return empty.view(0, 3, 1, 1), empty, empty.long(), empty.view(0, 1, 1, 1), empty
    xs, ys, idx, masks, weights, *heads = zip(*items)
    return (torch.stack(xs), torch.tensor(ys, dtype=torch.float32), torch.tensor(idx), torch.stack(masks),
            torch.tensor(weights, dtype=torch.float32), *(torch.stack(h) for h in heads))


def make_box_loader(samples: Sequence[Any], transform: ModelTransform, boxes: dict[str, list[Box]],
                    batch_size: int = 32, num_workers: int = 0, cache: bool = False,
                    seed: int = 0, box_grid: tuple[int, int] | None = None,
                    box_dense: float = 0.0) -> torch.utils.data.DataLoader:
    """A shuffled training loader of :class:`BoxDataset` items: order and augmentation per epoch
    from ``seed`` (:class:`~fracdet.data.loader.EpochShuffle`, as the image loader, so --resume
    holds); ``box_grid``: with a box head's targets on that grid (``box_dense`` as :func:`grid_targets`)."""
    dataset = BoxDataset(samples, transform, boxes, cache=cache and num_workers == 0, box_grid=box_grid,
                         box_dense=box_dense)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=EpochShuffle(dataset, seed),
                                       num_workers=num_workers, collate_fn=collate_boxes,
                                       generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0)


__all__ = ["BoxDataset", "FRACATLAS_BOXES", "centre_targets", "collate_boxes", "find_boxes", "grid_targets",
           "input_boxes", "input_mask", "make_box_loader"]

"""Training a fracture-map head from boxes: which boxes, which head, and the box threshold
chosen on validation (box F1 at IoU ≥ 0.5 of :func:`fracdet.fracturemap.map_boxes`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fracdet.data.boxtargets import find_boxes
from fracdet.errors import FracdetError
from fracdet.fracturemap import map_boxes
from fracdet.localisation import iou, load_coco_boxes

log = logging.getLogger(__name__)
BOX_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
CENTRE_THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)  # a box head's centre scores
BOX_HEAD_WIDTH = 64  # the width scripts/boxhead_fit.py's heads were chosen at (docs/experiments.md)


def map_head_kwargs(cfg: Any) -> dict[str, Any]:
    """``create_model`` keywords of the map head and box head a config asks for ({} when
    ``map_weight`` is 0; the box head, width 64, when ``box_weight`` > 0)."""
    if not getattr(cfg, "map_weight", 0.0):
        return {}
    stride = int(cfg.map_stride or 0)
    if not stride:
        from fracdet.models.registry import get_spec

        stride = 32 if get_spec(cfg.model).timm_name is None else 16
    kwargs: dict[str, Any] = {"map_stride": stride, "map_fuse": float(cfg.map_fuse)}
    if getattr(cfg, "box_weight", 0.0) > 0:
        kwargs.update(box_width=BOX_HEAD_WIDTH, box_stride=int(cfg.box_stride))
    return kwargs


def training_boxes(cfg: Any) -> dict[str, list[tuple[float, float, float, float]]]:
    """The COCO boxes a map-head run trains on (``cfg.boxes``, or found beside FracAtlas data)."""
    path = find_boxes(cfg.data) if cfg.boxes in ("", "auto", None) else Path(cfg.boxes)
    if path is None:
        raise FracdetError(f"{cfg.data}: --map-weight needs fracture boxes: give --boxes COCO_JSON")
    boxes = load_coco_boxes(path)
    log.info("map head: %d films with %d fracture boxes from %s", len(boxes), sum(map(len, boxes.values())), path)
    return boxes


def box_scores(preds: Sequence[Sequence[tuple]], truths: Sequence[Sequence[tuple]]) -> dict[str, float]:
    """AP50 (all-point), precision, recall and F1 at IoU ≥ 0.5 of predicted boxes
    ``(x0, y0, x1, y1, score)`` against true COCO boxes ``(x, y, w, h)``, per film, pooled."""
    scored: list[tuple[float, bool]] = []
    n_true = sum(len(t) for t in truths)
    for pred, truth in zip(preds, truths):
        used: set[int] = set()
        for b in sorted(pred, key=lambda b: -b[4]):
            ious = [0.0 if j in used else iou((b[0], b[1], b[2] - b[0], b[3] - b[1]), g) for j, g in enumerate(truth)]
            j = int(np.argmax(ious)) if ious else -1
            hit = j >= 0 and ious[j] >= 0.5
            if hit:
                used.add(j)
            scored.append((float(b[4]), hit))
    if not scored or not n_true:
        return {"ap50": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    scored.sort(key=lambda s: -s[0])
    tp = np.cumsum([h for _, h in scored], dtype=float)
    prec, rec = tp / np.arange(1, len(tp) + 1), tp / n_true
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    ap = float(np.sum(np.diff(np.concatenate([[0.0], rec])) * envelope))
    p, r = float(tp[-1] / len(tp)), float(tp[-1] / n_true)
    return {"ap50": ap, "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def choose_box_threshold(maps: Sequence[np.ndarray], image_hws: Sequence[tuple[int, int]],
                         truths: Sequence[Sequence[tuple]], input_size: int, mode: str = "letterbox",
                         thresholds: Sequence[float] = BOX_THRESHOLDS) -> tuple[float, dict[str, Any]]:
    """The threshold with the best box F1 over films (their map logits, sizes and true boxes;
    films without a fracture have no true box) and every threshold's scores."""
    table: dict[str, Any] = {}
    best = (float(thresholds[0]), -1.0)
    for t in thresholds:
        preds = [map_boxes(m, input_size, hw, threshold=t, mode=mode) for m, hw in zip(maps, image_hws)]
        s = box_scores(preds, truths)
        s["boxes_per_film"] = sum(map(len, preds)) / max(len(preds), 1)
        table[f"{t:g}"] = {k: round(float(v), 4) for k, v in s.items()}
        if s["f1"] > best[1]:
            best = (float(t), s["f1"])
    return best[0], table


__all__ = ["BOX_THRESHOLDS", "CENTRE_THRESHOLDS", "box_scores", "choose_box_threshold", "choose_centre_threshold",
           "fit_localisation", "map_head_kwargs", "training_boxes"]


def fit_localisation(model: Any, samples: Sequence[Any], spec: Any, boxes: dict[str, list[tuple]],
                     batch_size: int = 16) -> dict[str, Any]:
    """The ``localisation`` settings of a trained map model: its box threshold chosen on
    ``samples`` (the validation split: fractured films' COCO boxes as truth, the others none),
    with every threshold's scores and the pointing game of the map; with a box head also its
    centre threshold (best box F1) and the AP50 of all its boxes."""
    import torch

    from fracdet.fracturemap import map_to_image, original_hw
    from fracdet.io.images import read_image
    from fracdet.localisation import pointing_hit
    from fracdet.transforms import build_transforms

    transform = build_transforms(spec)
    maps, box_maps, hws, truths = [], [], [], []
    model.eval()
    for start in range(0, len(samples), batch_size):
        chunk, xs = [], []
        for s in samples[start:start + batch_size]:
            try:
                xray = read_image(s.path, min_size=spec.input_size)
            except FracdetError:
                continue
            xs.append(transform(xray.pixels))
            hw = original_hw(xray.pixels, xray.meta)
            chunk.append((hw, list(boxes.get(Path(str(s.path)).name, [])) if int(s.label) else []))
        if not xs:
            continue
        with torch.inference_mode():
            out = model.graph_outputs(torch.from_numpy(np.stack(xs)))
        maps.extend(out["fracture_map"].float().numpy())
        if "box_map" in out:
            box_maps.extend(out["box_map"].float().numpy())
        hws.extend(h for h, _ in chunk)
        truths.extend(t for _, t in chunk)
    threshold, table = choose_box_threshold(maps, hws, truths, spec.input_size, spec.resize)
    pointed = [pointing_hit(map_to_image(m, spec.input_size, hw, mode=spec.resize), t)
               for m, hw, t in zip(maps, hws, truths) if t]
    result = {"box_threshold": threshold, "chosen_on": "the validation split (box F1 at IoU 0.5)",
              "val_boxes": table, "val_pointing_game": float(np.mean(pointed)) if pointed else None,
              "val_films_with_boxes": len(pointed)}
    log.info("map head: box threshold %.2f (val box F1 %.3f, AP50 %.3f), pointing game %s on %d films",
             threshold, table[f"{threshold:g}"]["f1"], table[f"{threshold:g}"]["ap50"],
             f"{result['val_pointing_game']:.3f}" if pointed else "n/a", len(pointed))
    if box_maps:
        result.update(choose_centre_threshold(box_maps, hws, truths, spec.input_size, spec.resize))
    return result


def choose_centre_threshold(box_maps: Sequence[np.ndarray], image_hws: Sequence[tuple[int, int]],
                            truths: Sequence[Sequence[tuple]], input_size: int, mode: str = "letterbox",
                            thresholds: Sequence[float] = CENTRE_THRESHOLDS) -> dict[str, Any]:
    """A box head's centre threshold with the best box F1 over films (as
    :func:`choose_box_threshold`), every threshold's scores, and AP50 and sensitivity at one
    false-positive box per film of every decoded box (:mod:`fracdet.boxmetrics`)."""
    from fracdet.boxmetrics import detection_summary, xywh_to_corners
    from fracdet.fracturemap import centre_boxes

    def decoded(t: float) -> list[list[tuple]]:
        return [centre_boxes(b, input_size, hw, threshold=t, mode=mode) for b, hw in zip(box_maps, image_hws)]

    table: dict[str, Any] = {}
    for t in thresholds:
        preds = decoded(t)
        s = box_scores(preds, truths)
        s["boxes_per_film"] = sum(map(len, preds)) / max(len(preds), 1)
        table[f"{t:g}"] = {k: round(float(v), 4) for k, v in s.items()}
    best = max(thresholds, key=lambda t: table[f"{t:g}"]["f1"])
    every = detection_summary(decoded(1e-6), [xywh_to_corners(t) for t in truths])
    log.info("box head: centre threshold %g (val box F1 %.3f); every box: AP50 %.3f, sensitivity at 1 FP/film %.2f",
             best, table[f"{best:g}"]["f1"], every["map50"], every["sensitivity_at_1fp"])
    return {"centre_threshold": float(best), "centre_threshold_chosen_on": "the validation split (box F1 at IoU 0.5)",
            "val_centre_boxes": table, "val_box_head": {k: every[k] for k in ("map50", "sensitivity_at_1fp", "n_true_boxes")}}

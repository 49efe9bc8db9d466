"""Detection scores of predicted fracture boxes against true boxes (numpy): COCO-style average
precision at one IoU (mAP50) and FROC sensitivity at a number of false-positive boxes per film.

Boxes here are corners ``(x0, y0, x1, y1)`` in original-image pixels; predicted boxes carry a
score, ``(x0, y0, x1, y1, score)``. Films without true boxes (normal films) count: each of their
predicted boxes is a false positive.

Matching (COCO): per film, predicted boxes in descending score order each take the unmatched
true box of highest IoU, if that IoU ≥ ``iou_threshold``; else they are false positives.
AP: the 101-point interpolated area under the precision–recall curve (precision at recall r is
the best precision at any recall ≥ r; recall levels 0, 0.01, …, 1 that are never reached give 0).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fracdet.metrics import percentile_interval, stratified_resample

RECALL_LEVELS = np.linspace(0.0, 1.0, 101)
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DETECTIONS_FILE = "detections.json"
"""An evaluation's per-film boxes: each film's true boxes and every box source's scored boxes
(written by ``fracdet evaluate --boxes``, read by ``fracdet compare``)."""


def _boxes(a: Any, width: int) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64).reshape(-1, width) if len(a) else np.zeros((0, width))
    return arr


def iou_matrix(pred: Any, true: Any) -> np.ndarray:
    """IoU of every predicted box (rows) with every true box (columns), corners format."""
    p, t = _boxes(pred, 4)[:, :4], _boxes(true, 4)[:, :4]
    ix = np.clip(np.minimum(p[:, None, 2], t[None, :, 2]) - np.maximum(p[:, None, 0], t[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(p[:, None, 3], t[None, :, 3]) - np.maximum(p[:, None, 1], t[None, :, 1]), 0, None)
    inter = ix * iy
    area_p = np.clip(p[:, 2] - p[:, 0], 0, None) * np.clip(p[:, 3] - p[:, 1], 0, None)
    area_t = np.clip(t[:, 2] - t[:, 0], 0, None) * np.clip(t[:, 3] - t[:, 1], 0, None)
    union = area_p[:, None] + area_t[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_boxes(preds: Sequence[Any], truths: Sequence[Any], iou_threshold: float = 0.5
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores and true-positive flags of all predicted boxes of all films, and the number of
    true boxes. ``preds[i]``: film i's ``(x0, y0, x1, y1, score)`` boxes; ``truths[i]``: its
    true ``(x0, y0, x1, y1)`` boxes (empty for a normal film)."""
    if len(preds) != len(truths):
        raise ValueError("one list of predicted boxes per film with true boxes expected")
    scores, hits, n_true = [], [], 0
    for pb, tb in zip(preds, truths):
        p, t = _boxes(pb, 5), _boxes(tb, 4)
        n_true += len(t)
        order = np.argsort(-p[:, 4], kind="stable")
        ious = iou_matrix(p[order, :4], t)
        taken = np.zeros(len(t), dtype=bool)
        for row, k in enumerate(order):
            cand = np.where(taken, -1.0, ious[row]) if len(t) else np.zeros(0)
            j = int(np.argmax(cand)) if len(cand) else -1
            ok = j >= 0 and cand[j] >= iou_threshold
            if ok:
                taken[j] = True
            scores.append(p[k, 4])
            hits.append(ok)
    return np.asarray(scores, dtype=np.float64), np.asarray(hits, dtype=bool), n_true


def _cumulative(scores: np.ndarray, hits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative TP and FP counts at each distinct score (descending): a threshold keeps every
    box scoring at least it, so tied boxes enter together."""
    order = np.argsort(-scores, kind="stable")
    s, h = scores[order], hits[order]
    tp, fp = np.cumsum(h), np.cumsum(~h)
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, dtype=bool)  # end of each tie group
    return tp[last], fp[last], s[last]


def average_precision(scores: np.ndarray, hits: np.ndarray, n_true: int) -> float:
    """COCO 101-point interpolated AP of scored detections (NaN when there are no true boxes)."""
    if n_true <= 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    tp, fp, _ = _cumulative(np.asarray(scores, dtype=np.float64), np.asarray(hits, dtype=bool))
    recall = tp / n_true
    precision = tp / np.maximum(tp + fp, 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at any recall ≥ this one
    idx = np.searchsorted(recall, RECALL_LEVELS, side="left")
    return float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in idx]))


def sensitivity_at_fp(scores: np.ndarray, hits: np.ndarray, n_true: int, n_films: int,
                      fp_per_film: float = 1.0) -> tuple[float, float | None]:
    """FROC: the share of true boxes hit at the lowest score threshold whose false positives
    average at most ``fp_per_film`` per film, and that threshold (None when no box qualifies)."""
    if n_true <= 0 or n_films <= 0:
        return float("nan"), None
    if len(scores) == 0:
        return 0.0, None
    tp, fp, s = _cumulative(np.asarray(scores, dtype=np.float64), np.asarray(hits, dtype=bool))
    ok = np.where(fp / n_films <= fp_per_film)[0]
    if not len(ok):
        return 0.0, None
    i = int(ok[-1])
    return float(tp[i] / n_true), float(s[i])


def detection_summary(preds: Sequence[Any], truths: Sequence[Any], iou_threshold: float = 0.5,
                      rates: Sequence[float] = FROC_RATES, also_at: Sequence[float] = (0.25,),
                      n_resamples: int = 0, seed: int = 0) -> dict[str, Any]:
    """mAP at ``iou_threshold`` (one class: AP), sensitivity at 1 FP box per film with its score
    threshold, the FROC points at ``rates``, the counts, the same AP over the films with true
    boxes alone (``map50_boxed``: normal films' boxes left out, the protocol of detectors trained
    and tested on fractured films only, such as FracAtlas' YOLOv8 baseline), and the AP at each
    looser IoU of ``also_at`` (``map25``: a box in the right place, drawn the wrong size, counts
    there); with ``n_resamples`` > 0 also ``ci``: :func:`detection_ci` of the mAP and the sensitivity."""
    per_film = film_matches(preds, truths, iou_threshold)
    scores, hits, n_true = _pooled(per_film, range(len(per_film)))
    sens, thr = sensitivity_at_fp(scores, hits, n_true, len(preds), 1.0)
    out: dict[str, Any] = {
        _ap_key(iou_threshold): average_precision(scores, hits, n_true),
        f"{_ap_key(iou_threshold)}_boxed": pooled_scores(per_film, boxed_and_normal(per_film)[0])[0],
        "sensitivity_at_1fp": sens, "score_threshold_at_1fp": thr,
        "froc": {str(r): sensitivity_at_fp(scores, hits, n_true, len(preds), r)[0] for r in rates},
        "n_films": len(preds), "n_true_boxes": int(n_true), "n_predicted_boxes": int(len(scores)),
        "iou_threshold": iou_threshold,
    }
    for t in also_at:
        if t != iou_threshold:
            out[_ap_key(t)] = average_precision(*match_boxes(preds, truths, t))
    if n_resamples > 0:
        out["ci"] = _film_intervals(per_film, iou_threshold, n_resamples, seed)
    return out


FilmMatches = tuple[np.ndarray, np.ndarray, int]
"""One film's :func:`match_boxes`: its boxes' scores, their true-positive flags, its true boxes."""


def film_matches(preds: Sequence[Any], truths: Sequence[Any], iou_threshold: float = 0.5) -> list[FilmMatches]:
    """:func:`match_boxes` film by film: a film's boxes only ever match within the film, so the
    films of any resample are scored exactly by :func:`pooled_scores` of their entries."""
    if len(preds) != len(truths):
        raise ValueError("one list of predicted boxes per film with true boxes expected")
    return [match_boxes([p], [t], iou_threshold) for p, t in zip(preds, truths)]


def _pooled(per_film: Sequence[FilmMatches], films: Sequence[int]) -> FilmMatches:
    """The ``films``' matches as one: their boxes' scores and flags in film order, their true boxes."""
    chosen = [per_film[i] for i in films]
    s = np.concatenate([c[0] for c in chosen]) if chosen else np.zeros(0)
    h = np.concatenate([c[1] for c in chosen]) if chosen else np.zeros(0, bool)
    return s, h, sum(c[2] for c in chosen)


def pooled_scores(per_film: Sequence[FilmMatches], films: Sequence[int]) -> tuple[float, float]:
    """AP and sensitivity at 1 FP box per film over the ``films`` (indices into ``per_film``,
    repeats allowed: a bootstrap resample)."""
    s, h, n = _pooled(per_film, films)
    return average_precision(s, h, n), sensitivity_at_fp(s, h, n, len(films), 1.0)[0]


def boxed_and_normal(per_film: Sequence[FilmMatches]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the films with true boxes and of those without (the bootstrap's two strata)."""
    boxed = np.array([i for i, c in enumerate(per_film) if c[2] > 0], dtype=int)
    normal = np.array([i for i, c in enumerate(per_film) if c[2] == 0], dtype=int)
    return boxed, normal


def detection_ci(preds: Sequence[Any], truths: Sequence[Any], iou_threshold: float = 0.5, n_resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> dict[str, dict[str, float]]:
    """Percentile bootstrap intervals of the mAP and the sensitivity at 1 FP box per film, the
    films resampled with replacement (films with true boxes and films without drawn separately,
    keeping their counts; a film's boxes are matched once, within the film, so resampling films
    is exact).  Seeded: the same inputs give the same interval."""
    return _film_intervals(film_matches(preds, truths, iou_threshold), iou_threshold, n_resamples, seed, level)


def _film_intervals(per_film: Sequence[FilmMatches], iou_threshold: float, n_resamples: int, seed: int,
                    level: float = 0.95) -> dict[str, dict[str, float]]:
    """:func:`detection_ci` of films already matched (:func:`film_matches`)."""
    boxed, normal = boxed_and_normal(per_film)
    rng = np.random.default_rng(seed)
    draws = np.array([pooled_scores(per_film, stratified_resample(rng, boxed, normal))
                      for _ in range(int(n_resamples))]).reshape(-1, 2)
    estimates = pooled_scores(per_film, np.arange(len(per_film)))
    return {name: percentile_interval(float(estimate), draws[:, j], level, n_resamples)
            for j, (name, estimate) in enumerate(zip((_ap_key(iou_threshold), "sensitivity_at_1fp"), estimates))}


def _ap_key(iou_threshold: float) -> str:
    return f"map{round(100 * iou_threshold)}"


def boxes_from_map(heatmap: np.ndarray, probability: float, fraction: float = 0.5,
                   max_boxes: int = 5) -> list[tuple[float, float, float, float, float]]:
    """Scored boxes from a map (original pixels): the bounding boxes of its connected regions at
    or above ``fraction`` × its maximum, each scored by its own peak / the map's maximum ×
    ``probability``; the ``max_boxes`` best. A flat or empty map gives none."""
    from scipy import ndimage

    m = np.nan_to_num(np.asarray(heatmap, dtype=np.float64))
    if not m.size:
        return []
    top = float(m.max())
    if top <= 0 or top <= float(m.min()):
        return []
    labels, n = ndimage.label(m >= fraction * top)
    peaks = ndimage.maximum(m, labels, index=np.arange(1, n + 1)) if n else []
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels)):
        if sl is None:
            continue
        r, c = sl
        out.append((float(c.start), float(r.start), float(c.stop), float(r.stop),
                    float(peaks[k] / top * probability)))
    out.sort(key=lambda b: -b[4])
    return out[:max_boxes]


def xywh_to_corners(boxes: Sequence[Sequence[float]]) -> list[tuple[float, float, float, float]]:
    """COCO ``(x, y, w, h)`` boxes as corners ``(x0, y0, x1, y1)``."""
    return [(float(x), float(y), float(x) + float(w), float(y) + float(h)) for x, y, w, h in boxes]

"""Would a second-stage box refinement on crops lift a model's box AP? (docs/experiments.md, session 11)

    python scripts/box_refine_probe.py DATA COCO_JSON [--model MODEL] [--out probe.json]

R-CNN's bounding-box regression on top of a box head's proposals: a square crop around each box
(side ``--context`` × its longer side, zero outside the film) is resized to ``--crop`` px and
normalised as the model's input; the model's own backbone gives its features (final map pooled
to 3 × 3, stride-16 stage pooled to 6 × 6); ridge regression predicts R-CNN's targets (centre
shift over the box's size, log width and height ratios). Training crops come from the training
films only: ``--jitter`` copies of each true box, log size ratios uniform in ±0.6 and centre
shifts up to 0.3 of its size, kept at IoU ≥ 0.3. The ridge penalty is chosen by 5-fold
cross-validation grouped by film on those crops. The refiner then moves every validation
proposal (down to the 0.001 floor; scores unchanged) and the script reports box AP50 before and
after with a paired bootstrap interval of the rise (films resampled, boxed and normal apart).
Reads validation only; needs PyTorch (``.[train]``). A research probe: nothing is saved into the model.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold

from fracdet.artifact import load_artifact
from fracdet.boxmetrics import boxed_and_normal, detection_summary, film_matches, iou_matrix, pooled_scores
from fracdet.data.layouts import load_dataset
from fracdet.data.selection import select_samples
from fracdet.fsutil import write_json
from fracdet.inference import Predictor
from fracdet.io.images import read_image
from fracdet.localisation import load_coco_boxes, model_boxes, xywh_to_corners
from fracdet.metrics import percentile_interval, stratified_resample
from fracdet.transforms import resize_to_input

log = logging.getLogger("box_refine_probe")
Box = Sequence[float]


def crop(pix: np.ndarray, box: Box, context: float, size: int) -> np.ndarray:
    """The size×size square around ``box`` (side ``context`` × its longer side), zero outside the film."""
    x0, y0, x1, y1 = box[:4]
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, context * max(x1 - x0, y1 - y0, 2.0)
    n = max(int(np.ceil(side)), 2)
    a0, b0 = int(np.floor(cx - side / 2)), int(np.floor(cy - side / 2))
    out = np.zeros((n, n), np.float32)
    h, w = pix.shape
    xa, ya, xb, yb = max(a0, 0), max(b0, 0), min(a0 + n, w), min(b0 + n, h)
    if xb > xa and yb > ya:
        out[ya - b0:yb - b0, xa - a0:xb - a0] = pix[ya:yb, xa:xb]
    return resize_to_input(out, size, "stretch")[0]


def targets(p: Box, g: Box) -> list[float]:
    """R-CNN's regression targets of true box ``g`` relative to proposal ``p``."""
    pw, ph, gw, gh = p[2] - p[0], p[3] - p[1], g[2] - g[0], g[3] - g[1]
    return [((g[0] + g[2]) - (p[0] + p[2])) / 2 / pw, ((g[1] + g[3]) - (p[1] + p[3])) / 2 / ph,
            float(np.log(gw / pw)), float(np.log(gh / ph))]


def moved(p: Box, t: Sequence[float]) -> list[float]:
    """Proposal ``p`` moved by regression output ``t`` (size ratios clipped to e^±2)."""
    pw, ph = p[2] - p[0], p[3] - p[1]
    cx, cy = (p[0] + p[2]) / 2 + t[0] * pw, (p[1] + p[3]) / 2 + t[1] * ph
    w, h = pw * np.exp(np.clip(t[2], -2, 2)), ph * np.exp(np.clip(t[3], -2, 2))
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _gray(path: Path) -> np.ndarray:
    pix = read_image(path).pixels
    return pix if pix.ndim == 2 else pix.mean(-1)


class CropFeatures:
    """The model's backbone on crops: final map pooled 3×3 and stride-16 stage pooled 6×6, flattened."""

    def __init__(self, predictor: Predictor) -> None:
        self.net = predictor.model.eval()
        pre = predictor.artifact.preprocess
        self.mean, self.std = float(pre.mean[0]), float(pre.std[0])

    @torch.no_grad()
    def __call__(self, crops: list[np.ndarray], batch: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(crops), batch):
            x = (torch.from_numpy(np.stack(crops[i:i + batch]))[:, None] - self.mean) / self.std
            final, mids = self.net.backbone.forward_intermediates(x.expand(-1, 3, -1, -1).contiguous(),
                                                                  indices=[self.net._mid_indices[0]])
            pooled = [torch.nn.functional.adaptive_avg_pool2d(final, 3), torch.nn.functional.adaptive_avg_pool2d(mids[0], 6)]
            out.append(torch.cat([p.flatten(1) for p in pooled], 1).numpy())
        return np.concatenate(out).astype(np.float32)


def training_crops(samples: Sequence[Any], coco: dict[str, Any], a: argparse.Namespace
                   ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Jittered copies of every training box: crops, targets, film index, proposal, true box."""
    rng = np.random.default_rng(a.seed)
    crops, tgt, film, props, gts = [], [], [], [], []
    for si, s in enumerate(samples):
        truth = xywh_to_corners(coco.get(Path(str(s.path)).name, []))
        if not truth:
            continue
        pix, tarr = _gray(s.path), np.asarray(truth, float)
        h, w = pix.shape
        for g in truth:
            gw, gh, kept = g[2] - g[0], g[3] - g[1], 0
            for _ in range(50 * a.jitter):
                if kept >= a.jitter:
                    break
                sw, sh = np.exp(rng.uniform(-0.6, 0.6, 2))
                dx, dy = rng.uniform(-0.3, 0.3, 2)
                cx, cy = (g[0] + g[2]) / 2 + dx * gw, (g[1] + g[3]) / 2 + dy * gh
                p = [min(max(cx - gw * sw / 2, 0), w), min(max(cy - gh * sh / 2, 0), h),
                     min(max(cx + gw * sw / 2, 0), w), min(max(cy + gh * sh / 2, 0), h)]
                if p[2] - p[0] < 2 or p[3] - p[1] < 2:
                    continue
                ious = iou_matrix(np.array([p]), tarr)[0]
                if ious.max() < 0.3:
                    continue
                j = int(ious.argmax())
                crops.append(crop(pix, p, a.context, a.crop))
                tgt.append(targets(p, truth[j]))
                film.append(si)
                props.append(p)
                gts.append(truth[j])
                kept += 1
    return crops, np.asarray(tgt), np.asarray(film), np.asarray(props), np.asarray(gts)


def mean_iou(props: np.ndarray, t: np.ndarray, gts: np.ndarray) -> float:
    return float(np.mean([iou_matrix(np.array([moved(p, d)]), np.array([g]))[0, 0] for p, d, g in zip(props, t, gts)]))


def choose_alpha(x: np.ndarray, t: np.ndarray, film: np.ndarray, props: np.ndarray, gts: np.ndarray,
                 alphas: Sequence[float]) -> tuple[float, dict[str, float]]:
    """The ridge penalty with the best mean IoU of the moved boxes, 5 folds grouped by film."""
    scores: dict[str, float] = {}
    for alpha in alphas:
        pred = np.zeros_like(t)
        for tr, te in GroupKFold(5).split(x, t, film):
            pred[te] = Ridge(alpha=alpha).fit(x[tr], t[tr]).predict(x[te])
        scores[f"{alpha:g}"] = mean_iou(props, pred, gts)
        log.info("ridge alpha %g: cross-validated mean IoU %.4f", alpha, scores[f"{alpha:g}"])
    best = max(alphas, key=lambda al: scores[f"{al:g}"])
    return best, scores


def validation_proposals(predictor: Predictor, samples: Sequence[Any], coco: dict[str, Any]
                         ) -> tuple[list[list[tuple[float, ...]]], list[list[Box]]]:
    """Every proposal of the model (down to the 0.001 floor) and the true boxes of each film."""
    size = predictor.artifact.preprocess.input_size
    props, truths = [], []
    for i in range(0, len(samples), 8):
        xs = [read_image(s.path, min_size=size) for s in samples[i:i + 8]]
        batch = np.stack([predictor.transform(xr.pixels) for xr in xs])
        for s, p in zip(samples[i:i + 8], predictor.predict_batch(batch, xs, learned_maps=True, assess=False)):
            props.append(model_boxes(p, "proposals") or [])
            truths.append(xywh_to_corners(coco.get(Path(str(s.path)).name, [])))
    return props, truths


def paired_rise(before: Sequence[Any], after: Sequence[Any], truths: Sequence[Any], n: int = 1000,
                seed: int = 0) -> dict[str, float]:
    """AP50(after) − AP50(before) with its percentile interval, films resampled together
    (boxed and normal films apart, as `fracdet evaluate` and `fracdet compare` resample)."""
    was, now = film_matches(before, truths), film_matches(after, truths)

    def rise(films: np.ndarray) -> float:
        return pooled_scores(now, films)[0] - pooled_scores(was, films)[0]

    boxed, normal = boxed_and_normal(was)
    rng = np.random.default_rng(seed)
    draws = [rise(stratified_resample(rng, boxed, normal)) for _ in range(n)]
    return percentile_interval(rise(np.arange(len(was))), draws, 0.95, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("coco", type=Path)
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--context", type=float, default=2.0)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--jitter", type=int, default=16)
    ap.add_argument("--alphas", default="1e2,1e3,1e4,1e5,3e5,1e6")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(a.threads)
    art = load_artifact(a.model)
    predictor = Predictor(art, threads=a.threads)
    features = CropFeatures(Predictor(art, backend="torch", assess=False))
    ds, coco = load_dataset(a.data), load_coco_boxes(a.coco)
    train, _ = select_samples(ds, "train", art.training, art.data, art.recorded_split())
    val, _ = select_samples(ds, "val", art.training, art.data, art.recorded_split())

    t0 = time.time()
    crops, tgt, film, props, gts = training_crops(train, coco, a)
    x = features(crops)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x = (x - mu) / sd
    log.info("%d training crops from %d films: features %s in %.0f s", len(crops), len(set(film)), x.shape, time.time() - t0)
    alpha, cv = choose_alpha(x, tgt, film, props, gts, [float(v) for v in a.alphas.split(",")])
    ridge = Ridge(alpha=alpha).fit(x, tgt)

    t0 = time.time()
    before, truths = validation_proposals(predictor, val, coco)
    flat = [(i, b) for i, bs in enumerate(before) for b in bs]
    vcrops, pix_of = [], {}
    for i, b in flat:
        if i not in pix_of:
            pix_of = {i: _gray(val[i].path)}  # one film at a time: the proposals come grouped by film
        vcrops.append(crop(pix_of[i], b, a.context, a.crop))
    shift = ridge.predict((features(vcrops) - mu) / sd)
    after: list[list[tuple[float, ...]]] = [[] for _ in before]
    for (i, b), t in zip(flat, shift):
        after[i].append((*moved(b, t), b[4]))
    seconds = time.time() - t0
    out = {
        "model": str(a.model or "shipped"), "context": a.context, "crop": a.crop, "jitter": a.jitter,
        "training_crops": len(crops), "training_films": len(set(film)), "cv_mean_iou": cv, "alpha": alpha,
        "training_mean_iou_before": mean_iou(props, np.zeros_like(tgt), gts),
        "val_proposals": len(flat), "val_seconds_with_crops": round(seconds, 1),
        "before": {k: v for k, v in detection_summary(before, truths).items() if k != "froc"},
        "after": {k: v for k, v in detection_summary(after, truths).items() if k != "froc"},
        "rise_map50": paired_rise(before, after, truths),
    }
    log.info("%s", json.dumps(out))
    if a.out:
        write_json(a.out, out)


if __name__ == "__main__":
    main()

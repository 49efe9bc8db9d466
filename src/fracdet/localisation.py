"""Does the heatmap point at the fracture? Scores of a map against true boxes (COCO), and
the trivial baselines that give them meaning.

Per image with at least one fracture box (all coordinates in pixels of the original file):

* **pointing game**: is the map's maximum inside a box, allowing ``tolerance`` × the longer
  image side (default 2.5 %) around it? (A flat map points nowhere: a miss.)
* **energy in box**: the share of the map's total mass that lies inside the union of boxes
  (a flat all-zero map: NaN, left out of the mean).
* **IoU**: of the derived "look here" box (:func:`fracdet.explain.top_box`) with the best
  matching true box (0 when no box can be derived).

Baselines: ``centre`` (a Gaussian at the image centre, σ = ¼ of each side) and ``bone``
(the radiograph's own brightness, smoothed — bone is bright); ``area_fraction`` (the boxes'
share of the image) is the energy a uniform map would put in the boxes.

Boxes as detections, over fractured films with boxes *and* normal films (``negatives``): each
method's scored boxes — the connected regions of its map at ≥ ``box_fraction`` × peak, scored by
region peak × the image probability (:func:`fracdet.boxmetrics.boxes_from_map`), or the model's
own ``Prediction.boxes`` (method ``model``, when the model has a box head) — give box mAP50 and
the sensitivity at 1 false-positive box per film (:mod:`fracdet.boxmetrics`); baseline ``centre``
is one box over the central half of the film, scored by the probability.  A model with a learned
map (``Prediction.heatmap`` from the plain prediction) is scored as method ``model`` too.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fracdet.boxmetrics import DETECTIONS_FILE, boxes_from_map, detection_summary, xywh_to_corners
from fracdet.errors import FracdetError
from fracdet.explain import Box, top_box
from fracdet.fracturemap import PROPOSAL_FLOOR

log = logging.getLogger(__name__)

BASELINES = ("centre", "bone")
DEFAULT_TOLERANCE = 0.025
DEFAULT_METHODS = ("gradcam", "gradcam++", "eigencam")
MODEL = "model"  # the model's own learned map / boxes, when it has them
BOOTSTRAP_RESAMPLES = 1000  # the box scores' bootstrap intervals, as for the image metrics
PROPOSALS = "model (all)"  # a box head's every proposal down to PROPOSAL_FLOOR, as detection benchmarks rank them


# ---------------------------------------------------------------- boxes
def load_coco_boxes(path: str | Path) -> dict[str, list[Box]]:
    """{file name: [(x, y, w, h), ...]} from a COCO JSON (images without annotations are left out)."""
    p = Path(path)
    try:
        coco = json.loads(p.read_text(encoding="utf-8"))
        names = {int(im["id"]): Path(str(im["file_name"])).name for im in coco["images"]}
        out: dict[str, list[Box]] = {}
        for ann in coco["annotations"]:
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w > 0 and h > 0:
                out.setdefault(names[int(ann["image_id"])], []).append((x, y, w, h))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FracdetError(f"{p}: not a readable COCO box file ({type(exc).__name__}: {exc})") from None
    return out


def box_mask(shape: tuple[int, int], boxes: Iterable[Box]) -> np.ndarray:
    """Boolean H×W mask of the union of boxes; pixel (r, c) covers [c, c+1)×[r, r+1) and is
    inside when its centre is."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    for x, y, bw, bh in boxes:
        c0, c1 = int(np.clip(np.ceil(x - 0.5), 0, w)), int(np.clip(np.ceil(x + bw - 0.5), 0, w))
        r0, r1 = int(np.clip(np.ceil(y - 0.5), 0, h)), int(np.clip(np.ceil(y + bh - 0.5), 0, h))
        mask[r0:r1, c0:c1] = True
    return mask


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


# ---------------------------------------------------------------- scores
def peak(heatmap: np.ndarray) -> tuple[float, float] | None:
    """(x, y) pixel centre of the map's maximum (first in row order); None for a flat map."""
    if not heatmap.size or float(heatmap.max()) <= float(heatmap.min()):
        return None
    r, c = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return c + 0.5, r + 0.5


def pointing_hit(heatmap: np.ndarray, boxes: Sequence[Box], tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Whether the map's maximum lies within ``tolerance`` × the longer side of a box."""
    pt = peak(heatmap)
    if pt is None:
        return False
    tol = tolerance * max(heatmap.shape)
    for x, y, w, h in boxes:
        dx = max(x - pt[0], 0.0, pt[0] - (x + w))
        dy = max(y - pt[1], 0.0, pt[1] - (y + h))
        if dx * dx + dy * dy <= tol * tol:
            return True
    return False


def energy_in_box(heatmap: np.ndarray, boxes: Sequence[Box]) -> float:
    """Share of the map's mass inside the union of boxes (NaN for an all-zero map)."""
    m = np.clip(np.nan_to_num(heatmap.astype(np.float64)), 0, None)
    total = m.sum()
    return float(m[box_mask(m.shape, boxes)].sum() / total) if total > 0 else float("nan")


def best_iou(heatmap: np.ndarray, boxes: Sequence[Box], threshold: float = 0.5) -> float:
    """IoU of :func:`top_box` with the best-matching true box (0 if no box can be derived)."""
    b = top_box(heatmap, threshold)
    return max((iou(b, t) for t in boxes), default=0.0) if b is not None else 0.0


def score_map(heatmap: np.ndarray, boxes: Sequence[Box], tolerance: float = DEFAULT_TOLERANCE,
              box_threshold: float = 0.5) -> dict[str, float]:
    return {"pointing_game": float(pointing_hit(heatmap, boxes, tolerance)),
            "energy_in_box": energy_in_box(heatmap, boxes),
            "iou": best_iou(heatmap, boxes, box_threshold)}


# ---------------------------------------------------------------- baselines
def centre_map(shape: tuple[int, int]) -> np.ndarray:
    """A Gaussian at the image centre (σ = ¼ of each side), max 1."""
    h, w = shape
    yy = (np.arange(h) + 0.5 - h / 2) / (h / 4)
    xx = (np.arange(w) + 0.5 - w / 2) / (w / 4)
    return np.exp(-0.5 * (yy[:, None] ** 2 + xx[None, :] ** 2)).astype(np.float32)


def bone_map(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The radiograph's brightness (bone bright), smoothed (σ = 2 % of the longer side) and
    resized to ``shape``, min-max scaled to [0, 1]."""
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    sm = ndimage.gaussian_filter(np.asarray(pixels, dtype=np.float32), sigma=0.02 * max(pixels.shape))
    big = F.interpolate(torch.from_numpy(sm)[None, None], size=tuple(int(s) for s in shape), mode="bilinear",
                        align_corners=False)[0, 0].numpy()
    lo, hi = float(big.min()), float(big.max())
    return ((big - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros(shape, np.float32)


def baseline_map(name: str, pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if name == "centre":
        return centre_map(shape)
    if name == "bone":
        return bone_map(pixels, shape)
    raise FracdetError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")


# ---------------------------------------------------------------- aggregate
@dataclass
class Tally:
    """Per-image scores of one method (or baseline)."""

    rows: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, scores: dict[str, float]) -> None:
        self.rows.append(scores)

    def summary(self, subset: Sequence[bool] | None = None) -> dict[str, Any]:
        rows = self.rows if subset is None else [r for r, keep in zip(self.rows, subset) if keep]
        out: dict[str, Any] = {"n": len(rows)}
        for k in ("pointing_game", "energy_in_box", "iou"):
            vals = np.array([r[k] for r in rows], dtype=float)
            ok = vals[np.isfinite(vals)]
            out[k] = float(ok.mean()) if len(ok) else None
            if k == "energy_in_box":
                out["flat_maps"] = int(len(vals) - len(ok))  # all-zero maps: left out of the energy mean
        if self.seconds and self.rows:
            out["seconds_per_image"] = self.seconds / len(self.rows)
        return out


@dataclass
class LocalisationResult:
    """``summary`` goes into metrics.json (``metrics["localisation"]``); ``examples`` are the
    overlay PNGs (true boxes in green) for reports: ``{method: [paths]}``."""

    summary: dict[str, Any]
    examples: dict[str, list[Path]]
    per_image: list[dict[str, Any]]


def centre_box(shape: tuple[int, int], probability: float) -> list[tuple[float, float, float, float, float]]:
    """The ``centre`` detection baseline: one box over the central half of each side."""
    h, w = shape
    return [(w / 4, h / 4, 3 * w / 4, 3 * h / 4, float(probability))]


def model_boxes(pred: Any, field: str = "boxes") -> list[tuple[float, float, float, float, float]] | None:
    """The model's own scored boxes (``Prediction.boxes``, or another such ``field`` such as
    ``proposals``: (x0, y0, x1, y1, score) in original pixels), or None when it has none."""
    b = getattr(pred, field, None)
    return None if b is None else [tuple(float(v) for v in box[:5]) for box in b]  # type: ignore[misc]


def evaluate_localisation(predictor: Any, samples: Sequence[Any], boxes: dict[str, list[Box]],
                          methods: Sequence[str] = DEFAULT_METHODS, out_dir: str | Path | None = None,
                          n_examples: int = 6, tolerance: float = DEFAULT_TOLERANCE, box_threshold: float = 0.5,
                          batch_size: int = 8, progress: bool = True, negatives: Sequence[Any] = (),
                          box_fraction: float = 0.5) -> LocalisationResult:
    """Score each CAM method and the baselines on the ``samples`` (objects with ``.path``;
    those whose file name has boxes) and write example overlays under ``out_dir/examples``;
    ``negatives`` (normal films, no boxes) join them for the box detection scores.

    The summary: ``{method: {pointing_game, energy_in_box, iou, n, seconds_per_image},
    "baselines": {...}, "area_fraction": ..., "predicted_fractured": {method: {...}},
    "detection": {method: {map50, sensitivity_at_1fp, froc, ...}}, ...}``;
    ``predicted_fractured`` restricts to the images the model calls fractured.
    """
    import torch

    from fracdet.explain import heatmaps, method_name, save_overlay, verdict_text
    from fracdet.io.images import read_image

    methods = [method_name(m) for m in methods]
    chosen = [s for s in samples if Path(str(s.path)).name in boxes]
    if not chosen:
        raise FracdetError("no evaluated image has a fracture box (file names must match the COCO file_name)")
    normal = [s for s in negatives if Path(str(s.path)).name not in boxes]
    chosen = chosen + normal
    size = predictor.artifact.preprocess.input_size
    resize = predictor.artifact.preprocess.resize
    tallies = {m: Tally() for m in [*methods, *BASELINES]}
    area, positive, per_image = [], [], []
    examples: dict[str, list[Path]] = {m: [] for m in methods}
    detections: dict[str, list[Any]] = {m: [] for m in [*methods, "centre"]}
    truths: list[Any] = []
    films: list[str] = []  # the path of each film scored for boxes, in the order of ``truths``
    ex_dir = Path(out_dir) / "examples" if out_dir is not None else None
    batches = [chosen[i:i + batch_size] for i in range(0, len(chosen), batch_size)]
    iterator: Iterable[Any] = batches
    if progress:
        from fracdet.progress import progress_over

        iterator = progress_over(batches, "localisation", total=len(batches))
    for batch in iterator:
        xrays, tensors = [], []
        for s in batch:
            try:
                x = read_image(s.path, min_size=size)
            except FracdetError as exc:
                log.warning("%s: skipped (%s)", s.path, exc)
                continue
            xrays.append(x)
            tensors.append(predictor.transform(x.pixels))
        if not xrays:
            continue
        x = torch.from_numpy(np.stack(tensors))
        # the predictor's own path, with the model's boxes and learned map; as evaluate: no film refused
        preds = predictor.predict_batch(x, xrays, learned_maps=True, assess=False)
        maps: dict[str, list[np.ndarray]] = {}
        for m in methods:
            t0 = time.perf_counter()
            maps[m] = heatmaps(predictor.model, x, xrays, m, resize)
            with_boxes = sum(Path(str(xr.path)).name in boxes for xr in xrays)  # s/image is over those
            tallies[m].seconds += (time.perf_counter() - t0) * with_boxes / len(xrays)
        for j, (xr, pred) in enumerate(zip(xrays, preds)):
            bxs = boxes.get(Path(str(xr.path)).name, [])
            shape = maps[methods[0]][j].shape if methods else (xr.pixels.shape[0], xr.pixels.shape[1])
            truths.append(xywh_to_corners(bxs))
            films.append(str(xr.path))
            prob = float(pred.probability or 0.0)
            for m in methods:
                detections[m].append(boxes_from_map(maps[m][j], prob, box_fraction))
            detections["centre"].append(centre_box(shape, prob))
            own = model_boxes(pred)
            if own is not None:
                detections.setdefault(MODEL, []).append(own)
            proposals = model_boxes(pred, "proposals")
            if proposals is not None:
                detections.setdefault(PROPOSALS, []).append(proposals)
            if not bxs:  # a normal film: detection scores only
                continue
            row: dict[str, Any] = {"path": str(xr.path), "probability": pred.probability, "boxes": len(bxs)}
            learned = getattr(pred, "heatmap", None)
            if learned is not None:
                row[MODEL] = score_map(np.asarray(learned, dtype=np.float32), bxs, tolerance, box_threshold)
                tallies.setdefault(MODEL, Tally()).add(row[MODEL])
            for m in methods:
                row[m] = score_map(maps[m][j], bxs, tolerance, box_threshold)
                tallies[m].add(row[m])
            for b in BASELINES:
                t0 = time.perf_counter()
                bm = baseline_map(b, xr.pixels, shape)
                tallies[b].seconds += time.perf_counter() - t0
                row[b] = score_map(bm, bxs, tolerance, box_threshold)
                tallies[b].add(row[b])
            area.append(float(box_mask(shape, bxs).mean()))
            positive.append(pred.label == predictor.labels[1])
            per_image.append(row)
            if ex_dir is not None and len(per_image) <= n_examples:
                stem = Path(str(xr.path)).stem
                full = read_image(xr.path).pixels  # the picture at full resolution
                for m in methods:
                    hm = maps[m][j]
                    examples[m].append(save_overlay(
                        ex_dir / f"{stem}.{m.replace('+', 'p')}.png", full, hm, text=verdict_text(pred),
                        method=m, box=top_box(hm, box_threshold), true_boxes=bxs))
    map_methods = [*methods, *([MODEL] if MODEL in tallies else [])]
    summary: dict[str, Any] = {m: tallies[m].summary() for m in map_methods}
    summary["baselines"] = {b: tallies[b].summary() for b in BASELINES}
    summary["area_fraction"] = float(np.mean(area)) if area else None
    if MODEL in tallies and len(tallies[MODEL].rows) == len(positive):
        summary["predicted_fractured"] = {m: tallies[m].summary(positive) for m in [*map_methods, *BASELINES]}
    else:
        summary["predicted_fractured"] = {m: tallies[m].summary(positive) for m in [*methods, *BASELINES]}
    summary["detection"] = {m: detection_summary(d, truths, n_resamples=BOOTSTRAP_RESAMPLES)
                            for m, d in detections.items() if m != "centre" and len(d) == len(truths)}
    summary["detection_baselines"] = {"centre": detection_summary(detections["centre"], truths,
                                                                  n_resamples=BOOTSTRAP_RESAMPLES)}
    summary["settings"] = {"tolerance": tolerance, "box_threshold": box_threshold, "methods": map_methods,
                           "baselines": list(BASELINES), "n_images": len(per_image), "box_fraction": box_fraction,
                           "n_normal_films": len(truths) - len(per_image)}
    if out_dir is not None:
        from fracdet.fsutil import write_json

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(out_dir) / "localisation.json", {"summary": summary, "images": per_image})
        write_json(Path(out_dir) / DETECTIONS_FILE, film_detections(films, truths, detections))
    return LocalisationResult(summary, examples, per_image)


def film_detections(films: Sequence[str], truths: Sequence[Any], detections: dict[str, list[Any]]) -> dict[str, Any]:
    """What :data:`DETECTIONS_FILE` holds: each film's path, true boxes and every box source's
    scored boxes (original pixels), so that two evaluations can be compared film by film."""
    sources = [m for m, d in detections.items() if len(d) == len(films)]
    rows = [{"path": path, "true": [list(map(float, b)) for b in truth],
             "boxes": {m: [list(map(float, b)) for b in detections[m][i]] for m in sources}}
            for i, (path, truth) in enumerate(zip(films, truths))]
    return {"format": "fracdet-detections/1", "sources": sources, "films": rows}


def localisation_figures(out_dir: str | Path) -> dict[str, list[Path]]:
    """The example overlays written by :func:`evaluate_localisation` under ``out_dir``
    (``{method: [png, ...]}``), for the HTML report."""
    ex = Path(out_dir) / "examples"
    out: dict[str, list[Path]] = {}
    for png in sorted(ex.glob("*.png")) if ex.is_dir() else []:
        method = png.stem.rsplit(".", 1)[-1].replace("pp", "++") if "." in png.stem else "?"
        out.setdefault(method, []).append(png)
    return out


def format_localisation(summary: dict[str, Any]) -> str:
    """A plain-text table of the summary (methods, then baselines)."""
    def f(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else "  —  "

    lines = [f"{'method':<12} {'n':>4} {'pointing':>9} {'energy':>8} {'IoU':>7} {'s/image':>8} {'flat':>5}"]
    rows = [(m, summary[m]) for m in summary.get("settings", {}).get("methods", [])]
    rows += [(f"[{b}]", s) for b, s in summary.get("baselines", {}).items()]
    for name, s in rows:
        lines.append(f"{name:<12} {s['n']:>4} {f(s['pointing_game']):>9} {f(s['energy_in_box']):>8} "
                     f"{f(s['iou']):>7} {f(s.get('seconds_per_image')):>8} {s.get('flat_maps', 0):>5}")
    lines.append("(flat: all-zero maps, which point nowhere: misses, left out of the energy mean)")
    if summary.get("area_fraction") is not None:
        lines.append(f"boxes cover {summary['area_fraction']:.3f} of the image on average "
                     "(the energy a uniform map would put in them)")
    det = _detection_rows(summary)
    if det:
        st = summary.get("settings", {})
        lines += ["", f"boxes as detections ({st.get('n_images', 0)} fractured + {st.get('n_normal_films', 0)} normal "
                  "films; IoU ≥ 0.5):",
                  f"{'boxes from':<12} {'mAP50':>7} {'[95% CI]':>14} {'fx only':>7} {'sens@1FP':>9} {'mAP25':>7} "
                  f"{'true':>5} {'predicted':>10}"]
        for name, d in det:
            lines.append(f"{name:<12} {f(d.get('map50')):>7} {_ci_text(d, 'map50'):>14} {f(d.get('map50_boxed')):>7} "
                         f"{f(d.get('sensitivity_at_1fp')):>9} "
                         f"{f(d.get('map25')):>7} "
                         f"{d.get('n_true_boxes', 0):>5} {d.get('n_predicted_boxes', 0):>10}")
        lines.append("(95% CI: films resampled, bootstrap; fx only: mAP50 over the fractured films alone, normal "
                     "films' boxes left out, as detectors trained and tested on fractured films only report it; "
                     "sens@1FP: share of true boxes hit at the score threshold giving 1 false-positive box per film; "
                     "mAP25: AP at IoU ≥ 0.25, where a box in the right place but the wrong size still counts)")
        if any(name == PROPOSALS for name, _ in det):
            lines.append(f"({PROPOSALS}: every box the box head proposes, down to a centre score of {PROPOSAL_FLOOR:g}, "
                         "as detection benchmarks rank them; model: the boxes it shows, above its threshold)")
    return "\n".join(lines)


def _ci_text(d: dict[str, Any], key: str) -> str:
    """'[low, high]' of a detection summary's bootstrap interval, or '' without one."""
    ci = (d.get("ci") or {}).get(key)
    return f"[{ci['low']:.3f}, {ci['high']:.3f}]" if ci else ""


def _detection_rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = list(summary.get("detection", {}).items())
    return rows + [(f"[{b}]", d) for b, d in summary.get("detection_baselines", {}).items()]


def localisation_html(summary: dict[str, Any], out_dir: str | Path, max_examples: int = 4,
                      thumb: int = 480) -> str:
    """An HTML fragment for the evaluation report: the scores table (methods and baselines)
    and up to ``max_examples`` example overlays per method from ``out_dir`` (the folder
    :func:`evaluate_localisation` wrote; ``<eval out>/localisation``), embedded as
    ``thumb``-pixel PNGs. Usage: ``html += localisation_html(m["localisation"], out / "localisation")``."""
    import base64
    import html
    import io

    from PIL import Image

    def num(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else "–"

    st = summary.get("settings", {})
    rows = [(m, summary[m]) for m in st.get("methods", []) if m in summary]
    rows += [(f"baseline: {b}", s) for b, s in summary.get("baselines", {}).items()]
    head = "".join(f"<th>{h}</th>" for h in ("map", "n", "pointing game", "energy in box", "IoU", "s / image"))
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{s.get('n')}</td><td>{num(s.get('pointing_game'))}</td>"
        f"<td>{num(s.get('energy_in_box'))}</td><td>{num(s.get('iou'))}</td>"
        f"<td>{num(s.get('seconds_per_image'))}</td></tr>" for name, s in rows)
    parts = ["<h2>Where the model looks (fracture boxes)</h2>",
             f"<p>{st.get('n_images', 0)} fractured image(s) with boxes. Pointing game: the map's maximum within "
             f"{100 * float(st.get('tolerance', DEFAULT_TOLERANCE)):.1f}% of the longer side of a box; energy in box: "
             "the map's share inside the boxes (a uniform map: "
             f"{num(summary.get('area_fraction'))}); IoU: the 'look here' box (map ≥ "
             f"{st.get('box_threshold', 0.5)} × peak, largest region) with the best true box.</p>",
             f"<table><tr>{head}</tr>{body}</table>"]
    det = _detection_rows(summary)
    if det:
        dhead = "".join(f"<th>{h}</th>" for h in ("boxes from", "box mAP50", "box mAP50, fractured films only",
                                                   "sensitivity at 1 FP box / film",
                                                   "box mAP25", "true boxes", "predicted boxes"))
        dbody = "".join(
            f"<tr><td>{html.escape(name.strip('[]') if not name.startswith('[') else 'baseline: ' + name[1:-1])}</td>"
            f"<td>{num(d.get('map50'))} {_ci_text(d, 'map50')}</td><td>{num(d.get('map50_boxed'))}</td>"
            f"<td>{num(d.get('sensitivity_at_1fp'))} "
            f"{_ci_text(d, 'sensitivity_at_1fp')}</td><td>{num(d.get('map25'))}</td>"
            f"<td>{d.get('n_true_boxes')}</td><td>{d.get('n_predicted_boxes')}</td></tr>" for name, d in det)
        parts += ["<h3>Boxes as detections</h3>",
                  f"<p>{st.get('n_images', 0)} fractured film(s) with boxes and {st.get('n_normal_films', 0)} normal "
                  "film(s) (every box on a normal film is a false positive). Boxes from a map: its regions at ≥ "
                  f"{st.get('box_fraction', 0.5)} × peak, scored by region peak × the image probability; the model's "
                  "own boxes where it has them (above its threshold, as it shows them; "
                  f"{PROPOSALS}: every box its box head proposes down to a centre score of {PROPOSAL_FLOOR:g}, as "
                  "detection benchmarks rank them); baseline: one box over the central half, scored by the probability. "
                  "mAP50: COCO 101-point AP at IoU ≥ 0.5; sensitivity at the score threshold giving one "
                  "false-positive box per film on average (FROC); in brackets the 95% bootstrap interval (films resampled, "
                  "those with boxes and normal ones apart); mAP25: AP at IoU ≥ 0.25, where a box in the right place "
                  "but drawn the wrong size still counts; fractured films only: the same AP with the normal films' "
                  "boxes left out, the protocol of detectors trained and tested on fractured films alone (e.g. "
                  "FracAtlas' YOLOv8 baseline).</p>",
                  f"<table><tr>{dhead}</tr>{dbody}</table>"]
    for method, pngs in localisation_figures(out_dir).items():
        figs = []
        for png in pngs[:max_examples]:
            with Image.open(png) as im:
                im = im.convert("RGB")
                im.thumbnail((thumb, thumb))
                buf = io.BytesIO()
                im.save(buf, format="PNG")
            data = base64.b64encode(buf.getvalue()).decode("ascii")
            cap = html.escape(f"{png.stem.split('.')[0]} ({method}; green: true box, cyan: look here)")
            figs.append(f'<figure><img src="data:image/png;base64,{data}" alt="{cap}"><figcaption>{cap}'
                        "</figcaption></figure>")
        if figs:
            parts.append(f"<h3>{html.escape(method)}</h3>" + "".join(figs))
    return "\n".join(parts)

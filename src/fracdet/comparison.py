"""Two evaluations of the same films, compared film by film (``fracdet compare``).

Every figure of one evaluation has a wide interval on a few hundred films, and two models'
intervals overlap even when one is reliably better: the films are shared, so the question is
the *difference*. Here the films are resampled together (a paired, stratified percentile
bootstrap: fractured and normal films drawn separately, keeping their counts), and each
resample scores both models on the same films: ROC-AUC, PR-AUC, specificity at sensitivity
≥ 0.95 and sensitivity at specificity ≥ 0.85 (read off each model's ROC curve), ECE and Brier
score of the probabilities as given, the pointing game of every map method both scored, and
box mAP50 and sensitivity at 1 false-positive box per film of every box source both scored.
An interval of B − A that excludes 0 says which is better on these films; one that holds 0
says these films cannot tell.

Reads an evaluation folder as ``fracdet evaluate`` writes it: ``predictions.csv`` and, with
``--boxes``, ``localisation/localisation.json`` and ``localisation/detections.json``.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fracdet.boxmetrics import DETECTIONS_FILE, film_matches, pooled_scores
from fracdet.calibration import expected_calibration_error
from fracdet.errors import FracdetError
from fracdet.metrics import average_precision, percentile_interval, roc_auc, stratified_resample
from fracdet.operating import rates_at, sensitivity_threshold, specificity_threshold

log = logging.getLogger(__name__)

SENSITIVITY_TARGET = 0.95  # the `doubt` point's sensitivity
SPECIFICITY_TARGET = 0.85
HIGHER, LOWER = "higher", "lower"  # which way a metric is better


@dataclass
class Evaluation:
    """One evaluation folder's per-film results, keyed by film path."""

    folder: Path
    y: dict[str, int]
    probability: dict[str, float]
    pointing: dict[str, dict[str, float]] = field(default_factory=dict)  # method → path → hit (0/1)
    boxes: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)  # source → path → boxes
    true_boxes: dict[str, list[list[float]]] = field(default_factory=dict)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FracdetError(f"{path}: not a readable JSON file ({exc.__class__.__name__})") from None


def _film_key(path: str) -> str:
    return Path(path).as_posix()


def read_evaluation(folder: str | Path) -> Evaluation:
    """The per-film results of a ``fracdet evaluate`` output folder (one-line error when unusable)."""
    root = Path(folder)
    rows_path = root / "predictions.csv"
    if not rows_path.is_file():
        raise FracdetError(f"{root}: no predictions.csv (not a `fracdet evaluate` output folder)")
    y: dict[str, int] = {}
    prob: dict[str, float] = {}
    try:
        with rows_path.open(encoding="utf-8", newline="") as fh:
            for n, row in enumerate(csv.DictReader(fh), start=2):
                key = _film_key(row["path"])
                p, t = float(row["probability"]), int(row["true_label"])
                if not 0.0 <= p <= 1.0 or t not in (0, 1):
                    raise ValueError(f"line {n}: probability {p} or label {t} out of range")
                y[key], prob[key] = t, p
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, csv.Error) as exc:
        raise FracdetError(f"{rows_path}: not a predictions table of `fracdet evaluate` ({exc})") from None
    ev = Evaluation(root, y, prob)
    loc = root / "localisation" / "localisation.json"
    if loc.is_file():
        for img in _read_json(loc).get("images", []):
            for method, score in img.items():
                if isinstance(score, dict) and "pointing_game" in score:
                    ev.pointing.setdefault(method, {})[_film_key(img["path"])] = float(score["pointing_game"])
    det = root / "localisation" / DETECTIONS_FILE
    if det.is_file():
        d = _read_json(det)
        try:
            for film in d["films"]:
                key = _film_key(film["path"])
                ev.true_boxes[key] = [list(map(float, b[:4])) for b in film["true"]]
                for source, bxs in film["boxes"].items():
                    ev.boxes.setdefault(source, {})[key] = [list(map(float, b[:5])) for b in bxs]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise FracdetError(f"{det}: not a detections file of `fracdet evaluate` ({exc})") from None
    return ev


def by_file_name(ev: Evaluation) -> Evaluation | None:
    """``ev`` keyed by file name instead of path (None when two of its films share a name)."""
    names = {k: Path(k).name for k in ev.y}
    if len(set(names.values())) != len(names):
        return None

    def rekey(d: dict[str, Any]) -> dict[str, Any]:
        return {names.get(k, Path(k).name): v for k, v in d.items()}

    return Evaluation(ev.folder, rekey(ev.y), rekey(ev.probability), {m: rekey(d) for m, d in ev.pointing.items()},
                      {s: rekey(d) for s, d in ev.boxes.items()}, rekey(ev.true_boxes))


def _same_films(a: Evaluation, b: Evaluation) -> list[str]:
    """The films both scored, refusing two evaluations of different films or labels."""
    if set(a.y) != set(b.y):
        only_a, only_b = sorted(set(a.y) - set(b.y)), sorted(set(b.y) - set(a.y))
        example = (only_a or only_b)[0]
        raise FracdetError(f"{a.folder} and {b.folder} evaluated different films ({len(only_a)} only in the first, "
                           f"{len(only_b)} only in the second, e.g. {example}): compare evaluations of one split")
    films = sorted(a.y)
    differ = [f for f in films if a.y[f] != b.y[f]]
    if differ:
        raise FracdetError(f"{a.folder} and {b.folder} disagree on the label of {len(differ)} film(s), e.g. {differ[0]}")
    return films


def _spec_at_sens(y: np.ndarray, p: np.ndarray) -> float:
    return rates_at(y, p, sensitivity_threshold(y, p, SENSITIVITY_TARGET))["specificity"]


def _sens_at_spec(y: np.ndarray, p: np.ndarray) -> float:
    return rates_at(y, p, specificity_threshold(y, p, SPECIFICITY_TARGET))["sensitivity"]


def _mean_scored(hits: np.ndarray) -> float:
    """The mean over the films a map was scored on (NaN: not scored); NaN when none was."""
    scored = hits[~np.isnan(hits)]
    return float(scored.mean()) if len(scored) else float("nan")


IMAGE_METRICS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], str]] = {
    "roc_auc": (roc_auc, HIGHER),
    "pr_auc": (average_precision, HIGHER),
    f"specificity_at_sensitivity_{SENSITIVITY_TARGET:g}": (_spec_at_sens, HIGHER),
    f"sensitivity_at_specificity_{SPECIFICITY_TARGET:g}": (_sens_at_spec, HIGHER),
    "ece": (lambda y, p: expected_calibration_error(p, y), LOWER),
    "brier": (lambda y, p: float(np.mean((p - y) ** 2)), LOWER),
}


Scorer = Callable[[np.ndarray], dict[str, tuple[float, float]]]
"""Resampled film indices → {metric: (A's value, B's value)}."""


def _box_scorer(source: str, ma: list[Any], mb: list[Any], slot: np.ndarray) -> Scorer:
    """Box mAP50 and sensitivity at 1 FP/film of one source, each model pooled once per resample
    (``slot``: a film's index among the films scored for boxes, −1 for the others)."""
    def score(ix: np.ndarray) -> dict[str, tuple[float, float]]:
        chosen = slot[ix][slot[ix] >= 0]
        (ap_a, sens_a), (ap_b, sens_b) = pooled_scores(ma, chosen), pooled_scores(mb, chosen)
        return {f"box_map50[{source}]": (ap_a, ap_b), f"box_sensitivity_at_1fp[{source}]": (sens_a, sens_b)}

    return score


def _scorers(a: Evaluation, b: Evaluation, films: list[str]) -> tuple[list[Scorer], dict[str, str]]:
    """The scorers of every metric both evaluations allow, and each metric's direction (in report order)."""
    y = np.array([a.y[f] for f in films])
    pa, pb = np.array([a.probability[f] for f in films]), np.array([b.probability[f] for f in films])
    scorers: list[Scorer] = [lambda ix: {name: (fn(y[ix], pa[ix]), fn(y[ix], pb[ix]))
                                         for name, (fn, _way) in IMAGE_METRICS.items()}]
    direction = {name: way for name, (_fn, way) in IMAGE_METRICS.items()}
    for method in sorted(set(a.pointing) & set(b.pointing)):
        ha = np.array([a.pointing[method].get(f, np.nan) for f in films])
        hb = np.array([b.pointing[method].get(f, np.nan) for f in films])
        if not np.array_equal(np.isnan(ha), np.isnan(hb)):
            log.warning("pointing game of %s: the two evaluations scored different films; left out", method)
            continue
        if np.array_equal(ha, hb, equal_nan=True):
            log.info("pointing game of %s: the same on every film in both (a baseline, or a shared backbone); left out", method)
            continue
        if not np.isnan(ha).all():
            name = f"pointing_game[{method}]"
            scorers.append(lambda ix, name=name, ha=ha, hb=hb: {name: (_mean_scored(ha[ix]), _mean_scored(hb[ix]))})
            direction[name] = HIGHER
    scored = [f for f in films if f in a.true_boxes and f in b.true_boxes]
    if scored and len(scored) != len(films):
        log.info("box scores over the %d of %d films both evaluations scored for boxes", len(scored), len(films))
    differ = [f for f in scored if a.true_boxes[f] != b.true_boxes[f]]
    if differ:
        raise FracdetError(f"{a.folder} and {b.folder} were scored against different true boxes "
                           f"({len(differ)} film(s), e.g. {differ[0]}): evaluate both with the same --boxes file")
    position = {f: i for i, f in enumerate(films)}
    slot = np.full(len(films), -1)
    slot[[position[f] for f in scored]] = np.arange(len(scored))
    truths = [a.true_boxes[f] for f in scored]
    for source in sorted(set(a.boxes) & set(b.boxes)):
        ma = film_matches([a.boxes[source].get(f, []) for f in scored], truths)
        mb = film_matches([b.boxes[source].get(f, []) for f in scored], truths)
        scorers.append(_box_scorer(source, ma, mb, slot))
        direction.update({f"box_map50[{source}]": HIGHER, f"box_sensitivity_at_1fp[{source}]": HIGHER})
    return scorers, direction


def _score(scorers: Sequence[Scorer], ix: np.ndarray) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for scorer in scorers:
        out.update(scorer(ix))
    return out


def compare_evaluations(a: Evaluation, b: Evaluation, n_resamples: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, Any]:
    """Every metric both evaluations allow: A, B, B − A with its paired percentile interval, and
    which is better when the interval excludes 0 (``"A"``, ``"B"`` or ``"neither"``)."""
    if set(a.y) != set(b.y):  # the same films under another data path (another folder, machine or cwd)?
        na, nb = by_file_name(a), by_file_name(b)
        if na is not None and nb is not None and set(na.y) == set(nb.y):
            log.info("the two evaluations name their films by different paths: matched by file name")
            a, b = na, nb
    films = _same_films(a, b)
    y = np.array([a.y[f] for f in films])
    if len(np.unique(y)) < 2:
        raise FracdetError(f"{a.folder}: comparing needs fractured and normal films; these are all one class")
    scorers, direction = _scorers(a, b, films)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in direction}
    for _ in range(int(n_resamples)):
        for k, (va, vb) in _score(scorers, stratified_resample(rng, pos, neg)).items():
            draws[k].append(vb - va)
    full = _score(scorers, np.arange(len(films)))
    rows = {}
    for k, way in direction.items():
        va, vb = full[k]
        ci = percentile_interval(float(vb - va), draws[k], level, n_resamples)
        better = "neither"
        if ci["low"] > 0 or ci["high"] < 0:
            b_up = ci["low"] > 0
            better = "B" if b_up == (way == HIGHER) else "A"
        rows[k] = {"a": float(va), "b": float(vb), "difference": ci, "better": better, "direction": way}
    return {"a": str(a.folder), "b": str(b.folder), "n_films": len(films), "fractured": int(y.sum()),
            "n_resamples": int(n_resamples), "seed": seed, "level": level, "metrics": rows}


def format_comparison(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`compare_evaluations`."""
    lines = [f"A: {result['a']}", f"B: {result['b']}",
             f"{result['n_films']} films ({result['fractured']} fractured); paired bootstrap, "
             f"{result['n_resamples']} resamples, {100 * result['level']:.0f}% intervals of B − A",
             f"{'metric':<44} {'A':>7} {'B':>7} {'B − A':>7} {'interval':>18}  better"]
    for k, r in result["metrics"].items():
        d = r["difference"]
        lines.append(f"{k:<44} {r['a']:>7.3f} {r['b']:>7.3f} {d['estimate']:>+7.3f} "
                     f"{'[' + format(d['low'], '+.3f') + ', ' + format(d['high'], '+.3f') + ']':>18}  "
                     f"{r['better'] if r['better'] != 'neither' else '— (interval holds 0)'}")
    lines.append("(ece and brier: lower is better; every other metric: higher)")
    return "\n".join(lines)


def compare_folders(a: str | Path, b: str | Path, n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """:func:`compare_evaluations` of two evaluation folders."""
    return compare_evaluations(read_evaluation(a), read_evaluation(b), n_resamples, seed)


__all__: Sequence[str] = ["Evaluation", "compare_evaluations", "compare_folders", "format_comparison", "read_evaluation"]

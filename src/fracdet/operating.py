"""Operating points: threshold rules chosen on validation data, their written rationale,
and the three-way verdict of clinical products.

A model keeps three thresholds on its calibrated probability of *fractured*:

- ``threshold`` — the main operating point, chosen by one rule (:data:`RULES`): Youden's J,
  a target sensitivity, a target specificity, or the least misclassification cost. It gives
  the binary ``label`` (fractured / not fractured) and the metrics of ``fracdet evaluate``.
- ``doubt_threshold`` — a high-sensitivity point (default: sensitivity ≥ 0.95 on validation):
  below it the verdict is ``no fracture``.
- ``fracture_threshold`` — a high-specificity point (default: specificity ≥ 0.95): at or
  above it the verdict is ``fracture``; in between it is ``doubt`` (a reader should look).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fracdet.errors import FracdetError

RULES = ("youden", "sensitivity", "specificity", "cost")
VERDICTS = ("no fracture", "doubt", "fracture")


def _rates(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds with the sensitivity and specificity of calling ``p >= t`` fractured.

    Candidates lie midway between consecutive distinct scores (plus one below the lowest and one
    above the highest, within [0, 1]), never on a score: the rates then do not flip when a
    score moves by rounding (float16 weights, another batch size, another machine)."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    u = np.unique(p)
    lo = max(0.0, u[0] - (u[1] - u[0]) / 2 if len(u) > 1 else u[0] - 1e-6) if len(u) else 0.0
    hi = min(1.0, u[-1] + (u[-1] - u[-2]) / 2 if len(u) > 1 else u[-1] + 1e-6) if len(u) else 1.0
    cands = np.unique(np.r_[lo, (u[1:] + u[:-1]) / 2, np.nextafter(hi, np.inf) if hi <= u[-1] else hi])
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    # cases with score >= t: n - searchsorted(left)
    sens = (len(pos) - np.searchsorted(pos, cands, side="left")) / max(len(pos), 1)
    spec = np.searchsorted(neg, cands, side="left") / max(len(neg), 1)
    return cands, sens, spec


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def confusion_at(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, int]:
    """The confusion counts of calling ``prob >= threshold`` fractured: tn, fp, fn, tp."""
    pred = np.asarray(prob, dtype=float) >= threshold
    y = np.asarray(y_true).astype(bool)
    return {"tn": int(np.sum(~pred & ~y)), "fp": int(np.sum(pred & ~y)),
            "fn": int(np.sum(~pred & y)), "tp": int(np.sum(pred & y))}


def rates_at(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity and the fraction of images flagged at one threshold (the one
    helper for them; NaN where undefined, e.g. no fractured images)."""
    c = confusion_at(y_true, prob, threshold)
    n = c["tn"] + c["fp"] + c["fn"] + c["tp"]
    return {"threshold": float(threshold), "sensitivity": _ratio(c["tp"], c["tp"] + c["fn"]),
            "specificity": _ratio(c["tn"], c["tn"] + c["fp"]), "flagged_fraction": _ratio(c["tp"] + c["fp"], n)}


def _need_both(y: np.ndarray) -> None:
    if len(np.unique(np.asarray(y, dtype=int))) < 2:
        raise FracdetError("choosing a threshold needs both fractured and non-fractured images")


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Maximise J = sensitivity + specificity − 1 (ties: the middle of the best run)."""
    _need_both(y)
    t, se, sp = _rates(y, p)
    j = se + sp - 1
    best = np.flatnonzero(j >= j.max() - 1e-12)
    return float(t[best[len(best) // 2]])


def sensitivity_threshold(y: np.ndarray, p: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity is at least ``target`` (the most specific
    such point)."""
    _need_both(y)
    if not 0 < target <= 1:
        raise FracdetError(f"target sensitivity must be in (0, 1], got {target}")
    t, se, _ = _rates(y, p)
    ok = np.flatnonzero(se >= target - 1e-12)
    return float(t[ok.max()])


def specificity_threshold(y: np.ndarray, p: np.ndarray, target: float) -> float:
    """The lowest threshold whose specificity is at least ``target`` (the most sensitive
    such point)."""
    _need_both(y)
    if not 0 < target <= 1:
        raise FracdetError(f"target specificity must be in (0, 1], got {target}")
    t, _, sp = _rates(y, p)
    ok = np.flatnonzero(sp >= target - 1e-12)
    return float(t[ok.min()])


def cost_threshold(y: np.ndarray, p: np.ndarray, cost_fn: float, cost_fp: float) -> float:
    """The threshold minimising ``cost_fn · FN + cost_fp · FP`` on the data (ties: the middle)."""
    _need_both(y)
    if cost_fn <= 0 or cost_fp <= 0:
        raise FracdetError("misclassification costs must be positive")
    y = np.asarray(y, dtype=int)
    t, se, sp = _rates(y, p)
    cost = cost_fn * (1 - se) * (y == 1).sum() + cost_fp * (1 - sp) * (y == 0).sum()
    best = np.flatnonzero(cost <= cost.min() + 1e-9)
    return float(t[best[len(best) // 2]])


@dataclass
class ThresholdRule:
    """Which rule chooses the main threshold (``rule`` in :data:`RULES`) and its parameters,
    plus the targets of the doubt / fracture operating points."""

    rule: str = "youden"
    target_sensitivity: float | None = None
    target_specificity: float | None = None
    cost_fn: float = 1.0
    cost_fp: float = 1.0
    doubt_sensitivity: float = 0.95
    fracture_specificity: float = 0.95

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise FracdetError(f"unknown threshold rule {self.rule!r} (choose {', '.join(RULES)})")
        if self.rule == "sensitivity" and self.target_sensitivity is None:
            raise FracdetError("the sensitivity rule needs a target sensitivity (--target-sensitivity)")
        if self.rule == "specificity" and self.target_specificity is None:
            raise FracdetError("the specificity rule needs a target specificity (--target-specificity)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OperatingPoints:
    """The chosen thresholds, how each was chosen, and what they achieved on the data."""

    threshold: float
    threshold_rule: str
    doubt_threshold: float
    fracture_threshold: float
    note: str = ""
    achieved: dict[str, dict[str, float]] = field(default_factory=dict)
    rule: dict[str, Any] = field(default_factory=dict)


def _describe(rule: ThresholdRule) -> str:
    if rule.rule == "youden":
        return "Youden's J (sensitivity + specificity − 1) maximised"
    if rule.rule == "sensitivity":
        return f"highest threshold with sensitivity ≥ {rule.target_sensitivity:g}"
    if rule.rule == "specificity":
        return f"lowest threshold with specificity ≥ {rule.target_specificity:g}"
    return (f"least misclassification cost (false negative cost {rule.cost_fn:g}, false positive cost "
            f"{rule.cost_fp:g})")


def main_threshold(y: np.ndarray, p: np.ndarray, rule: ThresholdRule) -> float:
    """The main threshold by ``rule``."""
    if rule.rule == "youden":
        return youden_threshold(y, p)
    if rule.rule == "sensitivity":
        return sensitivity_threshold(y, p, float(rule.target_sensitivity))  # type: ignore[arg-type]
    if rule.rule == "specificity":
        return specificity_threshold(y, p, float(rule.target_specificity))  # type: ignore[arg-type]
    return cost_threshold(y, p, rule.cost_fn, rule.cost_fp)


def choose_operating_points(y: np.ndarray, p: np.ndarray, rule: ThresholdRule | None = None,
                            data_name: str = "the validation split") -> OperatingPoints:
    """Fit all three thresholds on calibrated probabilities ``p`` of labelled data ``y``.

    The doubt threshold is never above the fracture threshold (when the model is so good that
    the high-sensitivity point lies above the high-specificity one, there is no doubt band).
    """
    rule = rule or ThresholdRule()
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    t = main_threshold(y, p, rule)
    doubt = sensitivity_threshold(y, p, rule.doubt_sensitivity)
    fracture = specificity_threshold(y, p, rule.fracture_specificity)
    doubt = min(doubt, fracture)
    ach = {"main": rates_at(y, p, t), "doubt": rates_at(y, p, doubt), "fracture": rates_at(y, p, fracture)}
    text = f"{_describe(rule)} on {data_name} (calibrated probabilities)"
    ops = OperatingPoints(threshold=t, threshold_rule=text, doubt_threshold=doubt, fracture_threshold=fracture,
                          achieved=ach, rule=rule.to_dict())
    ops.note = threshold_note(ops, n=len(y), positives=int(y.sum()), data_name=data_name)
    return ops


def threshold_note(ops: OperatingPoints, n: int, positives: int, data_name: str) -> str:
    """The written rationale stored with the model (the ``threshold_note.txt`` of a release)."""
    a = ops.achieved
    r = ops.rule

    def line(name: str, key: str) -> str:
        v = a.get(key, {})
        return (f"- {name}: {v.get('threshold', float('nan')):.4f} → sensitivity {v.get('sensitivity', float('nan')):.3f}, "
                f"specificity {v.get('specificity', float('nan')):.3f}, {100 * v.get('flagged_fraction', 0):.1f}% of "
                "images flagged")

    why = {
        "youden": "It weighs a missed fracture and a false alarm equally, the neutral choice when no "
                  "clinical costs are given.",
        "sensitivity": "It fixes how many fractures may be missed; specificity is whatever remains.",
        "specificity": "It fixes how many false alarms are tolerated; sensitivity is whatever remains.",
        "cost": "It minimises the total cost of errors at the prevalence of the data; a missed fracture "
                "usually costs more than a false alarm (a recall, an extra view).",
    }.get(str(r.get("rule")), "")
    return "\n".join([
        f"Operating points chosen on {data_name} ({n} images, {positives} fractured), after calibration.",
        "",
        f"Main threshold (label fractured / not fractured): {ops.threshold_rule}. {why}",
        line("main threshold", "main"),
        "",
        "Verdict bands (fracture / doubt / no fracture):",
        line(f"doubt threshold (sensitivity ≥ {r.get('doubt_sensitivity', 0.95):g})", "doubt"),
        line(f"fracture threshold (specificity ≥ {r.get('fracture_specificity', 0.95):g})", "fracture"),
        "Below the doubt threshold: 'no fracture'; at or above the fracture threshold: 'fracture'; "
        "in between: 'doubt' (a reader should look).",
        "",
        "The rates are those measured on this data; on another population (prevalence, devices, "
        "projections) they shift — refit with `fracdet calibrate` on local validation data.",
    ])


def verdict(probability: float | None, doubt_threshold: float, fracture_threshold: float) -> str | None:
    """``fracture`` / ``doubt`` / ``no fracture`` for one calibrated probability (None stays None)."""
    if probability is None:
        return None
    if probability >= fracture_threshold:
        return "fracture"
    if probability >= doubt_threshold:
        return "doubt"
    return "no fracture"


@dataclass(frozen=True)
class Decision:
    """How a model turns its calibrated probability into words: the one place where a
    prediction's label and verdict are made (the predictor, study verdicts and every face use it)."""

    labels: tuple[str, str] = ("not fractured", "fractured")
    threshold: float = 0.5
    doubt_threshold: float = 0.5
    fracture_threshold: float = 0.5

    @classmethod
    def of(cls, model: Any) -> "Decision":
        """The decision stored in a model artifact (missing bands fall back to its threshold)."""
        t = float(model.threshold)
        doubt, fracture = getattr(model, "doubt_threshold", None), getattr(model, "fracture_threshold", None)
        return cls(tuple(model.labels), t, t if doubt is None else float(doubt),  # type: ignore[arg-type]
                   t if fracture is None else float(fracture))

    def label(self, probability: float) -> str:
        """The binary label at the main threshold."""
        return self.labels[int(probability >= self.threshold)]

    def verdict(self, probability: float | None) -> str | None:
        """``fracture`` / ``doubt`` / ``no fracture`` at the two bands (None stays None)."""
        return verdict(probability, self.doubt_threshold, self.fracture_threshold)


__all__ = ["Decision", "OperatingPoints", "confusion_at", "rates_at", "RULES", "ThresholdRule", "VERDICTS", "choose_operating_points", "cost_threshold",
           "main_threshold", "sensitivity_threshold", "specificity_threshold", "threshold_note", "verdict",
           "youden_threshold"]

"""Ensembles: weighted fusion of calibrated member probabilities, as one model.

An ensemble artifact is an ordinary artifact (``kind="ensemble"``, ``architecture="ensemble"``)
whose ``build_model()`` returns :class:`EnsembleNet`, a module computing one fused logit, so
the predictor, ``evaluate``, ``calibrate`` and Grad-CAM use it like any single model::

    P = Σ wᵢ · cᵢ(zᵢ)            zᵢ: member i's logit, cᵢ its own calibration map, Σ wᵢ = 1
    z = logit(P)                  the ensemble's output; its own temperature and thresholds
                                  (fitted on validation data) apply on top, as for any model

**Inputs.** Members may differ in input size and normalisation. The ensemble's preprocessing
is the largest member input size with mean 0 / std 1, i.e. the letterboxed image in [0, 1]
replicated to 3 channels. Each member (:class:`Member`) resizes that to its own input size
(bilinear, not antialiased so that the module exports to ONNX; the letterbox is square, so
this matches letterboxing at the smaller size up to rounding of the padding and the slight
aliasing of a mild downscale such as 260 → 224) and applies its own mean/std before its
network. All members must share the resize mode (letterbox or stretch).

The artifact stores the members' weights under ``members.<i>.net.`` and, in
``model_config``, each member's architecture, head config, preprocessing and calibration map
(temperature, Platt, beta or isotonic, :mod:`fracdet.calibration`; older ensembles: its
temperature) plus the fusion weights — nothing else is needed to rebuild it.

Grad-CAM (:mod:`fracdet.explain`): ``members`` and ``weights`` give the weighted mean of the
members' maps; each member takes the ensemble's input and names its CAM layer (``cam_layer``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fracdet.errors import FracdetError

log = logging.getLogger(__name__)
EPS = 1e-6
WEIGHT_FITS = ("auroc", "logloss")


class Member(nn.Module):
    """One member: resize the ensemble input to its size, normalise, run its network (→ logit)."""

    def __init__(self, net: nn.Module, input_size: int, mean: Sequence[float], std: Sequence[float],
                 temperature: float, calibration: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.net = net
        self.input_size = int(input_size)
        self.temperature = float(temperature)
        self.calibration = _checked(calibration) if calibration else {"method": "temperature",
                                                                      "params": {"temperature": self.temperature}}
        if self.calibration["method"] == "isotonic":
            x = torch.tensor(self.calibration["params"]["x"], dtype=torch.float32)
            y = torch.tensor(self.calibration["params"]["y"], dtype=torch.float32)
            self.register_buffer("iso_lo", x[:-1], persistent=False)
            self.register_buffer("iso_hi", x[1:], persistent=False)
            self.register_buffer("iso_slope", (y[1:] - y[:-1]) / (x[1:] - x[:-1]), persistent=False)
            self.iso_y0 = float(y[0])
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        spec = getattr(net, "spec", None)
        self.cam_layer = f"net.{spec.cam_layer}" if getattr(spec, "cam_layer", "") else ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=False,
                              align_corners=False)
        return self.net((x - self.mean) / self.std)

    def probability(self, z: torch.Tensor) -> torch.Tensor:
        """The member's calibrated probability of its logit (as :func:`fracdet.calibration.apply_calibration`)."""
        method, p = self.calibration["method"], self.calibration["params"]
        z = z.float()
        if method == "temperature":
            return torch.sigmoid(z / p["temperature"])
        if method == "platt":
            return torch.sigmoid(p["a"] * z + p["b"])
        if method == "beta":
            return torch.sigmoid(-p["a"] * F.softplus(-z) + p["b"] * F.softplus(z) + p["c"])
        # isotonic: piecewise linear through the breakpoints, flat beyond them (np.interp)
        zc = torch.minimum(torch.maximum(z.unsqueeze(-1), self.iso_lo), self.iso_hi)
        return self.iso_y0 + ((zc - self.iso_lo) * self.iso_slope).sum(dim=-1)


def _checked(spec: dict[str, Any]) -> dict[str, Any]:
    from fracdet.calibration import check_calibration

    try:
        return check_calibration(spec)
    except (ValueError, TypeError, OverflowError) as exc:
        raise FracdetError(f"invalid ensemble member calibration: {exc}") from None


class EnsembleNet(nn.Module):
    """Fused logit of the members' weighted calibrated probabilities (see the module docs)."""

    def __init__(self, members: Sequence[Member], weights: Sequence[float]) -> None:
        super().__init__()
        w = np.asarray([float(v) for v in weights], dtype=float)
        if len(w) != len(members) or not len(members):
            raise FracdetError(f"an ensemble needs one weight per member ({len(members)} members, {len(w)} weights)")
        if (w < 0).any() or w.sum() <= 0:
            raise FracdetError(f"ensemble weights must be non-negative and not all zero: {w.tolist()}")
        self.members = nn.ModuleList(members)
        self.weights = (w / w.sum()).tolist()
        self.cam_layer = ""  # each member names its own

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "EnsembleNet":
        from fracdet.models import create_model

        members = []
        for m in config["members"]:
            if m.get("kind", "single") != "single":
                raise FracdetError("an ensemble member cannot itself be an ensemble")
            net = create_model(m["architecture"], pretrained=False, **dict(m.get("model_config", {})))
            pre = m["preprocess"]
            members.append(Member(net, pre["input_size"], pre["mean"], pre["std"], m.get("temperature", 1.0),
                                  m.get("calibration")))
        return cls(members, config["weights"])

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """N×M calibrated probabilities of the members."""
        return torch.stack([m.probability(m(x)) for m in self.members], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.tensor(self.weights, dtype=torch.float32, device=x.device)
        p = (self.member_probabilities(x) * w).sum(dim=1).clamp(EPS, 1 - EPS)
        return torch.log(p) - torch.log1p(-p)


# ----------------------------------------------------------------------------- building


def build_ensemble(members: Sequence[Any], weights: Sequence[float] | None = None,
                   sources: Sequence[str] | None = None) -> Any:
    """An ensemble :class:`~fracdet.artifact.ModelArtifact` from member artifacts (temperature 1 and
    the weighted mean of the members' thresholds until :func:`fracdet.ensembling.fit_ensemble` / ``fracdet calibrate``)."""
    from fracdet.artifact import ModelArtifact
    from fracdet.transforms import PreprocessSpec

    if len(members) < 2:
        raise FracdetError("an ensemble needs at least two models")
    for i, m in enumerate(members):
        if m.kind != "single":
            raise FracdetError(f"member {i + 1} is itself an ensemble; list its members instead")
    modes = {m.preprocess.resize for m in members}
    if len(modes) > 1:
        raise FracdetError(f"ensemble members must share one resize mode, found {sorted(modes)}")
    splits = {m.split_csv for m in members if getattr(m, "split_csv", None)}
    if len(splits) > 1:
        raise FracdetError("the members were trained on different splits: one member's test images are another's "
                           "training images, so no split of the ensemble is honest; train them on one split")
    w = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=float)
    if len(w) != len(members) or (w < 0).any() or w.sum() <= 0:
        raise FracdetError(f"need {len(members)} non-negative weights, got {list(w)}")
    w = w / w.sum()
    size = max(m.preprocess.input_size for m in members)
    config = {
        "members": [{"architecture": m.architecture, "model_config": dict(m.model_config),
                     "preprocess": m.preprocess.to_dict(), "temperature": float(m.temperature),
                     "calibration": m.calibration_in_use(),
                     "threshold": float(m.threshold), "source": (sources[i] if sources else f"member {i + 1}"),
                     "version": m.version, "created": m.created, "metrics": _short_metrics(m.metrics)}
                    for i, m in enumerate(members)],
        "weights": w.tolist(),
    }
    state = {f"members.{i}.net.{k}": v for i, m in enumerate(members) for k, v in m.state_dict.items()}
    thr = float(np.dot(w, [m.threshold for m in members]))
    first = members[0]
    return ModelArtifact(
        architecture="ensemble", kind="ensemble", state_dict=state,
        preprocess=PreprocessSpec(input_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channels=3,
                                  resize=first.preprocess.resize),
        model_config=config, labels=list(first.labels), threshold=thr,
        threshold_rule="weighted mean of the members' thresholds (not fitted; run fracdet calibrate)",
        temperature=1.0, training={"seed": first.training.get("seed", 42),
                                   "fractions": first.training.get("fractions", [0.70, 0.15, 0.15])},
        data=dict(first.data), split_csv=next(iter(splits), None),
    )


def _short_metrics(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "roc_auc", "pr_auc", "sensitivity", "specificity", "threshold")
    return {s: {k: m[s][k] for k in keys if k in m[s]} for s in ("val", "test") if isinstance(m.get(s), dict)}


def parse_weights(text: str, n: int, sources: Sequence[str] | None = None) -> list[float]:
    """Weights from ``"0.6,0.4"`` or a JSON file (``{"weights": [..]}``, ``{"weights": {model: w}}``
    or ``{"members": [{"weight": w}, ...]}``, as a release's ``ensemble_meta.json``)."""
    p = Path(text)
    if p.suffix.lower() == ".json" or p.is_file():
        try:
            meta = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FracdetError(f"{p}: cannot read ensemble weights ({exc})") from None
        raw: Any = meta.get("weights") if isinstance(meta, dict) else meta
        if raw is None and isinstance(meta, dict) and isinstance(meta.get("members"), list):
            raw = [float(m.get("weight", 1.0)) for m in meta["members"]]
        if isinstance(raw, dict):
            names = [Path(s).stem for s in (sources or [])]
            try:
                raw = [raw[s] if s in raw else raw[Path(s).stem] for s in (sources or [])]
            except KeyError as exc:
                raise FracdetError(f"{p}: no weight for model {exc} (have {sorted(raw)}; models {names})") from None
        values = raw
    else:
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise FracdetError(f"--weights: expected numbers like 0.6,0.4 or a JSON file, got {text!r}") from None
    if not isinstance(values, list) or len(values) != n:
        raise FracdetError(f"--weights: {n} model(s) need {n} weight(s), got {values!r}")
    return [float(v) for v in values]


# ----------------------------------------------------------------------------- fitting


def fit_weights(member_probs: np.ndarray, y: np.ndarray, objective: str = "auroc", step: float = 0.05,
                seed: int = 0) -> list[float]:
    """Fusion weights on the simplex from validation probabilities (N×M).

    ``auroc``: maximise the fused AUROC — a grid of step ``step`` for up to three members,
    else seeded Dirichlet samples — keeping, among equal AUROCs, the weights nearest to equal.
    ``logloss``: minimise the fused log-loss (softmax-parametrised, L-BFGS).
    """
    from fracdet.metrics import roc_auc

    P = np.asarray(member_probs, dtype=float)
    y = np.asarray(y, dtype=int)
    n, m = P.shape
    if len(np.unique(y)) < 2:
        raise FracdetError("fitting ensemble weights needs both classes in the validation data")
    if objective == "auroc":
        if m <= 3:
            k = int(round(1 / step))
            grid = [np.array(c, dtype=float) / k for c in _compositions(k, m)]
        else:
            rng = np.random.default_rng(seed)
            grid = [np.ones(m) / m] + list(rng.dirichlet(np.ones(m), 3000))
        equal = np.ones(m) / m
        best = max(grid, key=lambda w: (round(roc_auc(y, P @ w), 10), -float(np.abs(w - equal).sum())))
        return best.tolist()
    if objective == "logloss":
        from scipy.optimize import minimize

        def loss(theta: np.ndarray) -> float:
            w = np.exp(theta - theta.max())
            w /= w.sum()
            p = np.clip(P @ w, EPS, 1 - EPS)
            return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))

        res = minimize(loss, np.zeros(m), method="L-BFGS-B")
        w = np.exp(res.x - res.x.max())
        return (w / w.sum()).tolist()
    raise FracdetError(f"unknown weight fit {objective!r} (choose {', '.join(WEIGHT_FITS)})")


def _compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    if parts == 1:
        return [(total,)]
    return [(i, *rest) for i in range(total + 1) for rest in _compositions(total - i, parts - 1)]


@torch.inference_mode()
def member_probabilities(net: EnsembleNet, samples: Sequence[Any], transform: Any,
                         batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """N×M member probabilities and labels of labelled samples (unreadable files left out)."""
    from fracdet.data.loader import make_loader

    net.eval()
    probs, labels = [], []
    for x, y, _ in make_loader(samples, transform, batch_size=batch_size):
        if len(x):
            probs.append(net.member_probabilities(x).numpy())
            labels.append(y.numpy())
    if not probs:
        raise FracdetError("no readable images to fit the ensemble on")
    return np.concatenate(probs), np.concatenate(labels).astype(int)




__all__ = ["EnsembleNet", "Member", "WEIGHT_FITS", "build_ensemble", "fit_weights",
           "member_probabilities", "parse_weights"]

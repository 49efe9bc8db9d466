"""What a prediction is: one image's :class:`Prediction` and one study's :class:`StudyPrediction`,
and their flat output rows (the columns every writer uses, :data:`COLUMNS`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

COLUMNS = ["path", "probability", "label", "verdict", "threshold", "logit", "error", "reason", "warning"]
"""The columns of one image's row, in order (``reason``: why it is not assessable; ``warning``:
e.g. an inverted film that was corrected)."""
NOT_ASSESSABLE = "not assessable"
"""The verdict of an image the model cannot judge (see :mod:`fracdet.io.quality`, :mod:`fracdet.ood`)."""
STUDY_COLUMNS = ["level", "study"]
"""Leading columns of ``--by-study`` CSVs (a study row, then its ``view`` rows)."""
EXTRA_COLUMNS = ["boxes", "n_views", "aggregation", "frame", "modality", "body_part", "view",
                 "study_uid", "series_uid", "sop_uid"]
"""Written after :data:`COLUMNS` when any row has them (a model with a fracture map, DICOM inputs,
study rows); ``boxes`` is a JSON list of ``[x0, y0, x1, y1, score]`` in CSV."""
ROW_META_KEYS = ("frame", "modality", "body_part", "view", "study_uid", "series_uid", "sop_uid")
"""``meta`` keys copied into output rows when present (DICOM inputs)."""


@dataclass
class Prediction:
    """One image's result; ``error`` is set (and the numbers are None) when it could not be read."""

    path: str | None
    probability: float | None
    label: str | None
    threshold: float
    logit: float | None = None
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    heatmap: np.ndarray | None = field(default=None, repr=False)
    """H×W float32 in [0, 1] at the original size, when asked for (see fracdet.explain)."""
    verdict: str | None = None
    """``fracture`` / ``doubt`` / ``no fracture`` at the model's two operating points (see fracdet.operating),
    or ``not assessable`` (then ``reason`` says why; probability, label and logit are None)."""
    reason: str | None = None
    """Why the image is not assessable (not a radiograph this model can judge), else None."""
    warning: str | None = None
    """Something the reader should know about an assessed image (e.g. an inverted film, corrected)."""
    boxes: list[tuple[float, float, float, float, float]] | None = None
    """Fracture boxes ``(x0, y0, x1, y1, score)`` in original-image pixels, best first, from the
    model's learned fracture map (:mod:`fracdet.fracturemap`); None when the model has no map."""
    proposals: list[tuple[float, float, float, float, float]] | None = field(default=None, repr=False)
    """Every box a box head proposes down to :data:`fracdet.fracturemap.PROPOSAL_FLOOR` (as ``boxes``),
    with the learned maps only: what ``evaluate --boxes`` ranks for AP; never in rows."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def assessable(self) -> bool:
        """Read, and judged by the model (not refused as out of distribution)."""
        return self.error is None and self.verdict != NOT_ASSESSABLE

    @classmethod
    def not_assessable(cls, path: str | None, reason: str, threshold: float,
                       meta: dict[str, Any] | None = None) -> "Prediction":
        """The row of an image the model cannot judge: no probability, no label, the reason."""
        return cls(path=path, probability=None, label=None, threshold=threshold, meta=dict(meta or {}),
                   verdict=NOT_ASSESSABLE, reason=reason)

    def to_row(self) -> dict[str, Any]:
        """Flat row for CSV/JSON output (plus the DICOM keys of ``meta`` when present)."""
        heatmap, self.heatmap = self.heatmap, None  # rows never carry the map
        try:
            d = asdict(self)
        finally:
            self.heatmap = heatmap
        d.pop("heatmap")
        d.pop("proposals")
        if d["boxes"] is None:
            d.pop("boxes")
        else:
            d["boxes"] = [[round(float(v), 1) for v in b[:4]] + [round(float(b[4]), 4)] for b in d["boxes"]]
        meta = d.pop("meta")
        for key in ROW_META_KEYS:
            if meta.get(key) not in (None, ""):
                d[key] = meta[key]
        return d


@dataclass
class StudyPrediction:
    """One study's verdict from its views: the ``aggregation`` (max or mean) of the views'
    calibrated probabilities, labelled with the same threshold. Views that could not be
    read are listed but left out of the verdict; ``error`` is set when none could be."""

    study: str
    probability: float | None
    label: str | None
    threshold: float
    aggregation: str
    views: list[Prediction] = field(default_factory=list)
    error: str | None = None
    verdict: str | None = None  # fracture / doubt / no fracture at the model's bands, or not assessable
    reason: str | None = None  # why not assessable (no view could be judged)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def assessable(self) -> bool:
        return self.error is None and self.verdict != NOT_ASSESSABLE

    @property
    def n_views(self) -> int:
        """Views that entered the verdict (read and assessable)."""
        return sum(v.assessable for v in self.views)

    def to_row(self) -> dict[str, Any]:
        """The study's own row (CSV: ``level=study``)."""
        return {
            "level": "study", "study": self.study, "path": None,
            "probability": self.probability, "label": self.label, "verdict": self.verdict,
            "threshold": self.threshold, "logit": None, "error": self.error, "reason": self.reason,
            "warning": _study_warning(self.views) if self.assessable else None, "n_views": self.n_views, "aggregation": self.aggregation,
        }

    def to_rows(self) -> list[dict[str, Any]]:
        """Flat rows for CSV: the study row, then one ``level=view`` row per view."""
        return [self.to_row()] + [
            {"level": "view", "study": self.study, **v.to_row()} for v in self.views
        ]

    def to_json(self) -> dict[str, Any]:
        """Nested form for JSON: the study with its views under ``views``."""
        d = self.to_row()
        d.pop("level")
        d.pop("path")
        d.pop("logit")
        d["views"] = [v.to_row() for v in self.views]
        return d


def _study_warning(views: list[Prediction]) -> str | None:
    """The views' warnings and refusals, for the study row (None when there are none)."""
    notes = [f"{v.path}: {v.warning}" for v in views if v.warning]
    notes += [f"{v.path}: not assessable ({v.reason})" for v in views if v.ok and not v.assessable]
    return "; ".join(notes) or None

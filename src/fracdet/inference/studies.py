"""Studies: the views of one study (DICOM StudyInstanceUID, or a study map for plain images)
combined into one :class:`~fracdet.inference.prediction.StudyPrediction`."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from fracdet.errors import FracdetError
from fracdet.inference.prediction import NOT_ASSESSABLE, Prediction, StudyPrediction
from fracdet.operating import Decision

STUDY_AGGREGATIONS = ("max", "mean")


def read_study_map(path: str | Path) -> dict[str, str]:
    """A CSV with ``path`` and ``study`` columns (a dataset manifest with a ``study``
    column works) → {resolved path: study}; relative paths are taken from the CSV's
    folder. Raises :class:`FracdetError`."""
    import csv

    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
            if "path" not in fields or "study" not in fields:
                raise FracdetError(f"{p}: a study map needs 'path' and 'study' columns; found {sorted(fields)}")
            out: dict[str, str] = {}
            for row in reader:
                file = (row.get(fields["path"]) or "").strip()
                study = (row.get(fields["study"]) or "").strip()
                if not file or not study:
                    continue
                fp = Path(file).expanduser()
                if not fp.is_absolute():
                    fp = p.parent / fp
                out[str(fp.resolve())] = study
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FracdetError(f"{p}: cannot read study map ({exc})") from None
    return out


def study_key(pred: Prediction, study_map: Mapping[str, str] | None = None) -> str:
    """Which study a prediction belongs to: its DICOM StudyInstanceUID, else the study
    given for its file in ``study_map``, else the file itself (a one-view study)."""
    uid = pred.meta.get("study_uid")
    if uid:
        return str(uid)
    if study_map and pred.path is not None:
        found = study_map.get(str(Path(pred.path).resolve()))
        if found:
            return found
    return str(pred.path)


def group_by_study(predictions: Iterable[Prediction], aggregation: str = "max",
                   study_map: Mapping[str, str] | None = None,
                   decision: Decision | None = None) -> list[StudyPrediction]:
    """Combine views into study verdicts, studies in order of first appearance.

    ``aggregation``: ``"max"`` (a study is as suspicious as its most suspicious view)
    or ``"mean"`` of the calibrated probabilities of its assessable views (a study whose views are
    all not assessable is not assessable, with their reasons); ``decision`` (the model's, see
    :class:`~fracdet.operating.Decision`) labels that value and gives the study its verdict;
    without one the views' threshold labels it and there is no verdict.
    """
    if aggregation not in STUDY_AGGREGATIONS:
        raise FracdetError(f"unknown study aggregation '{aggregation}' (choose {' or '.join(STUDY_AGGREGATIONS)})")
    groups: dict[str, list[Prediction]] = {}
    for pred in predictions:
        groups.setdefault(study_key(pred, study_map), []).append(pred)
    out: list[StudyPrediction] = []
    for study, views in groups.items():
        rule = decision or Decision(threshold=views[0].threshold)
        probs = [v.probability for v in views if v.assessable and v.probability is not None]
        if not probs:
            refused = [v for v in views if v.ok and not v.assessable]
            if refused:  # read, but no view the model can judge
                reasons = sorted({v.reason or "" for v in refused})
                out.append(StudyPrediction(study, None, None, rule.threshold, aggregation, views,
                                           verdict=NOT_ASSESSABLE, reason="no assessable view: " + "; ".join(reasons)))
                continue
            out.append(StudyPrediction(study, None, None, rule.threshold, aggregation, views,
                                       error=f"no readable view ({len(views)} failed)"))
            continue
        prob = float(max(probs) if aggregation == "max" else float(np.mean(probs)))
        out.append(StudyPrediction(study, prob, rule.label(prob), rule.threshold, aggregation, views,
                                   verdict=rule.verdict(prob) if decision else None))
    return out

"""``fracdet evaluate``: clinical metrics of a model on labelled data, as JSON, a readable
table, and ROC / confusion-matrix figures."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fracdet.artifact import load_artifact
from fracdet.data.layouts import Sample, load_dataset
from fracdet.data.selection import select_samples
from fracdet.errors import DatasetError
from fracdet.fsutil import write_json, write_text
from fracdet.metrics import binary_metrics, classification_report, format_table
from fracdet.operating import Decision

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    metrics: dict[str, Any]
    table: str
    out_dir: Path
    split_note: str


def write_evaluation(out_dir: str | Path, y: np.ndarray, prob: np.ndarray, threshold: float,
                     labels: Sequence[str], extra: dict[str, Any] | None = None,
                     report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compute the metrics and write metrics.json, metrics.txt, roc.png and confusion_matrix.png.

    ``report``: also the clinical evaluation — keyword arguments of
    :func:`fracdet.report.clinical_evaluation` (CIs, subgroups, calibration, operating points,
    figures) plus ``title`` and ``model_info`` — and the self-contained ``report.html``."""
    from fracdet.plots import plot_confusion, plot_roc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = binary_metrics(y, prob, threshold)
    m["classification_report"] = classification_report(y, prob, threshold, list(labels))
    if extra:
        m.update(extra)
    report = dict(report) if report is not None else None
    if report is not None:
        from fracdet.report import clinical_evaluation

        title, info = report.pop("title", "fracdet evaluation"), report.pop("model_info", None)
        m.update(clinical_evaluation(out, y, prob, threshold, **report))
    elif m["positives"] and m["negatives"]:
        plot_roc(y, prob, m["roc_auc"], threshold, out / "roc_curve.png")
    write_json(out / "metrics.json", m)
    table = format_table(m)
    if report is not None:
        from fracdet.metrics import format_ci

        table += "\n\n" + format_ci(m["ci"])
    write_text(out / "metrics.txt", table + "\n\n" + m["classification_report"])
    plot_confusion(m["confusion_matrix"], labels, out / "confusion_matrix.png")
    if report is not None:
        from fracdet.report import write_html_report

        write_html_report(out / "report.html", m, out, title=title, model_info=info)
    return m


def evaluate(data: str | Path, model: str | Path | None = None, out_dir: str | Path = "evaluation",
             split: str = "auto", layout: str = "auto", batch_size: int = 32,
             dedupe_against: str | Path | None = None, boxes: str | Path | None = None,
             cam_methods: Sequence[str] = ("gradcam", "gradcam++", "eigencam"), tta: bool = False,
             n_resamples: int = 1000, seed: int = 0, run_dir: str | Path | None = None,
             backend: str = "auto") -> EvaluationResult:
    """Evaluate a model artifact on labelled data and write the results to ``out_dir``.

    ``dedupe_against``: training data; test images that duplicate any of its images (exact,
    pixel-identical or near, see :mod:`fracdet.data.audit`) are dropped for a second set of
    metrics (``metrics["deduped"]``), so both numbers are reported. When it has splits, its
    train and val splits are the reference (its test split was not trained on).

    ``boxes``: a COCO JSON of fracture boxes; the fractured images that have boxes are scored
    per CAM method in ``cam_methods`` against baselines (``metrics["localisation"]``, see
    :mod:`fracdet.localisation`), with example overlays in ``out_dir/localisation/examples``.

    Also written: bootstrap CIs (``n_resamples``, ``seed``), subgroups, calibration, operating
    points and verdicts, figures and the self-contained ``report.html`` (:mod:`fracdet.report`;
    ``run_dir``: a training run folder whose curves go into it). ``tta``: test-time augmentation.
    ``backend``: the inference engine, chosen as for ``fracdet predict`` so the numbers are
    those of the predictions users get (int8 when the model carries a checked int8 graph).
    """
    from fracdet.inference import Predictor
    from fracdet.models.collect import collect_logits

    art = load_artifact(model)
    predictor = Predictor(art, tta=tta, backend=backend)
    ds = load_dataset(data, layout=layout)
    samples, note = select_samples(ds, split, art.training, art.data, art.recorded_split())
    logits, y, idx = collect_logits(predictor.logits, samples, predictor.transform, batch_size)
    if len(y) == 0:
        raise DatasetError(f"{data}: no readable images to evaluate")
    prob = art.probability(logits)
    skipped = len(samples) - len(y)
    extra: dict[str, Any] = {"evaluated_on": note, "unreadable_skipped": skipped, "model": str(model or "default"),
                             "tta": tta, "backend": predictor.backend}
    if dedupe_against is not None:
        extra["deduped"] = _deduped_metrics(dedupe_against, [samples[i] for i in idx], y, prob, art.threshold)
    if boxes is not None:  # where the heatmaps point, on the fractured images with boxes
        from fracdet.localisation import evaluate_localisation, load_coco_boxes

        fractured = [samples[i] for i, t in zip(idx, y) if t == 1]
        normal = [samples[i] for i, t in zip(idx, y) if t == 0]  # for box mAP50 / false positives per film
        extra["localisation"] = evaluate_localisation(
            predictor, fractured, load_coco_boxes(boxes), cam_methods, Path(out_dir) / "localisation",
            negatives=normal).summary
    info = {**{k: v for k, v in art.describe().items() if k in ("architecture", "threshold_rule", "threshold_note")},
            "calibration": art.metrics.get("calibration", {}), "model": str(model or "default"),
            "fracdet_version": art.version}
    m = write_evaluation(out_dir, y, prob, art.threshold, art.labels, extra=extra, report=dict(
        doubt_threshold=art.doubt_threshold, fracture_threshold=art.fracture_threshold,
        logits=logits, temperature=art.temperature,
        calibration=art.calibration_in_use(), samples=[samples[i] for i in idx],
        n_resamples=n_resamples, seed=seed, run_dir=run_dir, model_info=info,
        title=f"fracdet evaluation: {Path(str(model)).name if model else 'default model'}"))
    _write_predictions(Path(out_dir) / "predictions.csv", [samples[i] for i in idx], y, prob, art.threshold,
                       Decision.of(art).verdict)
    return EvaluationResult(m, format_table(m), Path(out_dir), note)


def _deduped_metrics(reference: str | Path, samples: list[Sample], y: np.ndarray, prob: np.ndarray,
                     threshold: float) -> dict[str, Any]:
    import warnings

    from fracdet.data.audit import cross_duplicates

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = load_dataset(reference)
    ref_samples = [s for s in ref.samples if s.split in ("train", "val")] if ref.has_splits() else ref.samples
    dup = cross_duplicates(samples, ref_samples)
    keep = np.array([i not in dup for i in range(len(samples))], dtype=bool)
    out: dict[str, Any] = {"reference": str(reference), "dropped": int((~keep).sum()),
                           "dropped_files": {str(samples[i].path): p for i, p in dup.items()}}
    if keep.any():
        out.update(binary_metrics(y[keep], prob[keep], threshold))
    else:
        out["n"] = 0
    log.info("dedupe against %s: %d of %d test image(s) duplicate training images", reference, out["dropped"],
             len(samples))
    return out


def _write_predictions(path: Path, samples: list[Sample], y: np.ndarray, prob: np.ndarray, threshold: float,
                       verdict: Any = None) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "true_label", "probability", "predicted_label", "verdict", "threshold", "region"])
    for s, t, p in zip(samples, y, prob):
        w.writerow([s.path, int(t), f"{p:.6f}", int(p >= threshold), verdict(float(p)) if verdict else "",
                    threshold, s.region or ""])
    write_text(path, buf.getvalue())

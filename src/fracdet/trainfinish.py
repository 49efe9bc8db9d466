"""The end of a training run: calibration chosen and fitted on validation, operating points,
the test evaluation, the box threshold of a map head, then the artifact with its model card,
out-of-distribution reference and (optionally) int8 graph."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fracdet import __version__
from fracdet.artifact import ModelArtifact, load_artifact, save_artifact
from fracdet.boxtraining import training_boxes
from fracdet.calibration import apply_calibration, calibrated_probability, expected_calibration_error
from fracdet.config import TrainConfig
from fracdet.data.layouts import Dataset
from fracdet.data.selection import split_manifest
from fracdet.fsutil import sha256_of_file, write_json, write_text
from fracdet.metrics import binary_metrics, with_bootstrap_ci
from fracdet.models import FracNet
from fracdet.transforms import build_transforms

log = logging.getLogger(__name__)


def start_weights(cfg: TrainConfig) -> dict[str, str]:
    """The sha256 of the file ``--weights`` started from: its path alone says nothing once the file changes."""
    if not cfg.weights or not Path(cfg.weights).is_file():
        return {}
    return {"weights_sha256": sha256_of_file(cfg.weights)}


def finish_run(cfg: TrainConfig, ds: Dataset, model: FracNet, spec: Any, run_dir: Path,
               rows: list[dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """Calibrate on validation, pick the threshold, evaluate, write figures and the artifact;
    returns the artifact's path and the run's metrics."""
    from fracdet.evaluate import write_evaluation
    from fracdet.modelcard import render_model_card
    from fracdet.plots import plot_training_curves
    from fracdet.models.collect import collect_logits

    model.eval()
    transform = build_transforms(spec)
    val_logits, val_y, _ = collect_logits(model, ds.by_split("val"), transform, cfg.batch_size)
    from fracdet.recalibrate import choose_calibration

    cal, how = choose_calibration(val_logits, val_y, getattr(cfg, "calibration", "auto"))
    temperature = cal["params"]["temperature"] if cal["method"] == "temperature" else 1.0
    val_prob = apply_calibration(val_logits, cal)
    ops = operating_points(val_y, val_prob)
    threshold = ops.threshold
    metrics: dict[str, Any] = {
        "val": with_bootstrap_ci(binary_metrics(val_y, val_prob, threshold), val_y, val_prob, threshold),
        "calibration": {
            "temperature": temperature, "method": cal["method"], "chosen_by": how["chosen_by"],
            "oof_ece_before": how["oof_ece_before"], "oof_ece_after": how["oof_ece_after"],
            "val_ece_before": expected_calibration_error(calibrated_probability(val_logits, 1.0), val_y),
            "val_ece_after": expected_calibration_error(val_prob, val_y),
            "fitted_on": "the validation split",
        },
        "operating_points": {"rule": ops.rule, "achieved": ops.achieved},
    }
    test_s = ds.by_split("test")
    if test_s:
        test_logits, test_y, test_idx = collect_logits(model, test_s, transform, cfg.batch_size)
        test_prob = apply_calibration(test_logits, cal)
        info = {"architecture": cfg.model, "threshold_rule": ops.threshold_rule, "threshold_note": ops.note,
                "calibration": metrics["calibration"], "model": str(run_dir / "model.fracdet"),
                "fracdet_version": __version__}
        test_m = write_evaluation(run_dir / "eval-test", test_y, test_prob, threshold, ["not fractured", "fractured"],
                                  extra={"evaluated_on": "the test split", "model": info["model"]}, report=dict(
                                      doubt_threshold=ops.doubt_threshold, fracture_threshold=ops.fracture_threshold,
                                      logits=test_logits, temperature=temperature, calibration=cal,
                                      samples=[test_s[i] for i in test_idx], run_dir=run_dir if rows else None,
                                      model_info=info, title=f"fracdet {cfg.model}: test split"))
        metrics["test"] = {k: v for k, v in test_m.items() if k not in ("classification_report", "figures")}
    if rows:
        plot_training_curves(rows, run_dir / "curves.png")
    localisation: dict[str, Any] = {}
    if model.map_head is not None:
        from fracdet.boxtraining import fit_localisation

        localisation = fit_localisation(model, ds.by_split("val"), spec, training_boxes(cfg), cfg.batch_size)
        metrics["localisation"] = localisation
    art = ModelArtifact(
        architecture=cfg.model,
        state_dict=model.state_dict(),
        preprocess=spec,
        model_config=dict(model.config),
        threshold=threshold,
        threshold_rule=ops.threshold_rule,
        temperature=temperature,
        calibration=cal,
        doubt_threshold=ops.doubt_threshold,
        fracture_threshold=ops.fracture_threshold,
        threshold_note=ops.note,
        training={**cfg.to_dict(), "epochs_run": len(rows), "fracdet_version": __version__, **start_weights(cfg)},
        data={**ds.summary(), "fingerprint": ds.fingerprint(), "split_file": "split.csv",
              **getattr(ds, "audit_summary", {})},
        metrics=metrics,
        split_csv=split_manifest(ds),
        localisation={k: v for k, v in localisation.items()
                      if k in ("box_threshold", "chosen_on", "centre_threshold", "centre_threshold_chosen_on")},
    )
    artifact_path = save_artifact(art, run_dir / "model.fracdet")
    art = add_ood(artifact_path, ds)
    if cfg.int8:
        art = add_int8(artifact_path, ds)
    write_json(run_dir / "metrics.json", metrics)
    write_text(run_dir / "model_card.md", render_model_card(art))
    return artifact_path, metrics


def add_ood(artifact_path: Path, ds: Dataset) -> ModelArtifact:
    """Fit the saved artifact's out-of-distribution reference (train films; threshold on
    validation, :mod:`fracdet.ood_fit`) and save it again; without it only the image checks apply."""
    from fracdet.ood_fit import fit_artifact_ood

    art = load_artifact(artifact_path)
    try:
        fit_artifact_ood(art, [s.path for s in ds.by_split("train")], [s.path for s in ds.by_split("val")])
    except Exception as exc:  # the model is saved already; predict then applies the image checks only
        log.warning("OOD reference not added: %s: %s", type(exc).__name__, exc)
        return art
    save_artifact(art, artifact_path)
    return art


def add_int8(artifact_path: Path, ds: Dataset) -> ModelArtifact:
    """Quantize the saved artifact (its float16-stored weights, as users get them) on training
    images, check it on validation, report on test, and save it again with the outcome."""
    from fracdet.inference.onnx import onnx_available
    from fracdet.quantize import quantize_artifact

    art = load_artifact(artifact_path)
    if not onnx_available():
        log.warning("int8 graph not added: onnxruntime is not installed")
        return art
    try:
        quantize_artifact(art, ds.by_split("train"), ds.by_split("val"), check_note="the validation split",
                          calibration_note="the training split (no augmentation)", test=ds.by_split("test"))
    except Exception as exc:  # an optional speed-up: the float model is already saved
        log.warning("int8 graph not added: %s: %s", type(exc).__name__, exc)
        return art
    save_artifact(art, artifact_path)
    return art


def operating_points(y: Any, prob: Any) -> Any:
    """Youden's J main threshold plus doubt / fracture points on validation (0.5 for all three
    when the validation split lacks a class)."""
    from fracdet.operating import OperatingPoints, choose_operating_points

    if len(set(int(v) for v in y)) < 2:
        return OperatingPoints(0.5, "default 0.5 (the validation split lacks a class)", 0.5, 0.5,
                               note="The validation split lacks a class: default threshold 0.5, no doubt band.")
    return choose_operating_points(y, prob)


__all__ = ["add_int8", "add_ood", "finish_run", "operating_points"]

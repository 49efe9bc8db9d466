"""``fracdet calibrate`` (refit the calibration map and operating points on a site's own data) and
``fracdet ensemble`` (fuse models into one artifact)."""

from __future__ import annotations

import argparse
from typing import Any

from fracdet.cli.options import add_layout_option, add_model_option

def _unit(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return v


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _add_rule_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("operating points (chosen on the validation data)")
    g.add_argument("--rule", choices=["youden", "sensitivity", "specificity", "cost"],
                   help="main threshold rule (default youden; implied by --target-... or --cost-...)")
    g.add_argument("--target-sensitivity", type=_unit, metavar="S", help="e.g. 0.95: miss at most 5%% of fractures")
    g.add_argument("--target-specificity", type=_unit, metavar="S", help="e.g. 0.90: at most 10%% false alarms")
    g.add_argument("--cost-fn", type=_positive, metavar="C", help="cost of a missed fracture (with --cost-fp)")
    g.add_argument("--cost-fp", type=_positive, metavar="C", help="cost of a false alarm (default 1)")
    g.add_argument("--doubt-sensitivity", type=_unit, default=0.95, metavar="S",
                   help="sensitivity of the 'doubt' threshold (default 0.95)")
    g.add_argument("--fracture-specificity", type=_unit, default=0.95, metavar="S",
                   help="specificity of the 'fracture' threshold (default 0.95)")
    p.add_argument("--split", default="auto",
                   help="auto (the val split; all images of data the model was not trained on), val, train, test or all")
    add_layout_option(p)
    p.add_argument("--batch-size", type=int, default=32)


def rule_from_args(a: argparse.Namespace) -> Any:
    """The :class:`~fracdet.operating.ThresholdRule` the flags ask for."""
    from fracdet.operating import ThresholdRule

    rule = a.rule
    if rule is None:
        rule = ("sensitivity" if a.target_sensitivity is not None else "specificity"
                if a.target_specificity is not None else "cost" if a.cost_fn or a.cost_fp else "youden")
    return ThresholdRule(rule=rule, target_sensitivity=a.target_sensitivity, target_specificity=a.target_specificity,
                         cost_fn=a.cost_fn or 1.0, cost_fp=a.cost_fp or 1.0, doubt_sensitivity=a.doubt_sensitivity,
                         fracture_specificity=a.fracture_specificity)


def _print_points(art: Any) -> None:
    from fracdet.calibration import describe_calibration

    print(f"calibration {describe_calibration(art.calibration_in_use())}")
    print(f"threshold {art.threshold:.4f} ({art.threshold_rule})")
    print(f"doubt threshold {art.doubt_threshold:.4f}, fracture threshold {art.fracture_threshold:.4f}")
    print()
    print(art.threshold_note)


# ---------------------------------------------------------------- calibrate
def add_calibrate(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate", help="refit the calibration and operating points on your own validation data",
        description="Refit a model's calibration (temperature, Platt, beta or isotonic; by default the one with "
        "the best out-of-fold score inside the validation data) and its operating points (main threshold, doubt "
        "and fracture thresholds, with a written rationale) on labelled validation data — e.g. a site's own images "
        "before use in a new hospital. Writes a new artifact and its model card; the weights are unchanged.",
    )
    p.add_argument("--method", default="auto", choices=["auto", "temperature", "platt", "beta", "isotonic"],
                   help="calibration map (default auto: chosen by repeated stratified 5-fold inside the data)")
    p.add_argument("--select-by", default="logloss", choices=["logloss", "ece"],
                   help="what auto minimises out of fold (default logloss, a proper score)")
    p.add_argument("data", metavar="VAL_DATA", help="labelled data (any layout)")
    add_model_option(p)
    p.add_argument("--out", required=True, metavar="NEW_MODEL", help="the recalibrated artifact (.fracdet)")
    _add_rule_args(p)
    p.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(a: argparse.Namespace) -> int:
    from fracdet.artifact import load_artifact, save_artifact
    from fracdet.recalibrate import recalibrate, validation_samples
    from fracdet.modelcard import write_model_card_beside

    rule = rule_from_args(a)
    art = load_artifact(a.model)
    samples, note = validation_samples(a.data, art, a.split, a.layout)
    from fracdet.calibration import describe_calibration

    before = describe_calibration(art.calibration_in_use())
    cal = recalibrate(art, samples, rule, a.batch_size, data_name=f"{note} of {a.data}", method=a.method,
                      select_by=a.select_by)
    art.data = {**art.data, "calibrated_on": {"data": str(a.data), "which": note, "n": cal["n"],
                                              "positives": cal["positives"]}}
    from fracdet.quantize import recheck_int8

    q = recheck_int8(art, samples, f"{note} of {a.data}")  # the int8 check, at the new calibration
    out = save_artifact(art, a.out)
    card = write_model_card_beside(art, out)
    print(f"calibrated on {note} ({cal['n']} images, {cal['positives']} fractured)")
    print(f"calibration {before} → {describe_calibration(art.calibration_in_use())} ({cal['chosen_by']})")
    for name, sc in cal["out_of_fold"].items():
        print(f"  {name:<12} out-of-fold log-loss {sc['logloss']:.4f}  ECE {sc['ece']:.4f}")
    print(f"ECE {cal['val_ece_previous']:.3f} → {cal['val_ece_after']:.3f} in sample (uncalibrated "
          f"{cal['val_ece_before']:.3f}); out of fold {cal['oof_ece_before']:.3f} → {cal['oof_ece_after']:.3f}")
    _print_points(art)
    if q is not None:
        print(f"\n{q['reason']} (re-measured on the calibration data)")
    print(f"\nwritten: {out}, {card}")
    return 0


# ---------------------------------------------------------------- ensemble
def add_ensemble(sub: Any) -> None:
    p = sub.add_parser(
        "ensemble", help="fuse several models into one ensemble artifact (weighted probabilities)",
        description="Fuse models into one artifact: P = Σ wᵢ Pᵢ of the members' calibrated probabilities. "
        "Weights are given (--weights) or fitted on validation data (--data) to maximise AUROC or minimise "
        "log-loss; the ensemble is then calibrated as a whole. Every command takes the result as --model.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="two or more model artifacts")
    p.add_argument("--out", required=True, metavar="ENS", help="the ensemble artifact (.fracdet)")
    p.add_argument("--data", metavar="VAL_DATA", help="labelled validation data to fit weights, temperature and thresholds")
    p.add_argument("--weights", metavar="W1,W2,...|JSON",
                   help="fusion weights, e.g. 0.6,0.4, or a JSON file (an ensemble_meta.json with 'weights')")
    p.add_argument("--fit", choices=["auroc", "logloss"], default="auroc",
                   help="what fitted weights optimise on the validation data (default auroc)")
    _add_rule_args(p)
    p.set_defaults(func=_cmd_ensemble)


def _cmd_ensemble(a: argparse.Namespace) -> int:
    from fracdet.artifact import load_artifact, save_artifact
    from fracdet.errors import FracdetError
    from fracdet.modelcard import write_model_card_beside
    from fracdet.ensembling import fit_ensemble
    from fracdet.models.ensemble import parse_weights

    if len(a.models) < 2:
        raise FracdetError("an ensemble needs at least two models")
    members = [load_artifact(m) for m in a.models]
    weights = parse_weights(a.weights, len(members), a.models) if a.weights else None
    art, summary = fit_ensemble(members, a.models, data=a.data, weights=weights, fit=a.fit, split=a.split,
                                layout=a.layout, rule=rule_from_args(a), batch_size=a.batch_size)
    out = save_artifact(art, a.out)
    card = write_model_card_beside(art, out)
    for src, w in zip(a.models, summary["weights"]):
        print(f"member {src}: weight {w:.3f}")
    print(f"weights: {summary['weights_from']}")
    if "val_auroc_ensemble" in summary:
        aucs = ", ".join(f"{v:.3f}" for v in summary["val_auroc_members"])
        print(f"validation AUROC: members {aucs}; ensemble {summary['val_auroc_ensemble']:.3f} "
              f"({summary['n']} images, {summary['positives']} fractured)")
    _print_points(art)
    print(f"\nwritten: {out}, {card}")
    return 0


__all__ = ["add_calibrate", "add_ensemble", "rule_from_args"]

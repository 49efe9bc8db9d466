"""Model card (Markdown) rendered from an artifact's own metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fracdet.calibration import describe_calibration
from fracdet.artifact import ModelArtifact

NOT_A_DEVICE = (
    "**Not a medical device.** fracdet is a research and engineering tool. Its outputs have not been "
    "clinically validated and must not be used to diagnose, treat or triage patients."
)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _cell(m: dict[str, Any], k: str) -> str:
    ci = (m.get("ci") or {}).get(k)
    if ci and ci.get("low") == ci.get("low"):
        return f"{_fmt(m.get(k, ''))} [{ci['low']:.3f}, {ci['high']:.3f}]"
    return _fmt(m.get(k, ""))


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    keys = ["n", "positives", "roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"]
    splits = [s for s in ("val", "test") if isinstance(metrics.get(s), dict)]
    if not splits:
        return ["No held-out metrics were recorded."]
    if "test_before_recalibration" in metrics and "test" not in metrics:
        splits_note = ["", "Recalibrated: the test metrics measured at the previous operating point are kept in the "
                           "artifact (`test_before_recalibration`); measure again with `fracdet evaluate`.", ""]
    else:
        splits_note = []
    if isinstance(metrics.get("test_note"), str):  # what touched the test split, when more than one measurement
        splits_note += ["", metrics["test_note"], ""]
    lines = [*splits_note, "| metric | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_cell(metrics[s], k) for s in splits) + " |")
    if any("ci" in metrics[s] for s in splits):
        boot = next((metrics[s].get("bootstrap") for s in splits if metrics[s].get("bootstrap")), {}) or {}
        lines += ["", f"Brackets: 95% confidence interval (stratified percentile bootstrap, "
                      f"{boot.get('n_resamples', '')} resamples, seed {boot.get('seed', '')})."]
    return lines


def _subgroup_lines(metrics: dict[str, Any]) -> list[str]:
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    subs = test.get("subgroups") or {}
    if not subs:
        return ["No subgroup information in the test data (FracAtlas regions, hardware and views; a "
                "manifest's region column)."]
    lines = ["Test split, at the main threshold; brackets are 95% bootstrap CIs (wide for small groups).", "",
             "| grouping | value | n | fractured | ROC-AUC | sensitivity | specificity |", "|---|---|---|---|---|---|---|"]
    for g, vals in subs.items():
        for v, m in vals.items():
            lines.append(f"| {g} | {v} | {m.get('n')} | {m.get('positives')} | {_cell(m, 'roc_auc')} | "
                         f"{_cell(m, 'sensitivity')} | {_cell(m, 'specificity')} |")
    return lines


def _operating_lines(art: ModelArtifact) -> list[str]:
    doubt = getattr(art, "doubt_threshold", None)
    fracture = getattr(art, "fracture_threshold", None)
    lines = [f"- main threshold (label fractured / not fractured): {art.threshold:.4f} — {art.threshold_rule}"]
    if doubt is not None and fracture is not None and (doubt, fracture) != (art.threshold, art.threshold):
        lines += [f"- doubt threshold (high sensitivity): {doubt:.4f}; fracture threshold (high specificity): "
                  f"{fracture:.4f} — verdicts: `no fracture` below the doubt threshold, `fracture` at or above the "
                  "fracture threshold, `doubt` in between"]
    else:
        lines += ["- no separate doubt band: the verdict is `fracture` at or above the threshold, else `no fracture`"]
    note = getattr(art, "threshold_note", "")
    if note:
        lines += ["", "Rationale (stored in the model as `threshold_note`):", "", "```text", note, "```"]
    return lines


def _member_calibration(m: dict[str, Any]) -> str:
    spec = m.get("calibration")
    if isinstance(spec, dict) and spec.get("method") in ("platt", "beta", "isotonic", "temperature"):
        try:
            return describe_calibration(spec)
        except (KeyError, TypeError, ValueError):
            pass
    return f"T = {float(m.get('temperature', 1.0)):.3f}"


def _ensemble_lines(art: ModelArtifact) -> list[str]:
    if getattr(art, "kind", "single") != "ensemble":
        return []
    cfg = art.model_config
    ens = art.metrics.get("ensemble", {})
    lines = ["## Ensemble", "",
             "P = Σ wᵢ cᵢ(zᵢ) of the members' calibrated probabilities (cᵢ: member i's own calibration), then the "
             f"ensemble's own calibration and thresholds. Weights: {ens.get('weights_from', 'given')}.", "",
             "| member | architecture | input | weight | member calibration | val ROC-AUC |", "|---|---|---|---|---|---|"]
    aucs = ens.get("val_auroc_members") or [None] * len(cfg.get("members", []))
    for m, w, auc in zip(cfg.get("members", []), cfg.get("weights", []), aucs):
        lines.append(f"| {m.get('source')} | {m.get('architecture')} | {m['preprocess']['input_size']} | {w:.3f} | "
                     f"{_member_calibration(m)} | {_fmt(auc) if auc is not None else ''} |")
    if "val_auroc_ensemble" in ens:
        lines += ["", f"Ensemble validation ROC-AUC {ens['val_auroc_ensemble']:.3f} on {ens.get('fitted_on')} "
                      f"({ens.get('n')} images)."]
    return lines + [""]


def _failure_lines(metrics: dict[str, Any]) -> list[str]:
    """Measured weak spots: the subgroups with the lowest test sensitivity / ROC-AUC."""
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    rows = [(g, v, m) for g, vals in (test.get("subgroups") or {}).items() for v, m in vals.items()
            if m.get("n", 0) >= 10]
    out = []
    for key, name in (("sensitivity", "sensitivity"), ("roc_auc", "ROC-AUC")):
        vals = [(m.get(key), g, v, m) for g, v, m in rows if m.get(key) == m.get(key) and m.get(key) is not None]
        if vals:
            worst = min(vals, key=lambda t: t[0])
            out.append(f"- lowest test {name} among subgroups (n ≥ 10): {worst[1]} = {worst[2]}, "
                       f"{_cell(worst[3], key)} (n = {worst[3].get('n')})")
    return out


def _audit_lines(a: dict[str, Any] | None) -> list[str]:
    if not a:
        return []
    lines = [
        f"- data audit (`fracdet audit`): {a.get('duplicate_groups')} duplicate group(s) (exact, pixel-identical or "
        f"near-duplicate at phash distance ≤ {a.get('threshold')}/{a.get('fine_threshold')}), kept within one split; "
        f"{a.get('conflict_groups')} label-conflict group(s), {a.get('excluded_conflict_files')} file(s) excluded "
        f"(conflicts: {a.get('conflicts')}); {a.get('unreadable')} unreadable, {a.get('truncated')} truncated file(s)",
    ]
    if a.get("allow_leakage") and a.get("leakage_in_given_splits"):
        lines.append(
            f"- **LEAKAGE ALLOWED (--allow-leakage)**: the given splits share {a.get('leaking_groups')} duplicate "
            f"group(s) and {a.get('declared_group_leaks')} declared group(s) across splits, and "
            f"{a.get('conflict_groups')} group(s) carry conflicting labels. Validation and test metrics below are "
            "optimistic: they include copies of training images."
        )
    elif a.get("allow_leakage"):
        lines.append("- trained with --allow-leakage (label-conflict groups kept as labelled)")
    return lines


def _test_ece(m: dict[str, Any]) -> list[str]:
    cal = (m.get("test") or {}).get("calibration") if isinstance(m.get("test"), dict) else None
    if not cal or "ece_after" not in cal:
        return []
    return [f"- test ECE {_fmt(cal.get('ece_before', ''))} before → {_fmt(cal['ece_after'])} after calibration"]


def _int8_lines(q: dict[str, Any]) -> list[str]:
    """The int8 section: what was quantized on what, and how far it is from float32."""
    if not q:
        return []
    c, cal = q.get("check", {}), q.get("calibration", {})

    def agreement(r: dict[str, Any], on: str) -> str:
        auc = (f"; AUROC {r['auroc_fp32']:.3f} (float32) vs {r['auroc_int8']:.3f} (int8)"
               if "auroc_int8" in r else "")
        return (f"- {on} ({r.get('n')} images): |Δp| mean {r.get('mean_abs_diff', 0):.3f}, p99 "
                f"{r.get('p99_abs_diff', 0):.3f}, max {r.get('max_abs_diff', 0):.3f}; same label at the threshold "
                f"for {100 * r.get('label_agreement', 0):.1f}%{auc}")

    lines = ["## int8 inference",
             f"- {q.get('scheme', '')}; calibrated on {cal.get('images')} images from {cal.get('from')}",
             agreement(c, f"check on {c.get('on', 'held-out images')}")]
    if q.get("test"):
        lines.append(agreement(q["test"], "test split"))
    where = q.get("measured_on") or {}
    lines.append(f"- measured on {where.get('cpu', 'an unrecorded CPU')} (onnxruntime int8 kernel class "
                 f"{where.get('kernel_class', 'unknown')}); int8 kernels differ by CPU, so `--backend auto` "
                 "judges int8 only by a check measured on the running CPU's class")
    checks = q.get("checks") or {}
    for kernel in sorted(checks):
        e = checks[kernel]
        lines.append(f"  - {kernel}: |Δp| mean {e.get('mean_abs_diff', float('nan')):.3f}, p99 "
                     f"{e.get('p99_abs_diff', float('nan')):.3f} on {e.get('on', 'held-out images')} — "
                     + ("accepted" if e.get("accepted") else "outside the tolerance")
                     + f" ({(e.get('measured_on') or {}).get('cpu', 'unrecorded CPU')})")
    accepted = sorted(k for k, e in checks.items() if e.get("accepted"))
    lines.append(f"- {q.get('reason', '')} (tolerance {q.get('tolerance')}); "
                 + (f"`fracdet predict` uses int8 by default on CPUs of class {', '.join(accepted)} "
                    "(`--backend onnx` gives float32); elsewhere float32 until "
                    "`fracdet quantize DATA --model M --out M2 --recheck` measures it there" if accepted
                    else "predictions use float32 unless `--backend int8` is asked for"))
    return lines + [""]


def _ood_lines(art: ModelArtifact) -> list[str]:
    """The out-of-distribution section: what is refused as not assessable, and how it was fitted."""
    o = getattr(art, "ood", {}) if getattr(art, "ood_arrays", None) else {}
    lines = ["## Not assessable (out-of-distribution refusal)",
             "- image checks before the network: too small, blank or near-uniform, colour, noise, a DICOM body part "
             "that is not a limb"]
    if not o:
        return lines + ["- no feature reference in this model (`fracdet fit-ood DATA --model M --out M2` adds one)", ""]
    return lines + [
        f"- feature reference: {o.get('method')} distance of the pooled backbone features to the {o.get('n_train')} "
        f"training films; refused above {_fmt(o.get('threshold'))}, the {o.get('threshold_rule')} "
        f"({o.get('n_val')} films; {100 * float(o.get('val_refused', 0)):.1f}% of them refused)",
        f"- inverted (negative) films: a logistic model on the features, trained on the training films and their "
        f"inversions; on validation it finds {100 * float(o.get('inverted_val_detected', 0)):.1f}% of the inverted "
        f"films and calls {100 * float(o.get('upright_val_called_inverted', 0)):.1f}% of the upright ones inverted; "
        "confident ones are judged on their positive with a warning",
        "- rates per kind of wrong image: `python benchmarks/ood_rates.py` (README)", ""]


def _pointing(loc: dict[str, Any], name: str) -> str:
    m = (loc.get("baselines") or {}).get(name) if name in ("centre", "bone") else loc.get(name)
    if not isinstance(m, dict) or "pointing_game" not in m:
        return "–"
    return f"{m['pointing_game']:.3f} ({round(m['pointing_game'] * m.get('n', 0))} of {m.get('n')})"


def _detection(loc: dict[str, Any], name: str) -> str:
    d = (loc.get("detection") or {}).get(name) or (loc.get("detection_baselines") or {}).get(name)
    if not isinstance(d, dict) or "map50" not in d:
        return "– | –"
    return f"{_cell(d, 'map50')} | {_cell(d, 'sensitivity_at_1fp')}"


def _localisation_lines(art: ModelArtifact) -> list[str]:
    """A model with a map head: what it is, and where its map points against radiologists' boxes."""
    cfg = art.model_config
    if not cfg.get("map_stride"):
        return []
    alpha = float(cfg.get("map_fuse", 0.0))
    lines = ["## Fracture map and boxes",
             f"- a map head at stride {cfg['map_stride']} (width {cfg.get('map_width')}) gives a fracture probability "
             "per cell (the graph's `fracture_map` output), mapped back onto the original image as the heatmap and as "
             "scored boxes (regions of cells at or above the box threshold "
             f"{_fmt(float(art.localisation.get('box_threshold', float('nan'))))}, chosen on "
             f"{art.localisation.get('chosen_on', 'validation')})",
             f"- the image logit blends in the map's maximum: (1 − α)·image head + α·max(map), α = {alpha:.2f}"
             " (chosen on validation)"]
    if cfg.get("box_width"):
        box = (art.training.get("box_head") or {}) if isinstance(art.training, dict) else {}
        lines[1] = lines[1].replace("mapped back onto the original image as the heatmap and as scored boxes",
                                    "mapped back onto the original image as the heatmap; its region boxes")
        lines[1] += " are not used: the model has a box head"
        lines.append(f"- a box head (CenterNet-style, stride {cfg.get('box_stride', 16)}, width {cfg['box_width']}; the "
                     "graph's `box_map` output: per cell a box-centre logit, the centre's offset and the box's log size) "
                     "gives the boxes: the centre map's local maxima at or above the centre threshold "
                     f"{_fmt(float(art.localisation.get('centre_threshold', float('nan'))))} (chosen on validation by "
                     "box F1 at IoU 0.5), at most five per film, scored by the centre probability; trained "
                     f"{box.get('epochs', '?')} epochs on the training split's cached backbone maps (mirrored films "
                     f"too), seed {box.get('seed', '?')}, with the backbone and the other heads frozen")
    splits = [(s, (art.metrics.get(s) or {}).get("localisation")) for s in ("val", "test")]
    splits = [(s, loc) for s, loc in splits if isinstance(loc, dict)]
    if not splits:
        return lines + [""]
    lines += ["", "Against the radiologists' boxes (FracAtlas COCO boxes): pointing game = the map's maximum inside a "
                  "box (2.5% tolerance), on the fractured films with boxes; boxes as detections over all films of "
                  "the split (mAP50: COCO AP at IoU ≥ 0.5; sensitivity at one false-positive box per film; in brackets "
                  "the 95% bootstrap interval over films, where the evaluation computed one).", "",
              "| split | pointing: model's map | Grad-CAM | image centre | model boxes mAP50 | sens. at 1 FP/film |",
              "|---|---|---|---|---|---|"]
    for s, loc in splits:
        lines.append(f"| {s} | {_pointing(loc, 'model')} | {_pointing(loc, 'gradcam')} | {_pointing(loc, 'centre')} | "
                     f"{_detection(loc, 'model')} |")
    return lines + [""]


def render_model_card(art: ModelArtifact) -> str:
    """A Markdown model card: use, data, split, metrics, operating point, limits."""
    t, d, m = art.training, art.data, art.metrics
    cal = m.get("calibration", {})
    lines = [
        f"# Model card: fracdet {art.architecture}",
        "",
        NOT_A_DEVICE,
        "",
        "## Intended use",
        "Research on fracture classification of single musculoskeletal radiographs (hand, wrist, "
        "elbow, forearm, humerus, shoulder, hip, leg, foot): a probability that the image shows a "
        "fracture and a label at the stored operating point. Not for unsupervised clinical decisions, "
        "not for children's or non-radiograph images unless validated on such data.",
        "",
        "## Model",
        (f"- architecture: `{art.architecture}` {art.model_config}; ImageNet-pretrained: "
         + (str(t.get("pretrained")) if "recipe" not in t else "through the base model (below)")
         if getattr(art, "kind", "single") != "ensemble" else
         f"- architecture: ensemble of {len(art.model_config.get('members', []))} models (see Ensemble); each "
         "member resizes the common input to its own size and normalisation"),
        f"- input: {art.preprocess.input_size}×{art.preprocess.input_size} ({art.preprocess.resize}), "
        f"mean {list(art.preprocess.mean)}, std {list(art.preprocess.std)}; grayscale, bone bright, replicated to 3 channels",
        f"- parameters: {art.describe()['parameters']:,}; fracdet {art.version}; created {art.created}",
        (f"- training: phase 1 (head, frozen backbone) up to {t.get('phase1_epochs')} epochs at lr {t.get('head_lr')}; "
         f"phase 2 (fine-tuning from {t.get('unfreeze_from') or 'the first stage'}) up to {t.get('phase2_epochs')} epochs "
         f"at backbone lr {t.get('backbone_lr')} / head lr {t.get('phase2_head_lr')}; {t.get('optimizer')}, "
         f"{t.get('scheduler')} schedule, early stopping on {t.get('monitor')}, class weighting {t.get('class_weighting')}, "
         f"seed {t.get('seed')}; {t.get('epochs_run')} epochs run" + started_from(t)
         if getattr(art, "kind", "single") != "ensemble" and "recipe" not in t else
         f"- training: {t.get('recipe')} (base model sha256 {str(t.get('base_model_sha256', ''))[:12]}…: the "
         "ImageNet-pretrained EfficientNet-Lite0 fine-tuned at 224 px by `fracdet train`); its backbone frozen, the "
         f"map head and a new image head trained {t.get('epochs')} epochs at lr {t.get('lr')}, batch "
         f"{t.get('batch_size')}, map loss weight {t.get('map_weight')}, seed {t.get('seed')}, on the training "
         "split only"
         if "recipe" in t else
         "- training: the members were trained separately (their own model cards); the ensemble fits only its "
         "weights, temperature and thresholds"),
        "",
        "## Data and split",
        f"- source: `{d.get('root')}` (layout {d.get('layout')}); {d.get('count')} images, "
        f"{d.get('positives')} fractured / {d.get('negatives')} not fractured",
        (f"- split: group-aware stratified {t.get('fractions')} (duplicate groups and identical files never "
         f"straddle two splits), seed {t.get('seed')}; per split: {d.get('splits', d.get('per_split', ''))}"
         if "recipe" not in t else
         "- split: the base model's, recorded in the model file (group-aware and stratified: duplicate groups and "
         f"identical files never straddle two splits); per split: {d.get('splits', d.get('per_split', ''))}"),
        *_audit_lines(d.get("audit")),
        *([f"- {'recalibrated (`fracdet calibrate`)' if 'recipe' not in t else 'calibrated (as `fracdet calibrate` does)'}"
           f" on {d['calibrated_on'].get('which')} of "
           f"`{d['calibrated_on'].get('data')}` ({d['calibrated_on'].get('n')} images, "
           f"{d['calibrated_on'].get('positives')} fractured): calibration and thresholds below come from there"]
          if isinstance(d.get("calibrated_on"), dict) else []),
        "",
        "## Metrics",
        "Measured at the stored threshold with calibrated probabilities; val is the split the threshold "
        "and calibration were chosen on, test was used for nothing but measurement"
        + (" (see below)." if isinstance(m.get("test_note"), str) else "."),
        "",
        *_metrics_table(m),
        "",
        "## Metrics by subgroup",
        "",
        *_subgroup_lines(m),
        "",
        "## Calibration and operating points",
        f"- calibration: {describe_calibration(art.calibration_in_use())} fitted on "
        f"{cal.get('fitted_on', 'the validation split')} (validation ECE {_fmt(cal.get('val_ece_before', ''))} before → "
        f"{_fmt(cal.get('val_ece_after', ''))} after; 10 equal-width bins)",
        *([f"- method chosen by {cal['chosen_by']} inside the validation data (repeated stratified 5-fold): "
           f"ECE {_fmt(cal.get('oof_ece_before'))} uncalibrated → {_fmt(cal.get('oof_ece_after'))} out of fold"]
          if cal.get("chosen_by") else []),
        *_test_ece(m),
        *_operating_lines(art),
        "",
        *_ensemble_lines(art),
        *_localisation_lines(art),
        *_int8_lines(getattr(art, "int8", None) or {}),
        *_ood_lines(art),
        "## Known limitations and failure modes",
        *_failure_lines(m),
        "- Trained on a few thousand images from one public dataset; performance on other hospitals, "
        "devices, projections and populations is unknown until measured there (recalibrate on local data).",
        "- One image at a time: no comparison views, no patient history; subtle or occult fractures are missed.",
        "- Orthopaedic hardware, casts, multi-view composites and paediatric growth plates are known confounders.",
        "- Probabilities are calibrated on the validation split only; the prevalence of fractures there "
        "shapes PPV/NPV.",
        "- Small subgroups (e.g. shoulder, hip, oblique views in FracAtlas) have wide confidence intervals: their "
        "numbers say little until measured on more data.",
        "",
    ]
    return "\n".join(lines)


def write_model_card_beside(art: ModelArtifact, artifact_path: str | Path) -> Path:
    """Write ``art``'s model card next to its artifact file (``NAME.model_card.md``)."""
    from fracdet.fsutil import write_text

    path = Path(artifact_path)
    card = path.with_name(path.stem + ".model_card.md")
    write_text(card, render_model_card(art))
    return card


def started_from(training: dict) -> str:
    """Where a `fracdet train --weights FILE` run started, by path and digest (empty for ImageNet or random)."""
    if not training.get("weights"):
        return ""
    digest = training.get("weights_sha256")
    return f"; started from `{training['weights']}`" + (f" (sha256 {digest[:12]}…)" if digest else "")

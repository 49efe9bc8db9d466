"""Model card (Markdown) rendered from an artifact's own metadata."""

from __future__ import annotations

from typing import Any

from fracdet.artifact import ModelArtifact

NOT_A_DEVICE = (
    "**Not a medical device.** fracdet is a research and engineering tool. Its outputs have not been "
    "clinically validated and must not be used to diagnose, treat or triage patients."
)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    keys = ["n", "positives", "roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"]
    splits = [s for s in ("val", "test") if s in metrics]
    if not splits:
        return ["No held-out metrics were recorded."]
    lines = ["| metric | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(metrics[s].get(k, "")) for s in splits) + " |")
    return lines


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
        f"- architecture: `{art.architecture}` {art.model_config}; ImageNet-pretrained: {t.get('pretrained')}",
        f"- input: {art.preprocess.input_size}×{art.preprocess.input_size} ({art.preprocess.resize}), "
        f"mean {list(art.preprocess.mean)}, std {list(art.preprocess.std)}; grayscale, bone bright, replicated to 3 channels",
        f"- parameters: {art.describe()['parameters']:,}; fracdet {art.version}; created {art.created}",
        f"- training: phase 1 (head, frozen backbone) up to {t.get('phase1_epochs')} epochs at lr {t.get('head_lr')}; "
        f"phase 2 (fine-tuning from {t.get('unfreeze_from') or 'the first stage'}) up to {t.get('phase2_epochs')} epochs "
        f"at backbone lr {t.get('backbone_lr')} / head lr {t.get('phase2_head_lr')}; {t.get('optimizer')}, "
        f"{t.get('scheduler')} schedule, early stopping on {t.get('monitor')}, class weighting {t.get('class_weighting')}, "
        f"seed {t.get('seed')}; {t.get('epochs_run')} epochs run",
        "",
        "## Data and split",
        f"- source: `{d.get('root')}` (layout {d.get('layout')}); {d.get('count')} images, "
        f"{d.get('positives')} fractured / {d.get('negatives')} not fractured",
        f"- split: group-aware stratified {t.get('fractions')} (duplicate groups and identical files never "
        f"straddle two splits), seed {t.get('seed')}; per split: {d.get('splits', d.get('per_split', ''))}",
        *_audit_lines(d.get("audit")),
        "",
        "## Metrics",
        "Measured at the stored threshold with calibrated probabilities; val is the split the threshold "
        "and temperature were chosen on, test was used for nothing but this measurement.",
        "",
        *_metrics_table(m),
        "",
        "## Calibration and operating point",
        f"- temperature scaling: T = {art.temperature:.3f} (validation ECE {_fmt(cal.get('val_ece_before', ''))} → "
        f"{_fmt(cal.get('val_ece_after', ''))})",
        f"- threshold: {art.threshold:.4f} — {art.threshold_rule}",
        "",
        "## Known limitations",
        "- Trained on a few thousand images from one public dataset; performance on other hospitals, "
        "devices, projections and populations is unknown until measured there (recalibrate on local data).",
        "- One image at a time: no comparison views, no patient history; subtle or occult fractures are missed.",
        "- Orthopaedic hardware, casts, multi-view composites and paediatric growth plates are known confounders.",
        "- Probabilities are calibrated on the validation split only; the prevalence of fractures there "
        "shapes PPV/NPV.",
        "",
    ]
    return "\n".join(lines)

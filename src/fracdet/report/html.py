"""One self-contained HTML page of an evaluation: tables and figures (PNG, base64-embedded),
no scripts, no external files — it opens in any browser without fracdet."""

from __future__ import annotations

import base64
import datetime as _dt
import html
from pathlib import Path
from typing import Any

from fracdet.fsutil import write_text
from fracdet.report.clinical import FIGURES

NAMES = {"sensitivity": "Sensitivity (recall)", "specificity": "Specificity", "ppv": "PPV (precision)",
         "npv": "NPV", "accuracy": "Accuracy", "f1": "F1", "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC"}
NOT_A_DEVICE = ("Not a medical device. fracdet is a research and engineering tool; its outputs are not "
                "clinically validated and must not be used to diagnose, treat or triage patients.")
STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.6em 1em}
figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{font-size:.9em;color:#555;text-align:center}
img{max-width:100%;border:1px solid #eee}pre{background:#f7f7f7;padding:.8em;white-space:pre-wrap;font-size:.85em}
.muted{color:#666;font-size:.9em}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _num(v: Any, digits: int = 3) -> str:
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return _e(v)
    return "–" if f != f else f"{f:.{digits}f}"


def _ci(c: dict[str, Any] | None) -> str:
    if not c:
        return ""
    return f"{_num(c.get('estimate'))} [{_num(c.get('low'))}, {_num(c.get('high'))}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def render_html(m: dict[str, Any], figure_dir: str | Path, title: str = "fracdet evaluation",
                model_info: dict[str, Any] | None = None) -> str:
    """The report page for evaluation metrics ``m`` (as in ``metrics.json``); figures are read
    from ``figure_dir`` and embedded."""
    fig_dir = Path(figure_dir)
    info = model_info or {}
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{_e(title)}</h1>", f"<p class='warn'><b>{_e(NOT_A_DEVICE)}</b></p>"]
    facts = [("model", m.get("model", info.get("model", ""))), ("architecture", info.get("architecture", "")),
             ("evaluated on", m.get("evaluated_on", "")),
             ("images", f"{m.get('n')} ({m.get('positives')} fractured, {m.get('negatives')} not fractured)"),
             ("unreadable, skipped", m.get("unreadable_skipped", 0)),
             ("test-time augmentation", "yes" if m.get("tta") else "no"),
             ("generated", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))]
    parts.append(_table(["", ""], [[_e(k), _e(v)] for k, v in facts if v not in ("", None)]))

    ci = m.get("ci", {})
    boot = m.get("bootstrap", {})
    parts.append("<h2>Metrics with 95% confidence intervals</h2>")
    parts.append(f"<p class='muted'>At the main threshold {_num(m.get('threshold'), 4)}; intervals: "
                 f"{_e(boot.get('method', 'bootstrap'))}, {_e(boot.get('n_resamples', ''))} resamples, "
                 f"seed {_e(boot.get('seed', ''))}.</p>")
    parts.append(_table(["metric", "estimate", "95% CI"],
                        [[_e(NAMES.get(k, k)), _num(v.get("estimate")), f"[{_num(v.get('low'))}, {_num(v.get('high'))}]"]
                         for k, v in ci.items()]))
    cm = m.get("confusion_matrix")
    if cm:
        parts.append(_table(["", "predicted not fractured", "predicted fractured"],
                            [["true not fractured", _num(cm["tn"]), _num(cm["fp"])],
                             ["true fractured", _num(cm["fn"]), _num(cm["tp"])]]))

    ops = m.get("operating_points", {})
    if ops:
        parts.append("<h2>Operating points and verdicts</h2>")
        names = {"main": "main threshold (label)", "doubt": "doubt (high sensitivity)",
                 "fracture": "fracture (high specificity)"}
        parts.append(_table(["operating point", "threshold", "sensitivity", "specificity", "images flagged"],
                            [[_e(names.get(k, k)), _num(v.get("threshold"), 4), _num(v.get("sensitivity")),
                              _num(v.get("specificity")), f"{100 * float(v.get('flagged_fraction', 0)):.1f}%"]
                             for k, v in ops.items()]))
        verdicts = m.get("verdicts", {})
        if verdicts:
            cols = ["fracture", "doubt", "no fracture"]
            parts.append(_table(["true class"] + [f"verdict: {c}" for c in cols],
                                [[_e(k)] + [_num(v.get(c, 0)) for c in cols] for k, v in verdicts.items()]))
        if info.get("threshold_rule"):
            parts.append(f"<p>Main threshold rule: {_e(info['threshold_rule'])}</p>")
        if info.get("threshold_note"):
            parts.append(f"<pre>{_e(info['threshold_note'])}</pre>")

    cal = m.get("calibration", {})
    if cal:
        parts.append("<h2>Calibration</h2>")
        rows = []
        if cal.get("method", "temperature") != "temperature":
            rows.append(["calibration (chosen on validation data)", _e(str(cal["method"]))])
        elif "temperature" in cal:
            rows.append(["temperature T (fitted on validation data)", _num(cal["temperature"])])
        if "ece_before" in cal:
            rows.append(["ECE before calibration", _num(cal["ece_before"])])
        rows.append(["ECE after calibration", _num(cal.get("ece_after"))])
        for k, label in (("val_ece_before", "validation ECE before (at fitting)"),
                         ("val_ece_after", "validation ECE after (at fitting)"),
                         ("oof_ece_before", "validation ECE before, out of fold"),
                         ("oof_ece_after", "validation ECE after, out of fold")):
            if k in info.get("calibration", {}):
                rows.append([label, _num(info["calibration"][k])])
        parts.append(_table(["", ""], [[_e(a), b] for a, b in rows]))
        parts.append("<p class='muted'>Expected calibration error: mean |predicted − observed| over 10 "
                     "equal-width probability bins, weighted by bin size.</p>")

    subs = m.get("subgroups", {})
    if subs:
        parts.append("<h2>Subgroups</h2>")
        rows = []
        for g, vals in subs.items():
            for v, s in vals.items():
                c = s.get("ci", {})
                rows.append([_e(g), _e(v), _num(s.get("n")), _num(s.get("positives")), _ci(c.get("roc_auc")),
                             _ci(c.get("sensitivity")), _ci(c.get("specificity")), _ci(c.get("accuracy"))])
        parts.append(_table(["grouping", "value", "n", "fractured", "ROC-AUC [95% CI]", "sensitivity",
                             "specificity", "accuracy"], rows))

    dd = m.get("deduped")
    if dd:
        parts.append("<h2>Without duplicates of training images</h2>")
        parts.append(f"<p>{_num(dd.get('dropped'))} test image(s) duplicate images of {_e(dd.get('reference'))}.</p>")
        keys = ["n", "roc_auc", "accuracy", "sensitivity", "specificity"]
        parts.append(_table(["metric", "all", "deduplicated"], [[_e(k), _num(m.get(k)), _num(dd.get(k))] for k in keys]))

    if m.get("localisation"):
        from fracdet.localisation import localisation_html

        parts.append(localisation_html(m["localisation"], fig_dir / "localisation"))

    figs = [f for f in FIGURES if (fig_dir / f).is_file() and (f in m.get("figures", []) or f == "confusion_matrix.png")]
    if figs:
        parts.append("<h2>Figures</h2>")
        parts.extend(_img(fig_dir / f, FIGURES[f]) for f in figs)
    if m.get("classification_report"):
        parts.append("<h2>Classification report</h2>")
        parts.append(f"<pre>{_e(m['classification_report'])}</pre>")
    parts.append(f"<p class='muted'>fracdet {_e(info.get('fracdet_version', ''))}</p></body></html>")
    return "\n".join(parts)


def write_html_report(path: str | Path, m: dict[str, Any], figure_dir: str | Path | None = None,
                      title: str = "fracdet evaluation", model_info: dict[str, Any] | None = None) -> Path:
    """Write :func:`render_html` to ``path`` (figures from its folder unless ``figure_dir``)."""
    p = Path(path)
    write_text(p, render_html(m, figure_dir or p.parent, title, model_info))
    return p


__all__ = ["render_html", "write_html_report"]

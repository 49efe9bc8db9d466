"""Single models against their ensemble on the same test images: ROC-AUC with 95% bootstrap
CIs, and the paired difference (ensemble − single) with its own paired, stratified bootstrap CI.

Each model is evaluated with ``fracdet evaluate`` (report in ``OUT/<name>/``); the paired
bootstrap then resamples the same images for every model.

    .venv/bin/python benchmarks/ensemble_vs_single.py DATA --models a.fracdet b.fracdet \\
        --ensemble ens.fracdet [--out bench-ensemble] [--bootstrap 2000] [--tta]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from fracdet.evaluate import evaluate
from fracdet.metrics import roc_auc


def _predictions(path: Path) -> dict[str, tuple[int, float]]:
    with open(path, newline="") as f:
        return {r["path"]: (int(r["true_label"]), float(r["probability"])) for r in csv.DictReader(f)}


def paired_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """AUROC(b) − AUROC(a) and its stratified paired bootstrap 95% CI."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    diffs = []
    for _ in range(n):
        i = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        diffs.append(roc_auc(y[i], b[i]) - roc_auc(y[i], a[i]))
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return roc_auc(y, b) - roc_auc(y, a), float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--ensemble", required=True)
    ap.add_argument("--out", default="bench-ensemble")
    ap.add_argument("--split", default="auto")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="reuse OUT/<name>/ evaluations already there")
    a = ap.parse_args()
    out = Path(a.out)
    preds, results = {}, {}
    for model in [*a.models, a.ensemble]:
        name = Path(model).stem if Path(model).stem != "model" else Path(model).parent.name
        if a.reuse and (out / name / "metrics.json").is_file():  # an earlier evaluation of the same model
            m = json.loads((out / name / "metrics.json").read_text())
            r = SimpleNamespace(metrics=m, split_note=m.get("evaluated_on", ""))
        else:
            r = evaluate(a.data, model, out_dir=out / name, split=a.split, n_resamples=a.bootstrap, tta=a.tta)
        results[name] = r
        preds[name] = _predictions(out / name / "predictions.csv")
    common = sorted(set.intersection(*(set(p) for p in preds.values())))
    y = np.array([preds[next(iter(preds))][k][0] for k in common])
    probs = {n: np.array([p[k][1] for k in common]) for n, p in preds.items()}
    ens = list(results)[-1]
    print(f"test images: {len(common)} ({int(y.sum())} fractured); evaluated on {results[ens].split_note}")
    print(f"{'model':<28} {'ROC-AUC [95% CI]':<26} {'sens':>6} {'spec':>6} {'ECE':>6}")
    for n, r in results.items():
        m = r.metrics
        c = m["ci"]["roc_auc"]
        print(f"{n:<28} {c['estimate']:.3f} [{c['low']:.3f}, {c['high']:.3f}]      {m['sensitivity']:>6.3f} "
              f"{m['specificity']:>6.3f} {m['calibration']['ece_after']:>6.3f}")
    for n in list(results)[:-1]:
        d, lo, hi = paired_difference(y, probs[n], probs[ens], a.bootstrap)
        print(f"ensemble − {n}: ΔROC-AUC {d:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired bootstrap)")


if __name__ == "__main__":
    main()

"""``fracdet evaluate``: metrics with CIs, subgroups, figures and the HTML report."""

from __future__ import annotations

import argparse
from typing import Any

from fracdet.cli.options import add_backend_option, add_layout_option, add_model_option

def add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="clinical metrics of a model on labelled data (JSON, table, ROC, confusion)")
    p.add_argument("data")
    add_model_option(p)
    p.add_argument("--out", default="evaluation", help="output folder (default ./evaluation)")
    p.add_argument("--split", default="auto", help="auto (test split), train, val, test or all")
    add_layout_option(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dedupe-against", metavar="TRAIN_DATA",
                   help="drop test images that duplicate or near-duplicate these training images; report both ways")
    p.add_argument("--boxes", metavar="COCO_JSON",
                   help="fracture boxes (COCO): score where the heatmaps point on the fractured images that "
                   "have boxes (pointing game, energy in box, IoU) against centre and bone baselines")
    p.add_argument("--cam-methods", default="gradcam,gradcam++,eigencam",
                   help="comma-separated CAM methods scored with --boxes (default gradcam,gradcam++,eigencam)")
    c = p.add_argument_group("clinical report")
    c.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the image, its mirror and ±10° rotations (4× slower)")
    add_backend_option(c, help="inference engine, as for predict (default auto: what predict uses)")
    c.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="stratified bootstrap resamples for the 95%% confidence intervals (default 1000)")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    c.add_argument("--run", metavar="RUN_DIR", help="training run folder: its training curves go into the report")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from fracdet.evaluate import evaluate

    r = evaluate(a.data, a.model, out_dir=a.out, split=a.split, layout=a.layout, batch_size=a.batch_size,
                 dedupe_against=a.dedupe_against, boxes=a.boxes,
                 cam_methods=[m for m in a.cam_methods.split(",") if m.strip()], tta=a.tta,
                 n_resamples=a.bootstrap, seed=a.seed, run_dir=a.run, backend=a.backend)
    print(f"evaluated on {r.split_note}\n")
    print(r.table)
    if "ci" in r.metrics:
        from fracdet.metrics import format_ci

        print("\n" + format_ci(r.metrics["ci"]))
    print(f"\n{r.metrics['classification_report']}")
    dd = r.metrics.get("deduped")
    if dd is not None:
        print(f"deduplicated against {a.dedupe_against}: {dd['dropped']} of {dd['dropped'] + dd['n']} test image(s) "
              f"duplicate training images")
        for k in ("roc_auc", "accuracy", "sensitivity", "specificity"):
            print(f"  {k:<12} all {r.metrics.get(k, float('nan')):.3f}   deduplicated {dd.get(k, float('nan')):.3f}")
    if "localisation" in r.metrics:
        from fracdet.localisation import format_localisation

        print(f"\nlocalisation against {a.boxes} (fractured images with boxes):\n"
              f"{format_localisation(r.metrics['localisation'])}\n"
              f"example overlays: {r.out_dir}/localisation/examples/")
    print(f"written: {r.out_dir}/report.html, metrics.json, metrics.txt, predictions.csv and the figures")
    return 0



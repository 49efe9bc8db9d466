"""Where does the model look, measured: pointing game, energy in box and IoU of each CAM
method on the FracAtlas test split (the one the model never trained on, re-derived from the
artifact's seed), fractured images with radiologist boxes only, against the centre and
bone-brightness baselines; and the explain time per image.

    .venv/bin/python benchmarks/explain_localisation.py [--model M] [--data ../shared/data/fracatlas]
        [--methods gradcam,gradcam++,eigencam] [--limit N] [--out DIR] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="artifact (default: the shipped model)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/fracatlas"))
    ap.add_argument("--boxes", help="COCO JSON (default DATA/annotations/fracture_boxes_coco.json)")
    ap.add_argument("--methods", default="gradcam,gradcam++,eigencam")
    ap.add_argument("--split", default="auto", help="auto = the model's test split")
    ap.add_argument("--limit", type=int, default=0, help="score only the first N images (0 = all)")
    ap.add_argument("--out", default="", help="also write localisation.json and example overlays here")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    from fracdet.data.layouts import load_dataset
    from fracdet.data.selection import select_samples
    from fracdet.localisation import evaluate_localisation, format_localisation, load_coco_boxes
    from fracdet.inference import Predictor

    predictor = Predictor.from_path(a.model, backend="torch")
    art = predictor.artifact
    ds = load_dataset(a.data)
    samples, note = select_samples(ds, a.split, art.training, art.data, art.recorded_split())
    boxes = load_coco_boxes(a.boxes or Path(a.data) / "annotations/fracture_boxes_coco.json")
    chosen = [s for s in samples if s.label == 1 and Path(str(s.path)).name in boxes]
    if a.limit:
        chosen = chosen[: a.limit]
    print(f"model: {a.model or 'default'} ({art.architecture}, input {art.preprocess.input_size}); {note}")
    print(f"{len(samples)} images in the split, {sum(s.label == 1 for s in samples)} fractured, "
          f"{len(chosen)} of them with boxes scored")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}")
    t0 = time.perf_counter()
    r = evaluate_localisation(predictor, chosen, boxes, [m for m in a.methods.split(",") if m],
                              a.out or None, batch_size=a.batch_size, progress=sys.stderr.isatty())
    print(f"total {time.perf_counter() - t0:.1f} s\n")
    print(format_localisation(r.summary))
    pf = r.summary["predicted_fractured"]
    print(f"\non the {pf[r.summary['settings']['methods'][0]]['n']} scored images the model calls fractured:")
    for name, s in pf.items():
        print(f"  {name:<10} pointing {s['pointing_game']:.3f}  energy {s['energy_in_box']:.3f}  IoU {s['iou']:.3f}"
              if s["n"] else f"  {name:<10} (none)")
    if a.out:
        print(f"\nwritten: {a.out}/localisation.json, {a.out}/examples/")
    print(json.dumps({k: v for k, v in r.summary.items() if k != "predicted_fractured"}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

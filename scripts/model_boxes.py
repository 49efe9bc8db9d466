"""Score a model's own boxes as detections from `fracdet predict` rows (its `boxes` column).

    python scripts/model_boxes.py ROWS.csv COCO_JSON [--out detection.json]

The scoring of `fracdet evaluate --boxes` (fracdet.boxmetrics: mAP50, sensitivity at one false-positive
box per film, FROC) over every row's film, boxed or not. `evaluate` leaves the model's own boxes out
when the out-of-distribution check refused some of the films; predict the same films with `--no-ood`
and score them here.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from fracdet.boxmetrics import detection_summary
from fracdet.fsutil import write_json
from fracdet.localisation import load_coco_boxes, xywh_to_corners

log = logging.getLogger("model_boxes")


def score_rows(rows_csv: Path, coco: Path) -> dict[str, Any]:
    """detection_summary of the rows' boxes against the COCO boxes of the same files."""
    rows = pd.read_csv(rows_csv)
    if "boxes" not in rows:
        raise SystemExit(f"error: {rows_csv}: no boxes column (a model without a map head)")
    truth = load_coco_boxes(coco)
    preds = [[tuple(b) for b in json.loads(s)] if isinstance(s, str) else [] for s in rows["boxes"]]
    truths = [xywh_to_corners(truth.get(Path(p).name, [])) for p in rows["path"]]
    return detection_summary(preds, truths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", type=Path)
    ap.add_argument("coco", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = {**score_rows(a.rows, a.coco), "rows": str(a.rows)}
    if a.out:
        write_json(a.out, out)
    log.info("%s", json.dumps({k: v for k, v in out.items() if k != "froc"}))


if __name__ == "__main__":
    main()

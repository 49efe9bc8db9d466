"""Ship a training run as fracdet's default model.

    python scripts/ship_model.py RUN_DIR [--wall-seconds S]

Copies RUN_DIR/model.fracdet to src/fracdet/weights/default.fracdet, its model card to
docs/model-card.md (with the command that reproduces it), its split to
docs/default-model-split.csv (paths relative to the data folder) and its metrics to
docs/default-model-metrics.json.  See `make default-model`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
from pathlib import Path

from fracdet.artifact import load_artifact
from fracdet.fsutil import atomic_path, write_json, write_text
from fracdet.modelcard import render_model_card

REPO = Path(__file__).resolve().parents[1]
REPRODUCE = (
    "fracdet train ../shared/data/fracatlas --out runs/default-fracatlas "
    "--epochs1 3 --epochs2 10 --patience 3\npython scripts/ship_model.py runs/default-fracatlas"
)
REFIT_OOD = (  # for a shipped model file without the reference (calibrate and quantize keep it; training fits it)
    "fracdet fit-ood ../shared/data/fracatlas --model src/fracdet/weights/default.fracdet "
    "--out src/fracdet/weights/default.fracdet"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--wall-seconds", type=float, help="measured wall time of the training command")
    a = ap.parse_args()
    art = load_artifact(a.run_dir / "model.fracdet")
    with atomic_path(REPO / "src/fracdet/weights/default.fracdet") as tmp:
        shutil.copyfile(a.run_dir / "model.fracdet", tmp)

    data_root = Path(art.data["root"]).resolve()
    buf = io.StringIO()
    rows = list(csv.DictReader((a.run_dir / "split.csv").open()))
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        p = Path(r["path"])
        p = p if p.is_absolute() else (a.run_dir / p)
        r["path"] = p.resolve().relative_to(data_root).as_posix()
        w.writerow(r)
    write_text(REPO / "docs/default-model-split.csv", buf.getvalue())

    metrics = {**art.metrics, "epochs_run": art.training.get("epochs_run")}
    if a.wall_seconds:
        metrics["training_wall_seconds"] = a.wall_seconds
    write_json(REPO / "docs/default-model-metrics.json", metrics)
    card = render_model_card(art)
    card += (
        "\n## Reproduce\n\nOn a 2-core CPU (no GPU), from the repository root with FracAtlas in "
        "`../shared/data/fracatlas`:\n\n```bash\n" + REPRODUCE + "\n```\n\n"
        "The split used is `docs/default-model-split.csv` (paths relative to the FracAtlas folder).\n"
        "Training fits the out-of-distribution reference (`fracdet calibrate` and `quantize` keep it); a model "
        "file without it gets it with `" + REFIT_OOD + "`.\n"
    )
    if a.wall_seconds:
        card += f"Training wall time when it was made: {a.wall_seconds / 60:.1f} minutes.\n"
    write_text(REPO / "docs/model-card.md", card)
    print(json.dumps({k: metrics[k]["roc_auc"] for k in ("val", "test") if k in metrics}))


if __name__ == "__main__":
    main()

"""Choose a map-head model's blend α after training, on validation (issue 13).

    .venv/bin/python scripts/choose_fuse.py MODEL.fracdet --data ../shared/data/fracatlas
        [--alphas 0,0.25,0.5,0.75,1] --out CHOSEN.fracdet

For a model trained with ``--map-weight`` and ``--map-fuse 0`` (its map learned from the boxes
alone): runs it once over its recorded validation split, scores the image logit
``(1 − α)·head + α·max(map)`` for each α by ROC-AUC, keeps the best (the first on a tie), and
writes the model with that α: the graph exported again, the calibration and the operating points
refitted on the same validation logits (as ``fracdet calibrate`` does). The map, its box
threshold and the OOD reference do not depend on α and are kept.  The test split is not read.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("choose_fuse")


def head_and_map_max(art, samples, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image head's logit, the map's maximum logit and the label of every readable film."""
    from fracdet.models.collect import collect_logits
    from fracdet.transforms import build_transforms

    model = art.build_model().eval()

    def head_and_max(x: torch.Tensor) -> torch.Tensor:
        out = model.graph_outputs(x.contiguous(memory_format=torch.channels_last))
        return torch.stack([out["logit"], out["fracture_map"].amax(dim=(1, 2))], dim=1)

    both, y, _ = collect_logits(head_and_max, samples, build_transforms(art.preprocess), batch_size)
    if not len(y):
        raise SystemExit("error: no readable validation films")
    return both[:, 0], both[:, 1], y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", required=True, help="the data the model was trained on (its recorded split)")
    ap.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from sklearn.metrics import roc_auc_score

    from fracdet.artifact import load_artifact, save_artifact
    from fracdet.models.export import build_model, onnx_bytes
    from fracdet.recalibrate import calibrate_from_logits, validation_samples

    art = load_artifact(a.model)
    if not art.model_config.get("map_stride") or float(art.model_config.get("map_fuse", 0.0)) != 0.0:
        raise SystemExit(f"error: {a.model}: needs a map-head model trained with --map-fuse 0")
    samples, note = validation_samples(a.data, art, "val")
    head, mmax, y = head_and_map_max(art, samples)
    alphas = [float(v) for v in a.alphas.split(",")]
    table = {f"{al:g}": float(roc_auc_score(y, (1 - al) * head + al * mmax)) for al in alphas}
    alpha = max(alphas, key=lambda al: (table[f"{al:g}"], -al))
    log.info("validation ROC-AUC by α (%s): %s; chosen α %g", note,
             ", ".join(f"{k} {v:.4f}" for k, v in table.items()), alpha)
    art.model_config = {**art.model_config, "map_fuse": alpha}
    art.onnx = onnx_bytes(build_model(art), art.preprocess.input_size)  # checked against PyTorch
    fused = (1 - alpha) * head + alpha * mmax  # what the graph now computes (FracNet.heads); export checked it
    summary = calibrate_from_logits(art, fused, y, data_name=note)
    art.metrics = {**art.metrics, "map_fuse_choice": {"roc_auc_by_alpha": table, "alpha": alpha,
                                                      "chosen_on": note, "n": int(len(y))}}
    art.training = {**art.training, "map_fuse": alpha, "map_fuse_chosen_after_training": True}
    save_artifact(art, a.out)
    log.info("saved %s: α %g, calibration %s, threshold %.3f", a.out, alpha, summary["method"], art.threshold)


if __name__ == "__main__":
    main()

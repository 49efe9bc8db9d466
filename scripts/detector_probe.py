"""Detector-style training probe (issue 13): train a model's backbone and box head on the box loss
alone, on the fractured training films with boxes and a fixed share of normal ones, for many
epochs, and score the validation boxes every few epochs. It asks whether the box figure is held
down by the recipe of `fracdet train` (4–6 epochs over all films, the box loss beside the image and
map losses) or by the data and the backbone; it writes no model and ships nothing.

    .venv/bin/python scripts/detector_probe.py [--model MODEL] [--epochs 30] [--eval-every 5]
        [--normals 1.0] [--out runs/detector-probe]

Start: the model file's weights (default: the shipped model), at its input size; its recorded split
(the test split is never read). Training: CenterNet centre loss of `fracdet.models.maploss` with
the films' boxes moved by the same augmentation draw as the image (`fracdet.data.boxtargets`, the
default augmentation of `fracdet train`); AdamW, backbone and box head at their own learning rates,
cosine over the epochs. Scoring: every decoded box (centre score ≥ 1e-6, the best five per film) of
each validation film against its true boxes (`fracdet.boxmetrics.detection_summary`: AP50 over all
films, over the fractured films alone, AP25, sensitivity at 1 FP box per film), one JSON line per
evaluation in ``OUT/curve.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("detector_probe")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "src/fracdet/weights/default.fracdet"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/fracatlas"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--normals", type=float, default=1.0,
                    help="normal training films per fractured one (a fixed subset drawn with --seed)")
    ap.add_argument("--backbone-lr", type=float, default=1e-4)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs/detector-probe"))
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(a.seed)

    from fracdet.artifact import load_artifact
    from fracdet.data.augment import build_train_transforms
    from fracdet.data.boxtargets import make_box_loader
    from fracdet.data.layouts import load_dataset
    from fracdet.data.selection import select_samples
    from fracdet.localisation import load_coco_boxes
    from fracdet.models.maploss import centre_loss
    from fracdet.transforms import AugmentConfig, ModelTransform, PreprocessSpec

    art = load_artifact(a.model)
    if not art.model_config.get("box_stride"):
        raise SystemExit(f"{a.model}: the probe needs a model with a box head")
    recorded = art.recorded_split()
    if not recorded:
        raise SystemExit(f"{a.model}: the model file records no split")
    model = art.build_model()
    spec = PreprocessSpec.from_dict(art.preprocess.to_dict())
    size, stride = int(spec.input_size), int(art.model_config["box_stride"])
    boxes = load_coco_boxes(Path(a.data) / "annotations/fracture_boxes_coco.json")
    ds = load_dataset(a.data)
    training, _ = select_samples(ds, "train", art.training, art.data, recorded)
    val, where = select_samples(ds, "val", art.training, art.data, recorded)
    log.info("validation films: %s", where)
    boxed = [s for s in training if s.label and boxes.get(Path(str(s.path)).name)]
    normal = [s for s in training if not s.label]
    rng = np.random.default_rng(a.seed)
    picked = rng.choice(len(normal), size=min(len(normal), round(a.normals * len(boxed))), replace=False)
    train = boxed + [normal[i] for i in sorted(picked)]
    log.info("%s at %d px: %d training films (%d with boxes, %d normal), %d validation films", a.model, size,
             len(train), len(boxed), len(train) - len(boxed), len(val))

    loader = make_box_loader(train, build_train_transforms(spec, AugmentConfig()), boxes, a.batch_size,
                             a.num_workers, seed=a.seed, box_grid=(size // stride,) * 2)
    xs, hws, truths = _validation_inputs(val, ModelTransform(spec), boxes, size)
    params = [{"params": list(model.backbone.parameters()), "lr": a.backbone_lr},
              {"params": list(model.box_head.parameters()), "lr": a.head_lr}]
    opt = torch.optim.AdamW(params, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=a.epochs)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    curve = out / "curve.jsonl"
    curve.write_text("")
    _evaluate(model, xs, hws, truths, size, curve, {"epoch": 0, "train_loss": None, "seconds": 0.0})
    t0 = time.perf_counter()
    for epoch in range(1, a.epochs + 1):
        model.train()
        total, n = 0.0, 0
        for batch in loader:
            x = batch[0]
            if len(x) == 0:
                continue
            keep = batch[4] > 0
            box_map = model.graph_outputs(x.contiguous(memory_format=torch.channels_last))["box_map"]
            loss = centre_loss(box_map[keep], batch[5][keep], batch[6][keep], batch[7][keep])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(x), n + len(x)
        sched.step()
        row = {"epoch": epoch, "train_loss": round(total / max(n, 1), 4), "seconds": round(time.perf_counter() - t0, 1)}
        if epoch % a.eval_every == 0 or epoch == a.epochs:
            _evaluate(model, xs, hws, truths, size, curve, row)
        else:
            log.info("epoch %d: loss %.4f (%.0f s)", epoch, row["train_loss"], row["seconds"])
    return 0


def _validation_inputs(val: list, tf: object, boxes: dict, size: int) -> tuple[torch.Tensor, list, list]:
    """The validation films as model inputs, their (H, W) and their true boxes (corners)."""
    from fracdet.boxmetrics import xywh_to_corners
    from fracdet.fracturemap import original_hw
    from fracdet.io.images import read_image

    xs, hws, truths = [], [], []
    for s in val:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xray = read_image(s.path, min_size=size)
        xs.append(torch.from_numpy(np.asarray(tf(xray.pixels))))  # type: ignore[operator]
        hws.append(original_hw(xray.pixels, xray.meta))
        truths.append(xywh_to_corners(boxes.get(Path(str(s.path)).name) or []) if s.label else [])
    return torch.stack(xs), hws, truths


def _evaluate(model: torch.nn.Module, xs: torch.Tensor, hws: list, truths: list, size: int, curve: Path,
              row: dict) -> None:
    """Score every decoded validation box; append the figures to ``curve`` and log one line."""
    from fracdet.boxmetrics import detection_summary
    from fracdet.fracturemap import centre_boxes

    model.eval()
    with torch.inference_mode():
        maps = np.concatenate([model.graph_outputs(xs[i:i + 32].contiguous(memory_format=torch.channels_last))
                               ["box_map"].numpy() for i in range(0, len(xs), 32)])
    every = [centre_boxes(o, size, hw, threshold=1e-6) for o, hw in zip(maps, hws)]
    summ = detection_summary(every, truths)
    row = {**row, **{k: summ[k] for k in ("map50", "map50_boxed", "map25", "sensitivity_at_1fp")}}
    with open(curve, "a") as f:
        f.write(json.dumps(row) + "\n")
    log.info("epoch %d: loss %s, validation AP50 %.3f (fractured films only %.3f), AP25 %.3f, sens@1FP %.2f (%.0f s)",
             row["epoch"], row["train_loss"], row["map50"], row["map50_boxed"], row["map25"],
             row["sensitivity_at_1fp"], row["seconds"])


if __name__ == "__main__":
    raise SystemExit(main())

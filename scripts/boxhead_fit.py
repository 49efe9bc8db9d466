"""Train a box head on cached backbone maps (scripts/maphead_cache.py) and optionally add it to a
model (issue 13): boxes cut from the fracture map stay at validation AP50 ≤ 0.03, because the map
has no notion of a box's extent.

    .venv/bin/python scripts/boxhead_fit.py [--cache runs/maphead/cache-384.npz] [--epochs 12]
        [--width 64] [--stride 16|8] [--base MODEL] [--save OUT.fracdet]

The head (fracdet.models.classifier.BoxHead, CenterNet-style) works on the cached stride-16 and
stride-32 maps (``--stride 8``: on the stride-8 map too, from a cache made with ``--fine``): per
cell a box-centre logit (Gaussian targets around each box's centre, penalty-reduced focal loss),
the centre's offset within the cell and the box's log size (L1 at the centre cells; ``--box-loss giou``:
generalised IoU of the decoded box; ``--dense G``: also at the cells around the centre, as TTFNet).  Decoding
(fracdet.fracturemap.centre_boxes): the 3×3 local maxima of the centre map, the best five per
film, back to original pixels by the inverse letterbox.

Scored on the validation split only — AP50 and sensitivity at 1 false-positive box per film
(fracdet.boxmetrics, the figures ``fracdet evaluate --boxes`` reports) with every decoded box, and
the centre threshold with the best box F1 (the one a saved model uses); the test split is not in
the cache.  ``--save``: the ``--base`` model (whose backbone the cache was made with; its other
heads, calibration, operating points, OOD reference and split unchanged) with this head and that
threshold, its graph exported again and parity-checked.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("boxhead_fit")


def box_targets(cache: dict, boxes: dict, size: int, grid: tuple[int, int], idx: np.ndarray,
                dense: float = 0.0) -> list[torch.Tensor]:
    """Heatmaps, regression targets and regression weights of the cached views ``idx``."""
    from fracdet.data.boxtargets import centre_targets

    heat = np.zeros((len(idx), *grid), np.float32)
    reg = np.zeros((len(idx), 4, *grid), np.float32)
    weight = np.zeros((len(idx), *grid), np.float32)
    for k, i in enumerate(idx):
        found = boxes.get(Path(str(cache["path"][i])).name) if cache["label"][i] else None
        if found:
            heat[k], reg[k], weight[k] = centre_targets(found, tuple(cache["hw"][i]), size, grid,
                                                        flip=bool(cache["flip"][i]), dense=dense)
    return [torch.from_numpy(a) for a in (heat, reg, weight)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=str(ROOT / "runs/maphead/cache-384.npz"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/fracatlas"))
    ap.add_argument("--base", default=None, help="the model the cache was made from (default: the shipped model)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--stride", type=int, default=16, choices=(16, 8))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--reg-weight", type=float, default=1.0)
    ap.add_argument("--box-loss", default="l1", choices=("l1", "giou"),
                    help="box regression: L1 on offset and log size, or generalised IoU of the decoded box")
    ap.add_argument("--dense", type=float, default=0.0,
                    help="also regress the box at cells where its Gaussian is at least this (0: its centre cell only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="")
    ap.add_argument("--save", default="", help="write the base model with this box head here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: two fits side by side)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    from fracdet.artifact import load_artifact
    from fracdet.boxmetrics import detection_summary, xywh_to_corners
    from fracdet.calibration import apply_calibration
    from fracdet.boxtraining import choose_centre_threshold
    from fracdet.fracturemap import centre_boxes
    from fracdet.localisation import load_coco_boxes
    from fracdet.models import create_model
    from fracdet.models.maploss import centre_loss

    wanted = {"s32", "s16", "s8"} if a.stride == 8 else {"s32", "s16"}
    with np.load(a.cache) as z:  # float16 maps → float32 one at a time (the mirrored cache is large)
        cache = {k: torch.from_numpy(z[k].astype(np.float32)) if k in wanted else z[k]
                 for k in z.files if k in wanted or k not in ("s8", "s16", "s32")}
    size = int(cache["size"])
    boxes = load_coco_boxes(Path(a.data) / "annotations/fracture_boxes_coco.json")
    base = load_artifact(a.base)
    if int(base.model_config.get("map_stride", 0)) not in (8, 16):
        raise SystemExit(f"{a.base}: a box head needs a model with a stride-16 or 8 map head")
    model = create_model(base.architecture, pretrained=False, **{**base.model_config, "box_width": a.width,
                                                                      "box_stride": a.stride})
    missing, _ = model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in base.state_dict.items()
                                        if not k.startswith("box_head.")}, strict=False)
    assert all(k.startswith("box_head.") for k in missing), missing
    head = model.box_head
    s16, s32 = cache["s16"], cache["s32"]
    s8 = cache.get("s8")
    finest = s16 if s8 is None else s8
    grid = tuple(int(v) for v in finest.shape[-2:])

    def run(j: np.ndarray) -> torch.Tensor:
        return head(s32[j], s16[j], None if s8 is None else s8[j])

    train = np.nonzero(cache["split"] == "train")[0]
    val = np.nonzero((cache["split"] == "val") & ~cache["flip"])[0]
    heat, reg, weight = box_targets(cache, boxes, size, grid, train, a.dense)
    opt = torch.optim.AdamW(head.parameters(), lr=a.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=a.epochs)
    log.info("%d training views (%d with boxes), %d validation films, grid %s", len(train),
             int(heat.flatten(1).max(1).values.ge(1).sum()), len(val), grid)
    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        head.train()
        perm = torch.randperm(len(train)).numpy()
        total = 0.0
        for i in range(0, len(perm), a.batch_size):
            j = perm[i:i + a.batch_size]
            loss = centre_loss(run(train[j]), heat[j], reg[j], weight[j], a.reg_weight, a.box_loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(j)
        sched.step()
        log.info("epoch %d loss %.4f (%.0f s)", epoch + 1, total / len(train), time.perf_counter() - t0)
    train_s = time.perf_counter() - t0
    head.eval()
    with torch.inference_mode():
        outs = np.concatenate([run(val[i:i + 128]).numpy() for i in range(0, len(val), 128)])
    hws = [tuple(int(v) for v in cache["hw"][i]) for i in val]
    truths = [(boxes.get(Path(str(cache["path"][i])).name) or []) if cache["label"][i] else [] for i in val]

    every = [centre_boxes(o, size, hw, threshold=1e-6) for o, hw in zip(outs, hws)]
    summary = detection_summary(every, [xywh_to_corners(t) for t in truths])
    with torch.inference_mode():  # the film's calibrated probability, as the predictor gives it
        logits = np.concatenate([model.heads(s32[val[i:i + 128]], s16[val[i:i + 128]])["logit"].numpy()
                                 for i in range(0, len(val), 128)])
    prob = apply_calibration(logits, base.calibration_in_use())
    rescored = [[(*b[:4], b[4] * p) for b in film] for film, p in zip(every, prob)]
    summary["by_centre_times_probability"] = detection_summary(rescored, [xywh_to_corners(t) for t in truths])
    chosen = choose_centre_threshold(list(outs), hws, truths, size)
    threshold, table = chosen["centre_threshold"], chosen["val_centre_boxes"]
    summary.update(name=a.name or f"centre-s{a.stride}-e{a.epochs}-w{a.width}-r{a.reg_weight:g}-{a.box_loss}-d{a.dense:g}-"
                                  f"{Path(a.cache).stem}",
                   epochs=a.epochs, width=a.width, stride=a.stride, reg_weight=a.reg_weight, box_loss=a.box_loss,
                   dense=a.dense, seed=a.seed, lr=a.lr, cache=Path(a.cache).name,
                   train_seconds=round(train_s, 1), centre_threshold=threshold, thresholds=table)
    results = ROOT / "runs/maphead/boxhead.jsonl"  # one line per run, appended
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as f:
        f.write(json.dumps(summary) + "\n")
    log.info("validation: AP50 %.4f, sensitivity at 1 FP/film %.2f (every box; scored by centre × film probability: "
             "%.4f, %.2f); threshold %g: %s", summary["map50"], summary["sensitivity_at_1fp"],
             summary["by_centre_times_probability"]["map50"], summary["by_centre_times_probability"]["sensitivity_at_1fp"],
             threshold, table[f"{threshold:g}"])
    if a.save:
        save(model, base, Path(a.save), threshold, summary, a)
    return 0


def save(model: torch.nn.Module, base: object, out: Path, threshold: float, summary: dict,
         a: argparse.Namespace) -> None:
    """The base model with the trained box head: graph exported again (parity-checked), the
    centre threshold chosen on validation, how the head was trained in ``training.box_head``."""
    import dataclasses

    from fracdet.artifact import save_artifact

    art = dataclasses.replace(
        base, state_dict=model.state_dict(), model_config=dict(model.config), onnx=None, int8_onnx=None, int8={},  # type: ignore[type-var]
        localisation={**base.localisation, "centre_threshold": float(threshold),  # type: ignore[attr-defined]
                      "centre_threshold_chosen_on": "the validation split (box F1 at IoU 0.5)"},
        training={**base.training, "box_head": {  # type: ignore[attr-defined]
            "recipe": "scripts/boxhead_fit.py on cached backbone maps of this model (backbone and other heads frozen)",
            **{k: v for k, v in vars(a).items() if k != "save"}}},
        metrics={**base.metrics, "box_head_val": {k: summary[k] for k in  # type: ignore[attr-defined]
                                                  ("map50", "sensitivity_at_1fp", "froc", "n_true_boxes", "train_seconds")}},
    )
    path = save_artifact(art, out)
    log.info("saved %s (box head width %d, centre threshold %g)", path, a.width, threshold)


if __name__ == "__main__":
    raise SystemExit(main())

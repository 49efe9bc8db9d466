"""Train a map head (and a new image head) on cached backbone maps (scripts/maphead_cache.py),
score it on the validation split, and optionally save a candidate model (issue 13).

    .venv/bin/python scripts/maphead_fit.py --cache runs/maphead/cache-384.npz --stride 16
        [--map-weight 1] [--gamma 0] [--epochs 30] [--fuse 0,0.25,0.5] [--name NAME] [--save]

Validation only: AUROC of the image head, of the max-pooled map and of their blend α, the
pointing game of the learned map (fractured validation films with radiologists' boxes; centre
baseline beside it), boxes at the threshold that maximises box F1 (IoU ≥ 0.5) and their AP50
(fracdet.boxtraining, as ``fracdet train --map-weight`` chooses it).
The test split is not in the cache.  With ``--save``: the shipped model's backbone, these
heads and the chosen α, calibrated and thresholded on validation, as runs/maphead/NAME/model.fracdet.
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
log = logging.getLogger("maphead_fit")


def box_targets(cache: dict, boxes: dict, size: int, map_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Cell targets (N×h×w) and map-loss weights (N) of the cached views."""
    from fracdet.data.boxtargets import input_mask
    from fracdet.models.maploss import cell_targets

    n = len(cache["label"])
    masks = np.zeros((n, 1, size, size), np.uint8)
    weights = np.ones(n, np.float32)
    for i in range(n):
        if not cache["label"][i]:
            continue
        found = boxes.get(Path(str(cache["path"][i])).name)
        if not found:
            weights[i] = 0.0
            continue
        m = input_mask(found, tuple(cache["hw"][i]), size)
        masks[i] = m[:, :, ::-1] if cache["flip"][i] else m
    t = cell_targets(torch.from_numpy(masks), map_hw).numpy()
    return t, weights


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=str(ROOT / "runs/maphead/cache-384.npz"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/fracatlas"))
    ap.add_argument("--base", default=None,
                    help="model whose backbone, split and preprocessing to start from (default: the shipped model; "
                         "`make maphead-candidate` gives the 224 px model the candidate was made from)")
    ap.add_argument("--stride", type=int, default=16, choices=(16, 32))
    ap.add_argument("--map-weight", type=float, default=1.0)
    ap.add_argument("--gamma", type=float, default=0.0, help="focal loss gamma of the map loss (0: BCE)")
    ap.add_argument("--mass-weight", type=float, default=0.0,
                    help="weight of the box-mass loss (−log of the map's softmax mass in the boxes; 0: off)")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--keep-head", action="store_true", help="keep the shipped image head (train the map head only)")
    ap.add_argument("--fuse", default="0,0.25,0.5,0.75", help="blends α of image head and max-pooled map to score")
    ap.add_argument("--name", default="")
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: best on 2 shared cores)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)

    from sklearn.metrics import roc_auc_score

    from fracdet.artifact import load_artifact
    from fracdet.boxtraining import choose_box_threshold
    from fracdet.fracturemap import map_to_image
    from fracdet.localisation import centre_map, load_coco_boxes, pointing_hit
    from fracdet.models import create_model
    from fracdet.models.maploss import box_mass_loss, map_loss

    with np.load(a.cache) as z:
        cache = {k: z[k] for k in z.files}
    size = int(cache["size"])
    boxes = load_coco_boxes(Path(a.data) / "annotations/fracture_boxes_coco.json")
    base = load_artifact(a.base)
    config = {**base.model_config, "map_stride": a.stride, "map_width": a.width, "map_fuse": 0.0}
    model = create_model(base.architecture, pretrained=False, **config)
    missing, _ = model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in base.state_dict.items()},
                                       strict=False)
    assert all(k.startswith("map_head.") for k in missing), missing
    s16 = torch.from_numpy(cache["s16"].astype(np.float32))
    s32 = torch.from_numpy(cache["s32"].astype(np.float32))
    mid = s16 if a.stride == 16 else None
    map_hw = tuple(s16.shape[-2:]) if a.stride == 16 else tuple(s32.shape[-2:])
    targets, weights = box_targets(cache, boxes, size, map_hw)
    targets_t, weights_t = torch.from_numpy(targets), torch.from_numpy(weights)
    y = torch.from_numpy(cache["label"].astype(np.float32))
    train = np.nonzero(cache["split"] == "train")[0]
    val = np.nonzero((cache["split"] == "val") & ~cache["flip"])[0]
    params = list(model.map_head.parameters()) + ([] if a.keep_head else list(model.head.parameters()))
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=a.epochs)
    log.info("%d training views, %d validation films, map %s, %d films with boxes in train",
             len(train), len(val), map_hw, int(((weights > 0) & (cache["label"] == 1))[train].sum()))

    def outputs(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        model.eval()
        maps, heads = [], []
        with torch.inference_mode():
            for i in range(0, len(idx), 256):
                j = idx[i:i + 256]
                out = model.heads(s32[j], mid[j] if mid is not None else None)
                heads.append(out["logit"].numpy())
                maps.append(out["fracture_map"].numpy())
        m = np.concatenate(maps)
        return np.concatenate(heads), m, m.reshape(len(m), -1).max(1)

    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        model.train()
        model.backbone.eval()
        perm = train[torch.randperm(len(train)).numpy()]
        total = 0.0
        for i in range(0, len(perm), a.batch_size):
            j = perm[i:i + a.batch_size]
            out = model.heads(s32[j], mid[j] if mid is not None else None)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logit"], y[j])
            if a.map_weight:
                loss = loss + a.map_weight * map_loss(out["fracture_map"], targets_t[j], weights_t[j], a.gamma)
            if a.mass_weight:
                loss = loss + a.mass_weight * box_mass_loss(out["fracture_map"], targets_t[j], weights_t[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(j)
        sched.step()
        if epoch % 5 == 4 or epoch == a.epochs - 1:
            head, _, mx = outputs(val)
            log.info("epoch %d loss %.4f val AUROC head %.4f map-max %.4f", epoch + 1, total / len(train),
                     roc_auc_score(cache["label"][val], head), roc_auc_score(cache["label"][val], mx))
    train_s = time.perf_counter() - t0

    head, maps, mx = outputs(val)
    yv = cache["label"][val]
    result: dict = {"targets": "cover", "stride": a.stride, "map_weight": a.map_weight, "gamma": a.gamma,
                    "mass_weight": a.mass_weight, "width": a.width,
                    "epochs": a.epochs, "lr": a.lr, "keep_head": a.keep_head, "input_size": size,
                    "cache": Path(a.cache).name, "train_seconds": round(train_s, 1),
                    "auroc_head": float(roc_auc_score(yv, head)), "auroc_map_max": float(roc_auc_score(yv, mx))}
    for alpha in [float(v) for v in a.fuse.split(",") if v]:
        result[f"auroc_fuse_{alpha:g}"] = float(roc_auc_score(yv, (1 - alpha) * head + alpha * mx))
    scored = [k for k, i in enumerate(val) if yv[k] and boxes.get(Path(str(cache["path"][i])).name)]
    hits = centre = 0
    for k in scored:
        i = val[k]
        hw = tuple(int(v) for v in cache["hw"][i])
        truth = boxes[Path(str(cache["path"][i])).name]
        hits += pointing_hit(map_to_image(maps[k], size, hw), truth)
        centre += pointing_hit(centre_map(hw), truth)
    result.update(pointing_game=hits / len(scored), pointing_centre=centre / len(scored), pointing_films=len(scored))
    fractured = [k for k in range(len(val)) if yv[k]]
    truths = [boxes.get(Path(str(cache["path"][val[k]])).name, []) if yv[k] else [] for k in range(len(val))]
    hws = [tuple(int(v) for v in cache["hw"][val[k]]) for k in range(len(val))]
    threshold, table = choose_box_threshold(list(maps), hws, truths, size)
    result.update(box_threshold=threshold, boxes=table, ap50=table[f"{threshold:g}"]["ap50"],
                  box_f1=table[f"{threshold:g}"]["f1"])
    result["fractured_val_films"] = len(fractured)
    mass = f"-m{a.mass_weight:g}" if a.mass_weight else ""
    name = a.name or f"cover-s{a.stride}-w{a.map_weight:g}-g{a.gamma:g}{mass}{'-keephead' if a.keep_head else ''}-{Path(a.cache).stem}"
    out_dir = ROOT / "runs/maphead" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "val.json").write_text(json.dumps(result, indent=2) + "\n")
    results = ROOT / "runs/maphead/results.jsonl"  # one line per run, appended
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as f:
        f.write(json.dumps({"name": name, **result}) + "\n")
    log.info("%s: %s", name, json.dumps(result))
    if a.save:
        alpha = max((float(v) for v in a.fuse.split(",") if v), key=lambda v: result[f"auroc_fuse_{v:g}"])
        save_candidate(model, base, out_dir, size, alpha, result, a)
    return 0


def save_candidate(model: torch.nn.Module, base: object, out_dir: Path, size: int, alpha: float,
                   result: dict, a: argparse.Namespace) -> None:
    """The candidate artifact (the shipped model's backbone and recorded split, these heads, the
    blend ``alpha`` chosen on validation), then calibration and operating points fitted by fracdet's
    own choose_calibration on its validation logits from the saved file (onnxruntime, end to end;
    the images/s of that pass is recorded)."""
    from fracdet.artifact import ModelArtifact, load_artifact, save_artifact
    from fracdet.calibration import apply_calibration
    from fracdet.data.layouts import load_dataset
    from fracdet.inference import Predictor
    from fracdet.operating import choose_operating_points
    from fracdet.recalibrate import choose_calibration
    from fracdet.transforms import PreprocessSpec

    model.map_fuse = alpha
    model.config.update(map_fuse=alpha)
    spec = PreprocessSpec.from_dict({**base.preprocess.to_dict(), "input_size": size})  # type: ignore[attr-defined]
    art = ModelArtifact(
        architecture=base.architecture, state_dict=model.state_dict(), preprocess=spec,  # type: ignore[attr-defined]
        model_config=dict(model.config),
        training={"recipe": "scripts/maphead_fit.py on cached backbone maps of the shipped model",
                  "base_model_sha256": base.sha256, **vars(a)},  # type: ignore[attr-defined]
        data=dict(base.data), split_csv=base.split_csv,  # type: ignore[attr-defined]
        localisation={"box_threshold": float(result["box_threshold"]),
                      "chosen_on": "the validation split (box F1 at IoU 0.5)"},
    )
    path = save_artifact(art, out_dir / "model.fracdet")
    recorded = base.recorded_split() or {}  # type: ignore[attr-defined]
    root = Path(a.data).resolve()
    val = [s for s in load_dataset(a.data).samples if recorded.get(str(Path(s.path).resolve().relative_to(root))) == "val"]
    predictor = Predictor(load_artifact(path))
    t0 = time.perf_counter()
    preds = list(predictor.predict_paths([s.path for s in val], batch_size=8))
    rate = len(preds) / (time.perf_counter() - t0)
    label = {str(s.path): int(s.label) for s in val}
    ok = [p for p in preds if p.ok]
    logits = np.array([p.logit for p in ok])
    yv = np.array([label[str(p.path)] for p in ok])
    cal, how = choose_calibration(logits, yv, "auto")
    prob = apply_calibration(logits, cal)
    ops = choose_operating_points(yv, prob)
    art.set_calibration(cal)
    art.threshold, art.threshold_rule = ops.threshold, ops.threshold_rule
    art.doubt_threshold, art.fracture_threshold, art.threshold_note = ops.doubt_threshold, ops.fracture_threshold, ops.note
    from sklearn.metrics import roc_auc_score

    result = {**result, "auroc_artifact_val": float(roc_auc_score(yv, logits)), "images_per_s_val_end_to_end": round(rate, 2),
              "boxes_per_film_val_artifact": round(sum(len(p.boxes or []) for p in ok) / len(ok), 3)}
    art.metrics = {"val": result, "calibration": {**how, "method": cal["method"], "fitted_on": "the validation split"}}
    save_artifact(art, path)
    (out_dir / "val.json").write_text(json.dumps(result, indent=2) + "\n")
    log.info("saved %s (alpha %.2f, box threshold %.2f, val AUROC %.4f, %.1f images/s end to end)", path, alpha,
             result["box_threshold"], result["auroc_artifact_val"], rate)


if __name__ == "__main__":
    raise SystemExit(main())

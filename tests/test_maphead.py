"""The learned fracture map: map head, box targets, export, boxes in original pixels, writer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fracdet.artifact import ModelArtifact, load_artifact, save_artifact
from fracdet.data.augment import TrainTransform
from fracdet.data.boxtargets import BoxDataset, collate_boxes, input_mask
from fracdet.errors import ArtifactError, FracdetError
from fracdet.fracturemap import map_boxes, map_to_image
from fracdet.inference import Predictor
from fracdet.inference.onnx import OnnxRunner
from fracdet.inference.prediction import COLUMNS, Prediction
from fracdet.inference.writer import PredictionWriter
from fracdet.localisation import pointing_hit
from fracdet.models import FracNet, create_model
from fracdet.models.registry import get_spec
from fracdet.models.simple_cnn import SimpleCNN
from fracdet.models.export import onnx_bytes
from fracdet.models.maploss import box_mass_loss, cell_targets, map_loss
from fracdet.transforms import AugmentConfig, ModelTransform, PreprocessSpec

from synth import tiny_model_file, xray_array

SPEC = PreprocessSpec(input_size=64, mean=(0.5,) * 3, std=(0.25,) * 3)


def _blob_film(rng: np.random.Generator, h: int = 64, w: int = 96, side: int = 24) -> tuple[np.ndarray, tuple]:
    """A dark noisy film with one bright square (the 'fracture') and its COCO box."""
    img = rng.normal(0.15, 0.03, (h, w)).astype(np.float32)
    y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
    img[y:y + side, x:x + side] = 0.9
    return np.clip(img, 0, 1), (float(x), float(y), float(side), float(side))


def _blob_folder(tmp_path: Path, rng: np.random.Generator, n: int) -> Path:
    """``tmp_path/data``: n blob films (fractured, one COCO box each) and n plain ones; the COCO file."""
    images, annotations = [], []
    for label, name in enumerate(("not_fractured", "fractured")):
        for i in range(n):
            img, box = _blob_film(rng) if label else (np.clip(rng.normal(0.15, 0.03, (64, 96)), 0, 1), None)
            path = tmp_path / "data" / name / f"{name}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 255).astype(np.uint8)).save(path)
            images.append({"id": len(images) + 1, "file_name": path.name, "width": 96, "height": 64})
            if box:
                annotations.append({"id": len(annotations) + 1, "image_id": len(images), "bbox": list(box)})
    coco = tmp_path / "boxes.json"
    coco.write_text(json.dumps({"images": images, "annotations": annotations}))
    return coco


class _Films:
    def __init__(self, folder: Path, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.samples, self.boxes = [], {}
        for i in range(n):
            img, box = _blob_film(rng)
            path = folder / f"film{seed}_{i}.png"
            Image.fromarray((img * 255).astype(np.uint8)).save(path)
            self.samples.append(type("S", (), {"path": path, "label": 1})())
            self.boxes[path.name] = [box]


def test_map_boxes_and_map_follow_the_inverse_letterbox():
    # a 100×200 (h×w) film in a 64 px input: window top 16, left 0, 32×64; 8×8 map of 8 px cells
    logits = np.full((8, 8), -9.0, np.float32)
    logits[3, 2:4] = 3.0  # input y 24..32, x 16..32
    boxes = map_boxes(logits, 64, (100, 200), threshold=0.5)
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0][:4], (50.0, 25.0, 100.0, 50.0), atol=1e-4)
    assert boxes[0][4] == pytest.approx(1 / (1 + np.exp(-3.0)), abs=1e-5)
    # the file was twice as large as the decoded pixels: boxes in the file's pixels
    big = map_boxes(logits, 64, (100, 200), out_hw=(200, 400), threshold=0.5)
    np.testing.assert_allclose(big[0][:4], (100.0, 50.0, 200.0, 100.0), atol=1e-4)
    # a region in the padding alone gives no box; two regions give two, best first
    logits[0, 0] = 5.0  # input y 0..8: above the window (it starts at y 16)
    logits[4, 6] = 4.0  # input y 32..40, x 48..56
    got = map_boxes(logits, 64, (100, 200), threshold=0.5)
    assert [round(b[4], 3) for b in got] == [round(1 / (1 + np.exp(-v)), 3) for v in (4.0, 3.0)]
    heat = map_to_image(logits, 64, (100, 200))
    assert heat.shape == (100, 200) and 0.0 <= heat.min() and heat.max() <= 1.0
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert 50 <= r < 75 and 150 <= c < 175  # cell (4, 6): image rows 50..75, columns 150..175


def test_box_mask_moves_with_the_image_under_augmentation():
    aug = AugmentConfig(rotation=25, translate=0.15, zoom=0.15, hflip=True, brightness=0, contrast=0,
                        blur_p=0, erasing_p=0, noise=0)
    transform = TrainTransform(SPEC, aug)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    for _ in range(12):
        img, box = _blob_film(rng)
        prepared = ModelTransform(SPEC).prepare(img)
        mask = input_mask([box], img.shape, 64)
        x, m, _ = transform.finish_pair(prepared, mask)
        bright = x[0] * 0.25 + 0.5 > 0.6  # back to [0, 1]
        assert bright.any() and m.any()
        inside = m[0][bright].mean()
        assert inside > 0.9, inside  # the bright square stays under its mask


@pytest.mark.parametrize("mass_weight", [0.0, 1.0])
def test_map_head_learns_to_point_at_a_blob(tmp_path, mass_weight):
    spec = PreprocessSpec(input_size=128, mean=(0.5,) * 3, std=(0.25,) * 3)  # an 8×8 map
    torch.manual_seed(0)
    train, held = _Films(tmp_path, 48, 1), _Films(tmp_path, 20, 2)
    narrow = SimpleCNN(widths=(8, 16, 32, 64))  # random, frozen features: the map head alone learns
    model = FracNet(narrow, 64, get_spec("simple_cnn"), head_hidden=8, dropout=0.0, map_stride=32, map_width=32)
    model.freeze_backbone()
    ds = BoxDataset(train.samples, ModelTransform(spec), train.boxes)
    x, _, _, masks, weights = collate_boxes([ds[i] for i in range(len(ds))])
    assert masks.shape == (48, 1, 128, 128) and float(weights.min()) == 1.0
    with torch.no_grad():
        final, mid = model.maps(x)
    targets = cell_targets(masks, tuple(final.shape[-2:]))
    opt = torch.optim.Adam(model.map_head.parameters(), lr=1e-2)
    for _ in range(300):
        model.map_head.train()
        fmap = model.map_head(final)
        loss = map_loss(fmap, targets, weights) + mass_weight * box_mass_loss(fmap, targets, weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    hits = centre = 0
    for s in held.samples:
        img = np.asarray(Image.open(s.path), np.float32) / 255.0
        with torch.inference_mode():
            fmap = model.graph_outputs(torch.from_numpy(ModelTransform(spec)(img))[None])["fracture_map"][0].numpy()
        hits += pointing_hit(map_to_image(fmap, 128, img.shape), held.boxes[s.path.name])
        centre += pointing_hit(np.pad(np.ones((1, 1)), ((32, 31), (48, 47))), held.boxes[s.path.name])
    assert hits >= 16, (hits, centre)  # of 20; the image centre hits far fewer
    assert hits > centre + 5


def test_box_mass_loss_is_minus_log_of_the_softmax_mass_in_the_boxes():
    logits = torch.tensor([[[0.0, 1.0], [2.0, -1.0]], [[5.0, 0.0], [0.0, 0.0]], [[3.0, 0.0], [0.0, 0.0]]],
                          requires_grad=True)
    share = torch.tensor([[[1.0, 0.5], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]])
    weights = torch.tensor([1.0, 1.0, 0.0])  # film 2 has no box, film 3 has weight 0: neither counts
    e = np.exp([0.0, 1.0, 2.0, -1.0])
    expected = -np.log((1.0 * e[0] + 0.5 * e[1]) / e.sum())
    loss = box_mass_loss(logits, share, weights)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[1:] == 0)
    assert logits.grad[0, 0, 0] < 0 < logits.grad[0, 1, 0]  # raises the box cell, lowers the cell outside
    none = torch.zeros(1, 2, 2, requires_grad=True)
    assert float(box_mass_loss(none, torch.zeros(1, 2, 2), torch.ones(1))) == 0.0


def test_export_gives_the_fracture_map_as_pytorch_does():
    torch.manual_seed(0)
    model = create_model("simple_cnn", pretrained=False, head_hidden=16, dropout=0.1, map_stride=32, map_fuse=0.5).eval()
    runner = OnnxRunner(onnx_bytes(model, 64))
    x = torch.randn(3, 3, 64, 64)
    got = runner.run(x.numpy())
    with torch.inference_mode():
        ref = model.graph_outputs(x)
        fused = 0.5 * model.forward_head(ref["features"]) + 0.5 * ref["fracture_map"].amax(dim=(1, 2))
    assert set(got) == {"logit", "features", "fracture_map"}
    np.testing.assert_allclose(got["fracture_map"], ref["fracture_map"].numpy(), atol=1e-4)
    np.testing.assert_allclose(got["logit"], ref["logit"].numpy(), atol=1e-4)
    np.testing.assert_allclose(ref["logit"].numpy(), fused.numpy(), atol=1e-5)


def test_a_stride_8_map_head_adds_the_stride_8_stage_and_exports():
    torch.manual_seed(0)
    fine = create_model("efficientnet_lite0", pretrained=False, map_stride=8, map_fuse=0.5, map_width=16).eval()
    mid = create_model("efficientnet_lite0", pretrained=False, map_stride=16, map_width=16).eval()
    assert any(k.startswith("map_head.fine.") for k in fine.state_dict())
    assert not any(k.startswith("map_head.fine.") for k in mid.state_dict())  # stride-16 files load as before
    x = torch.randn(2, 3, 128, 128)
    with torch.inference_mode():
        ref = fine.graph_outputs(x)
        final, s16, s8 = fine.maps(x)
    assert ref["fracture_map"].shape == (2, 16, 16) and tuple(s16.shape[-2:]) == (8, 8) and tuple(s8.shape[-2:]) == (16, 16)
    got = OnnxRunner(onnx_bytes(fine, 128)).run(x.numpy())
    np.testing.assert_allclose(got["fracture_map"], ref["fracture_map"].numpy(), atol=1e-4)
    np.testing.assert_allclose(got["logit"], ref["logit"].numpy(), atol=1e-4)
    with pytest.raises(FracdetError, match="stride-16"):
        create_model("simple_cnn", pretrained=False, map_stride=8)


def _map_model_file(folder: Path, **localisation) -> Path:
    torch.manual_seed(0)
    model = create_model("simple_cnn", pretrained=False, head_hidden=16, dropout=0.1, map_stride=32).eval()
    with torch.no_grad():
        model.map_head.out[-1].bias.fill_(3.0)  # every cell above the threshold: one box, the whole film
    art = ModelArtifact(architecture="simple_cnn", state_dict=model.state_dict(), preprocess=SPEC,
                        model_config=dict(model.config), localisation=localisation or {"box_threshold": 0.5})
    return save_artifact(art, folder / "map.fracdet")


def test_a_map_model_gives_boxes_in_original_pixels_through_the_writer(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(xray_array(True, 3, (100, 250))).save(path)
    predictor = Predictor(load_artifact(_map_model_file(tmp_path)))
    assert predictor.has_map and predictor.heatmap_method("auto") == "learned"
    [pred] = list(predictor.predict_paths([path], heatmaps=True))
    assert pred.ok and pred.boxes and pred.heatmap is not None and pred.heatmap.shape == (100, 250)
    x0, y0, x1, y1, score = pred.boxes[0]
    assert (x0, y0) == pytest.approx((0, 0), abs=1e-3) and (x1, y1) == pytest.approx((250, 100), abs=1e-3)
    assert 0.5 < score <= 1.0
    from fracdet.cli.explain import OverlayWriter

    overlays = OverlayWriter(tmp_path / "overlays", predictor.heatmap_method("auto"))
    rec = overlays.add(pred)  # drops the map from the prediction afterwards
    assert rec is not None and Path(rec["overlay"]).is_file() and rec["boxes"][0][:4] == list(pred.boxes[0][:4])
    assert Path(rec["overlay"]).name == "wide.learned.png" and pred.heatmap is None
    for out in ("rows.csv", "rows.json"):
        with PredictionWriter(tmp_path / out) as w:
            w.add(pred)
    with open(tmp_path / "rows.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert json.loads(row["boxes"])[0][:4] == [0.0, 0.0, 250.0, 100.0]
    assert json.loads((tmp_path / "rows.json").read_text())[0]["boxes"][0][:4] == [0.0, 0.0, 250.0, 100.0]


def test_tta_keeps_the_films_own_map_and_boxes_and_averages_the_logit(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(xray_array(True, 3, (100, 250))).save(path)
    art = load_artifact(_map_model_file(tmp_path))
    plain = Predictor(art, backend="torch")
    tta = Predictor(art, tta=True)
    [p0], [p1] = list(plain.predict_paths([path], heatmaps=True)), list(tta.predict_paths([path], heatmaps=True))
    assert p1.ok and p1.boxes and np.allclose(p1.boxes, p0.boxes) and np.allclose(p1.heatmap, p0.heatmap)
    from fracdet.io.images import read_image

    batch = np.stack([plain.transform(read_image(path).pixels)])
    views = tta.torch_side.tta_model.views(torch.as_tensor(batch))
    expected = float(np.mean([plain.logits(v.numpy()) for v in views]))
    assert p1.logit == pytest.approx(expected, abs=1e-4) and p1.logit != pytest.approx(p0.logit, abs=1e-4)


def test_a_bad_box_threshold_in_a_model_file_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="box_threshold"):
        load_artifact(_map_model_file(tmp_path, box_threshold=1.5))


def test_a_model_without_a_map_predicts_as_before(tmp_path):
    path = tmp_path / "film.png"
    Image.fromarray(xray_array(True, 4, (100, 250))).save(path)
    predictor = Predictor(load_artifact(tiny_model_file(tmp_path)))
    assert not predictor.has_map and predictor.heatmap_method("auto") == "gradcam"
    with pytest.raises(FracdetError, match="no learned fracture map"):
        predictor.heatmap_method("learned")
    [pred] = list(predictor.predict_paths([path]))
    assert pred.ok and pred.boxes is None and "boxes" not in pred.to_row()
    with PredictionWriter(tmp_path / "rows.csv") as w:
        w.add(pred)
    with open(tmp_path / "rows.csv", newline="") as f:
        assert next(csv.reader(f)) == COLUMNS


def test_rows_without_boxes_keep_their_columns_beside_rows_with_boxes(tmp_path):
    a = Prediction(path="a.png", probability=0.9, label="fractured", threshold=0.5, boxes=[(1, 2, 3, 4, 0.8)])
    b = Prediction(path="b.png", probability=0.1, label="not fractured", threshold=0.5, boxes=[])
    with PredictionWriter(tmp_path / "rows.csv") as w:
        w.add(a)
        w.add(b)
    with open(tmp_path / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [json.loads(r["boxes"]) for r in rows] == [[[1.0, 2.0, 3.0, 4.0, 0.8]], []]


@pytest.mark.slow
def test_train_with_boxes_records_the_map_head_and_its_threshold(tmp_path):
    from fracdet.cli import main

    coco = _blob_folder(tmp_path, np.random.default_rng(5), 14)
    rc = main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--model", "simple_cnn",
               "--no-pretrained", "--input-size", "64", "--epochs1", "1", "--epochs2", "1", "--batch-size", "8",
               "--head-hidden", "8", "--no-int8", "--accelerator", "cpu", "--devices", "1", "--no-progress",
               "--boxes", str(coco), "--map-weight", "1"])
    assert rc == 0
    art = load_artifact(tmp_path / "run" / "model.fracdet")
    assert art.model_config["map_stride"] == 32 and 0 < art.localisation["box_threshold"] < 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["map_weight"] == 1.0
    [pred] = list(Predictor(art).predict_paths([tmp_path / "data" / "fractured" / "fractured_0.png"]))
    assert pred.boxes is not None


def test_localisation_scores_the_model_on_films_its_ood_check_would_refuse(tmp_path):
    """evaluate --boxes scores the model's own map and boxes on every readable film, as evaluate
    does: a film the out-of-distribution check refuses must not drop out of the model's figures."""
    from fracdet.data.layouts import load_dataset
    from fracdet.localisation import evaluate_localisation
    from fracdet.ood import OodReference
    from synth import make_class_folders

    art = load_artifact(_map_model_file(tmp_path))
    n = create_model("simple_cnn", pretrained=False).num_features
    art.set_ood(OodReference(mean=np.zeros(n, np.float32), whiten=np.eye(n, dtype=np.float32), threshold=1e-6,
                             invert_w=np.zeros(n, np.float32), invert_b=-20.0), {"method": "test: refuses every film"})
    predictor = Predictor(load_artifact(save_artifact(art, tmp_path / "refusing.fracdet")))
    samples = load_dataset(make_class_folders(tmp_path / "data", n_per_class=3)).samples
    assert all(p.verdict == "not assessable" for p in predictor.predict_paths([s.path for s in samples]))
    truth = {"img_1_000.png": [(10.0, 20.0, 30.0, 10.0)], "img_1_001.png": [(0.0, 0.0, 80.0, 96.0)]}
    s = evaluate_localisation(predictor, [x for x in samples if x.label == 1], truth, [], None, progress=False,
                              negatives=[x for x in samples if x.label == 0]).summary
    assert s["model"]["n"] == 2  # both fractured films with boxes: the learned map scored
    assert s["detection"]["model"]["n_films"] == 5  # and the boxes over all five films


def test_choose_fuse_picks_alpha_on_validation_and_rewrites_graph_and_calibration(tmp_path):
    import subprocess
    import sys

    from synth import make_split_folders

    data = make_split_folders(tmp_path / "data", {"train": 2, "val": 10, "test": 2})
    torch.manual_seed(1)
    model = create_model("simple_cnn", pretrained=False, head_hidden=16, dropout=0.1, map_stride=32).eval()
    art = ModelArtifact(architecture="simple_cnn", state_dict=model.state_dict(), preprocess=SPEC,
                        model_config=dict(model.config), localisation={"box_threshold": 0.4})
    src = save_artifact(art, tmp_path / "a0.fracdet")
    script = Path(__file__).resolve().parents[1] / "scripts" / "choose_fuse.py"
    run = subprocess.run([sys.executable, str(script), str(src), "--data", str(data), "--out", str(tmp_path / "c.fracdet")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    chosen = load_artifact(tmp_path / "c.fracdet")
    table = chosen.metrics["map_fuse_choice"]["roc_auc_by_alpha"]
    alpha = chosen.model_config["map_fuse"]
    assert alpha != 0  # this seed's map helps: the graph must have changed
    assert set(table) == {"0", "0.25", "0.5", "0.75", "1"} and table[f"{alpha:g}"] == max(table.values())
    assert chosen.localisation["box_threshold"] == 0.4 and chosen.metrics["calibration"]["n"] == 20
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        ref = model.graph_outputs(x)
    blend = (1 - alpha) * ref["logit"] + alpha * ref["fracture_map"].amax(dim=(1, 2))
    np.testing.assert_allclose(OnnxRunner(chosen.float32_graph()).run(x.numpy())["logit"], blend.numpy(), atol=1e-4)
    fused = ModelArtifact(architecture="simple_cnn", state_dict=model.state_dict(), preprocess=SPEC,
                          model_config={**model.config, "map_fuse": 0.5})
    again = subprocess.run([sys.executable, str(script), str(save_artifact(fused, tmp_path / "f.fracdet")), "--data",
                            str(data), "--out", str(tmp_path / "d.fracdet")], capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "--map-fuse 0" in again.stderr and not (tmp_path / "d.fracdet").exists()


def _box_map_from_targets(heat: np.ndarray, reg: np.ndarray, centre: np.ndarray) -> np.ndarray:
    logit = np.where(centre > 0, 5.0, np.where(heat > 0.5, 0.0, -5.0))  # the centre a peak, its neighbours lower
    return np.concatenate([logit[None], reg]).astype(np.float32)


@pytest.mark.parametrize("flip", [False, True])
def test_centre_targets_decode_back_to_the_box_in_original_pixels(flip):
    from fracdet.data.boxtargets import centre_targets
    from fracdet.fracturemap import centre_boxes

    hw, box = (600, 800), (300.0, 100.0, 120.0, 60.0)  # x, y, w, h on an 800-wide, 600-high film
    heat, reg, centre = centre_targets([box], hw, 384, (24, 24), flip=flip)
    assert centre.sum() == 1 and heat.max() == 1.0 and heat[centre > 0] == 1.0
    (got,) = centre_boxes(_box_map_from_targets(heat, reg, centre), 384, hw, threshold=0.5)
    x0 = 800 - 300 - 120 if flip else 300
    np.testing.assert_allclose(got[:4], (x0, 100, x0 + 120, 160), atol=0.01)
    assert got[4] == pytest.approx(1 / (1 + np.exp(-5.0)))
    # at twice the size (a film read downscaled, boxes wanted at its original size)
    (big,) = centre_boxes(_box_map_from_targets(heat, reg, centre), 384, hw, out_hw=(1200, 1600), threshold=0.5)
    np.testing.assert_allclose(big[:4], (2 * x0, 200, 2 * x0 + 240, 320), atol=0.02)


def test_dense_box_targets_decode_to_the_same_box_from_every_weighted_cell():
    from fracdet.data.boxtargets import grid_targets

    boxes = np.array([[40.0, 60.0, 200.0, 180.0], [300.0, 300.0, 312.0, 306.0]])  # a large box and a small one
    heat0, reg0, w0 = grid_targets(boxes, 384, (48, 48))
    heat, reg, w = grid_targets(boxes, 384, (48, 48), dense=0.3)
    np.testing.assert_array_equal(heat, heat0)  # the centre heatmap does not change
    assert set(np.unique(w0)) == {0.0, 1.0} and np.array_equal(w0 > 0, heat >= 1.0)  # CenterNet: the centres only
    assert (w > 0).sum() > 10 and w.sum() == pytest.approx(2.0)  # each box's weights sum to 1
    large = w[:30, :30]  # the large box's cells (its centre cell: row 15, column 15)
    assert large.max() == large[15, 15] and (large > 0).sum() > 10 and w[37, 38] == 1.0  # the small box: its centre only
    rows, cols = np.nonzero(w)
    decoded = {(round((c + 0.5 + reg[1, r, c]) * 8, 3), round((r + 0.5 + reg[0, r, c]) * 8, 3),
                round(np.exp(reg[3, r, c]) * 8, 3), round(np.exp(reg[2, r, c]) * 8, 3)) for r, c in zip(rows, cols)}
    assert decoded == {(120.0, 120.0, 160.0, 120.0), (306.0, 303.0, 12.0, 6.0)}  # centre x, y, width, height


@pytest.mark.parametrize("box_loss", ["l1", "giou"])
def test_box_regression_loss_is_zero_at_the_true_box_and_grows_with_a_wrong_size(box_loss):
    import torch

    from fracdet.data.boxtargets import grid_targets
    from fracdet.models.maploss import centre_loss

    heat, reg, w = (torch.from_numpy(a)[None] for a in grid_targets(np.array([[40.0, 60.0, 200.0, 180.0]]), 384,
                                                                       (48, 48), dense=0.3))
    logit = torch.where(heat >= 1.0, 6.0, -6.0)[:, None]
    focal = centre_loss(torch.cat([logit, torch.zeros_like(reg)], 1), heat, reg, w * 0, box_loss=box_loss)
    exact = centre_loss(torch.cat([logit, reg], 1), heat, reg, w, box_loss=box_loss)
    assert float(exact) == pytest.approx(float(focal), abs=1e-5)  # the true box costs nothing beyond the focal loss
    small, smaller = reg.clone(), reg.clone()
    small[:, 2:] -= 0.2
    smaller[:, 2:] -= 0.6
    costs = [float(centre_loss(torch.cat([logit, r], 1), heat, reg, w, box_loss=box_loss)) for r in (small, smaller)]
    assert float(exact) < costs[0] < costs[1]
    with pytest.raises(ValueError, match="box loss"):
        centre_loss(torch.cat([logit, reg], 1), heat, reg, w, box_loss="l2")


def test_centre_boxes_keep_local_maxima_above_the_threshold_best_first():
    from fracdet.fracturemap import centre_boxes

    out = np.zeros((5, 8, 8), np.float32)
    out[0] = -6.0
    out[0, 2, 2], out[0, 2, 3] = 2.0, 1.0  # a peak and its lower neighbour: one box
    out[0, 6, 6] = 0.5
    out[0, 6, 1] = -1.0  # below 0.5
    got = centre_boxes(out, 64, (64, 64), threshold=0.5)
    assert [round(b[4], 3) for b in got] == [round(1 / (1 + np.exp(-2.0)), 3), round(1 / (1 + np.exp(-0.5)), 3)]
    assert got[0][:4] == pytest.approx((16.0, 16.0, 24.0, 24.0))  # cell (2, 2) of 8 px, size one cell
    assert len(centre_boxes(out, 64, (64, 64), threshold=0.1, top_k=1)) == 1
    assert len(centre_boxes(out, 64, (64, 64), threshold=0.1)) == 3
    with pytest.raises(ValueError, match="5×h×w"):
        centre_boxes(out[:4], 64, (64, 64))


def _box_head_model(tmp_path: Path, seed: int, centre_threshold: float, centre_bias: float | None = None):
    """A 128 px map + box head model file (torch module, spec, path) and a 96×160 film."""
    torch.manual_seed(seed)
    model = create_model("efficientnet_lite0", pretrained=False, map_stride=16, map_width=16, box_width=8).eval()
    if centre_bias is not None:
        with torch.no_grad():
            model.box_head.out.bias[0] = centre_bias
    spec = PreprocessSpec(input_size=128, mean=(0.5,) * 3, std=(0.5,) * 3)
    art = ModelArtifact(architecture="efficientnet_lite0", state_dict=model.state_dict(), preprocess=spec,
                        model_config=dict(model.config),
                        localisation={"box_threshold": 0.5, "centre_threshold": centre_threshold})
    path = save_artifact(art, tmp_path / "boxes.fracdet")
    film = tmp_path / "film.png"
    Image.fromarray((xray_array(True, 3, (96, 160)) * 255).astype(np.uint8)).save(film)
    return model, spec, path, film


def test_a_box_head_exports_and_gives_the_predictors_boxes(tmp_path):
    from fracdet.fracturemap import centre_boxes

    # centre bias 2: centres everywhere, the local maxima pass the threshold
    model, spec, path, film = _box_head_model(tmp_path, 0, 0.6, centre_bias=2.0)
    x = torch.randn(2, 3, 128, 128)
    with torch.inference_mode():
        ref = model.graph_outputs(x)
    assert ref["box_map"].shape == (2, 5, 8, 8) and model.config["box_width"] == 8
    got = OnnxRunner(onnx_bytes(model, 128)).run(x.numpy())
    np.testing.assert_allclose(got["box_map"], ref["box_map"].numpy(), atol=1e-4)
    predictor = Predictor(load_artifact(path))
    (pred,) = predictor.predict_paths([film])
    xb = torch.from_numpy(ModelTransform(spec)(np.asarray(Image.open(film), np.float32) / 255.0))[None]
    with torch.inference_mode():
        box_map = model.graph_outputs(xb)["box_map"][0].numpy()
    expected = centre_boxes(box_map, 128, (96, 160), threshold=0.6)
    assert pred.boxes and len(pred.boxes) == len(expected) <= 5
    np.testing.assert_allclose(np.array(pred.boxes), np.array(expected), atol=1e-2)
    from fracdet.modelcard import render_model_card

    card = render_model_card(load_artifact(path))
    assert "box head (CenterNet-style, stride 16, width 8" in card and "centre threshold 0.6" in card
    assert "its region boxes" in card and "are not used: the model has a box head" in card
    with pytest.raises(FracdetError, match="box head"):
        create_model("efficientnet_lite0", pretrained=False, map_stride=32, box_width=8)
    with pytest.raises(ArtifactError, match="centre_threshold"):
        load_artifact(save_artifact(ModelArtifact(architecture="efficientnet_lite0", state_dict=model.state_dict(),
                                                  preprocess=spec, model_config=dict(model.config),
                                                  localisation={"centre_threshold": 1.5}), tmp_path / "bad.fracdet"))


def test_evaluation_ranks_every_proposal_of_the_box_head_beside_the_boxes_it_shows(tmp_path):
    """With the learned maps, a box head's proposals go down to PROPOSAL_FLOOR (a superset of the
    boxes above its threshold), never reach a row, and give evaluate its 'model (all)' AP row."""
    from fracdet.fracturemap import PROPOSAL_FLOOR, centre_boxes
    from fracdet.localisation import PROPOSALS, evaluate_localisation, format_localisation

    model, spec, path, film = _box_head_model(tmp_path, 1, 0.5)
    predictor = Predictor(load_artifact(path))
    (plain,) = predictor.predict_paths([film])
    (pred,) = predictor.predict_paths([film], heatmaps=True)
    assert plain.proposals is None and pred.proposals is not None
    xb = torch.from_numpy(ModelTransform(spec)(np.asarray(Image.open(film), np.float32) / 255.0))[None]
    with torch.inference_mode():
        box_map = model.graph_outputs(xb)["box_map"][0].numpy()
    every = centre_boxes(box_map, 128, (96, 160), threshold=PROPOSAL_FLOOR)
    np.testing.assert_allclose(np.array(pred.proposals), np.array(every), atol=1e-2)
    assert len(pred.proposals) > len(pred.boxes)  # the untrained head's centres sit near 0.5: some below it
    shown = {tuple(np.round(b, 1)) for b in pred.proposals}
    assert all(tuple(np.round(b, 1)) in shown for b in pred.boxes)
    assert "proposals" not in pred.to_row()
    truth = {"film.png": [(10.0, 10.0, 40.0, 30.0)]}

    class Film:
        path = film

    s = evaluate_localisation(predictor, [Film()], truth, [], None, progress=False).summary
    det = s["detection"]
    assert det[PROPOSALS]["n_predicted_boxes"] == len(every) and det["model"]["n_predicted_boxes"] == len(pred.boxes)
    assert PROPOSALS in format_localisation(s)


def test_a_stride_8_box_head_beside_a_stride_16_map_head():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", pretrained=False, map_stride=16, map_width=16, box_width=8,
                         box_stride=8).eval()
    plain = create_model("efficientnet_lite0", pretrained=False, map_stride=16, map_width=16).eval()
    assert set(plain.state_dict()) < set(model.state_dict())  # the map head is the stride-16 one it was
    assert not any(k.startswith("map_head.fine.") for k in model.state_dict())
    x = torch.randn(2, 3, 128, 128)
    with torch.inference_mode():
        ref = model.graph_outputs(x)
    assert ref["fracture_map"].shape == (2, 8, 8) and ref["box_map"].shape == (2, 5, 16, 16)
    got = OnnxRunner(onnx_bytes(model, 128)).run(x.numpy())
    np.testing.assert_allclose(got["box_map"], ref["box_map"].numpy(), atol=1e-4)
    with pytest.raises(FracdetError, match="box_stride"):
        create_model("efficientnet_lite0", pretrained=False, map_stride=16, box_width=8, box_stride=32)


def test_box_head_targets_follow_the_boxes_moved_with_the_image(tmp_path):
    """Training a box head end to end: each film's boxes move with the same draw as the image and
    its mask, and the centre targets sit where the moved box is (without augmentation: exactly
    the targets of the boxes' letterboxed position)."""
    from fracdet.data.boxtargets import centre_targets

    rng = np.random.default_rng(3)
    films = _Films(tmp_path, 16, 3)
    still = BoxDataset(films.samples, ModelTransform(SPEC), films.boxes, box_grid=(8, 8))
    for i in range(4):
        *_, heat, reg, centre = still[i]
        want = centre_targets(films.boxes[films.samples[i].path.name], (64, 96), 64, (8, 8))
        for got, ref in zip((heat, reg, centre), want):
            np.testing.assert_allclose(got.numpy(), ref, atol=1e-6)
    aug = AugmentConfig(rotation=20, translate=0.15, zoom=0.15, hflip=True, brightness=0, contrast=0,
                        blur_p=0, erasing_p=0, noise=0)
    moving = BoxDataset(films.samples, TrainTransform(SPEC, aug), films.boxes, box_grid=(8, 8))
    batch = collate_boxes([moving[(int(rng.integers(1 << 30)), i)] for i in range(len(films.samples))])
    assert len(batch) == 8 and batch[5].shape == (16, 8, 8) and batch[6].shape == (16, 4, 8, 8)
    inside = 0
    for mask, heat, centre in zip(batch[3], batch[5], batch[7]):
        if not mask.any():
            assert not centre.any()  # moved off the input with its box
            continue
        (r, c), = np.argwhere(centre.numpy() > 0)
        assert heat[r, c] == 1.0
        inside += bool(mask[0, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].any())  # the centre cell touches the mask
    assert inside >= 14


def test_train_with_a_box_head_learns_boxes_and_chooses_its_centre_threshold(tmp_path):
    from fracdet.cli import main

    coco = _blob_folder(tmp_path, np.random.default_rng(6), 12)
    common = ["train", str(tmp_path / "data"), "--model", "efficientnet_lite0", "--no-pretrained", "--input-size",
              "64", "--epochs1", "1", "--epochs2", "1", "--batch-size", "8", "--head-hidden", "8", "--no-int8",
              "--accelerator", "cpu", "--devices", "1", "--no-progress", "--boxes", str(coco)]
    assert main([*common, "--out", str(tmp_path / "bad"), "--box-weight", "1"]) != 0  # no map head asked
    assert not (tmp_path / "bad" / "model.fracdet").exists()
    assert main([*common, "--out", str(tmp_path / "bad2"), "--map-weight", "1", "--box-weight", "1",
                 "--box-dense", "1.5"]) != 0  # a Gaussian level outside [0, 1)
    rc = main([*common, "--out", str(tmp_path / "run"), "--map-weight", "1", "--box-weight", "1", "--box-stride", "8",
               "--box-loss", "giou", "--box-dense", "0.3"])
    assert rc == 0
    art = load_artifact(tmp_path / "run" / "model.fracdet")
    assert art.training["box_loss"] == "giou" and art.training["box_dense"] == 0.3
    assert art.model_config["box_width"] == 64 and art.model_config["box_stride"] == 8
    assert 0 < art.localisation["centre_threshold"] < 1 and "validation" in art.localisation["centre_threshold_chosen_on"]
    assert "map50" in art.metrics["localisation"]["val_box_head"]
    [pred] = list(Predictor(art).predict_paths([tmp_path / "data" / "fractured" / "fractured_0.png"]))
    assert pred.boxes is not None and len(pred.boxes) <= 5

"""Localisation scores on hand-made maps and boxes, COCO loading, baselines, and the
evaluation path with a tiny model."""

import json

import numpy as np
import pytest
import torch

from fracdet.errors import FracdetError
from fracdet.localisation import (Tally, bone_map, box_mask, centre_map, energy_in_box, evaluate_localisation,
                                  format_localisation, iou, load_coco_boxes, localisation_figures, localisation_html, peak,
                                  pointing_hit, score_map)
from synth import make_class_folders


def _spot(shape, r, c, value=1.0):
    m = np.zeros(shape, np.float32)
    m[r, c] = value
    return m


def test_pointing_game_hand_computed():
    shape = (100, 200)
    box = [(50.0, 20.0, 30.0, 40.0)]  # x 50..80, y 20..60
    maps = [
        _spot(shape, 30, 60),  # inside: hit
        _spot(shape, 59, 79),  # last pixel inside (centre 79.5, 59.5): hit
        _spot(shape, 30, 83),  # 3.5 px right of the box: hit only with tolerance
        _spot(shape, 90, 150),  # far: miss
        np.zeros(shape, np.float32),  # flat: points nowhere, miss
    ]
    hits0 = [pointing_hit(m, box, tolerance=0.0) for m in maps]
    assert hits0 == [True, True, False, False, False]
    tol = 4.0 / 200  # 4 px of the longer side
    hits = [pointing_hit(m, box, tolerance=tol) for m in maps]
    assert hits == [True, True, True, False, False]
    t = Tally()
    for m in maps:
        t.add(score_map(m, box, tolerance=tol))
    assert t.summary()["pointing_game"] == pytest.approx(3 / 5)
    assert t.summary()["n"] == 5
    assert t.summary([True, False, False, True, True])["pointing_game"] == pytest.approx(1 / 3)
    assert peak(maps[0]) == (60.5, 30.5)


def test_pointing_game_with_several_boxes():
    boxes = [(0.0, 0.0, 10.0, 10.0), (80.0, 80.0, 10.0, 10.0)]
    assert pointing_hit(_spot((100, 100), 85, 85), boxes, 0.0)
    assert not pointing_hit(_spot((100, 100), 50, 50), boxes, 0.0)


def test_energy_in_box_hand_computed():
    m = np.ones((10, 10), np.float32)
    assert energy_in_box(m, [(0, 0, 5, 10)]) == pytest.approx(0.5)
    assert energy_in_box(m, [(0, 0, 5, 10), (0, 0, 5, 10)]) == pytest.approx(0.5)  # union, not sum
    assert energy_in_box(m, [(0, 0, 5, 10), (5, 0, 5, 5)]) == pytest.approx(0.75)
    m2 = np.zeros((10, 10), np.float32)
    m2[2, 2], m2[8, 8] = 3.0, 1.0
    assert energy_in_box(m2, [(0, 0, 5, 5)]) == pytest.approx(0.75)
    assert np.isnan(energy_in_box(np.zeros((4, 4), np.float32), [(0, 0, 2, 2)]))


def test_box_mask_uses_pixel_centres():
    mask = box_mask((10, 10), [(1.4, 2.6, 3.2, 1.0)])  # x 1.4..4.6 → centres 1.5..4.5; y 2.6..3.6 → 3.5
    assert mask.sum() == 4 and mask[3, 1:5].all()
    assert box_mask((5, 5), [(-3, -3, 100, 100)]).all()


def test_iou_hand_computed():
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    hm = np.zeros((50, 50), np.float32)
    hm[10:20, 10:30] = 1.0  # derived box (10, 10, 20, 10)
    s = score_map(hm, [(10, 10, 10, 10), (40, 40, 5, 5)])
    assert s["iou"] == pytest.approx(0.5) and s["pointing_game"] == 1.0 and s["energy_in_box"] == pytest.approx(0.5)


def test_load_coco_boxes(tmp_path):
    coco = {"images": [{"id": 1, "file_name": "sub/a.jpg", "width": 10, "height": 10},
                       {"id": 2, "file_name": "b.jpg", "width": 10, "height": 10},
                       {"id": 3, "file_name": "c.jpg", "width": 10, "height": 10}],
            "annotations": [{"id": 0, "image_id": 1, "bbox": [1, 2, 3, 4]},
                            {"id": 1, "image_id": 1, "bbox": [5, 5, 2, 2]},
                            {"id": 2, "image_id": 2, "bbox": [0, 0, 0, 4]}]}  # empty box dropped
    p = tmp_path / "boxes.json"
    p.write_text(json.dumps(coco))
    assert load_coco_boxes(p) == {"a.jpg": [(1.0, 2.0, 3.0, 4.0), (5.0, 5.0, 2.0, 2.0)]}
    p.write_text("{}")
    with pytest.raises(FracdetError, match="COCO"):
        load_coco_boxes(p)


def test_baselines():
    c = centre_map((40, 80))
    assert c.shape == (40, 80) and peak(c) in ((40.5, 20.5), (39.5, 19.5), (40.5, 19.5), (39.5, 20.5))
    assert pointing_hit(c, [(35, 15, 10, 10)], 0.0) and not pointing_hit(c, [(0, 0, 10, 10)], 0.0)
    px = np.zeros((20, 30), np.float32)
    px[:, 20:] = 1.0  # bright bone on the right
    b = bone_map(px, (40, 60))
    assert b.shape == (40, 60) and 0 <= b.min() and b.max() == pytest.approx(1.0)
    assert energy_in_box(b, [(40, 0, 20, 40)]) > 0.6


def test_evaluate_localisation_end_to_end(tmp_path):
    from fracdet.artifact import ModelArtifact, save_artifact
    from fracdet.data.layouts import load_dataset
    from fracdet.models import create_model
    from fracdet.inference import Predictor
    from fracdet.transforms import PreprocessSpec

    data = make_class_folders(tmp_path / "data", n_per_class=3)
    torch.manual_seed(0)
    model = create_model("simple_cnn", pretrained=False, head_hidden=16).eval()
    art = ModelArtifact(architecture="simple_cnn", state_dict=model.state_dict(),
                        preprocess=PreprocessSpec(input_size=48, mean=(0.5,) * 3, std=(0.25,) * 3),
                        model_config={"head_hidden": 16, "dropout": 0.3})
    predictor = Predictor.from_path(save_artifact(art, tmp_path / "m.fracdet"), backend="torch")
    samples = [s for s in load_dataset(data).samples if s.label == 1]
    boxes = {"img_1_000.png": [(10.0, 20.0, 30.0, 10.0)], "img_1_002.png": [(0.0, 0.0, 80.0, 96.0)]}
    r = evaluate_localisation(predictor, samples, boxes, ["gradcam", "eigencam"], tmp_path / "loc",
                              n_examples=1, progress=False)
    s = r.summary
    assert s["gradcam"]["n"] == 2 and s["baselines"]["centre"]["n"] == 2
    assert s["area_fraction"] == pytest.approx((300 / 7680 + 1.0) / 2)
    assert s["eigencam"]["pointing_game"] >= 0.5  # the whole-image box always contains the peak
    assert s["baselines"]["centre"]["energy_in_box"] >= 0.5
    assert set(r.examples) == {"gradcam", "eigencam"} and all(len(v) == 1 for v in r.examples.values())
    assert localisation_figures(tmp_path / "loc") == {m: r.examples[m] for m in ("eigencam", "gradcam")}
    assert json.loads((tmp_path / "loc" / "localisation.json").read_text())["summary"]["gradcam"]["n"] == 2
    assert "[centre]" in format_localisation(s)
    frag = localisation_html(s, tmp_path / "loc")
    assert frag.count("<img") == 2 and "baseline: bone" in frag and "data:image/png;base64," in frag
    with pytest.raises(FracdetError, match="no evaluated image"):
        evaluate_localisation(predictor, samples, {"other.png": [(0, 0, 1, 1)]}, ["gradcam"], None, progress=False)


def test_evaluate_with_boxes_writes_localisation(tmp_path):
    from fracdet.artifact import ModelArtifact, save_artifact
    from fracdet.evaluate import evaluate
    from fracdet.models import create_model
    from fracdet.transforms import PreprocessSpec

    data = make_class_folders(tmp_path / "data", n_per_class=3)
    model = create_model("simple_cnn", pretrained=False, head_hidden=16).eval()
    art = ModelArtifact(architecture="simple_cnn", state_dict=model.state_dict(),
                        preprocess=PreprocessSpec(input_size=48), model_config={"head_hidden": 16, "dropout": 0.3})
    path = save_artifact(art, tmp_path / "m.fracdet")
    coco = {"images": [{"id": 7, "file_name": "img_1_001.png"}, {"id": 8, "file_name": "img_0_001.png"}],
            "annotations": [{"image_id": 7, "bbox": [5, 5, 20, 20]}, {"image_id": 8, "bbox": [5, 5, 20, 20]}]}
    (tmp_path / "boxes.json").write_text(json.dumps(coco))
    r = evaluate(data, path, out_dir=tmp_path / "ev", boxes=tmp_path / "boxes.json", cam_methods=["gradcam"])
    loc = json.loads((tmp_path / "ev" / "metrics.json").read_text())["localisation"]
    assert loc["gradcam"]["n"] == 1  # only the fractured image with a box
    assert set(loc["baselines"]) == {"centre", "bone"} and r.metrics["localisation"]["gradcam"]["n"] == 1
    assert (tmp_path / "ev" / "localisation" / "examples" / "img_1_001.gradcam.png").is_file()


def test_box_detection_over_fractured_and_normal_films(tmp_path):
    """mAP50 and sensitivity at 1 FP/film from CAM boxes, the centre box and the model's own boxes."""
    from pathlib import Path

    from synth import tiny_model_file

    from fracdet.artifact import load_artifact

    from fracdet.data.layouts import load_dataset
    from fracdet.inference import Predictor

    class BoxingPredictor(Predictor):
        """A model with a box output: each film's true box (score .9) and a false one (score .1)."""

        def _results(self, outputs, items, *rest, **kw):
            preds = super()._results(outputs, items, *rest, **kw)
            for p in preds:
                x, y, w, h = truth.get(Path(p.path).name, [(0, 0, 0, 0)])[0]
                p.boxes = ([(x, y, x + w, y + h, 0.9)] if w else []) + [(70, 0, 80, 10, 0.1)]
            return preds

    data = make_class_folders(tmp_path / "data", n_per_class=3)
    samples = load_dataset(data).samples
    fractured = [s for s in samples if s.label == 1]
    normal = [s for s in samples if s.label == 0]
    truth = {"img_1_000.png": [(10.0, 20.0, 30.0, 10.0)], "img_1_002.png": [(0.0, 0.0, 80.0, 96.0)]}
    predictor = BoxingPredictor(load_artifact(tiny_model_file(tmp_path)), backend="torch")
    s = evaluate_localisation(predictor, fractured, truth, ["gradcam"], tmp_path / "loc", n_examples=0,
                              progress=False, negatives=normal).summary
    assert s["settings"]["n_images"] == 2 and s["settings"]["n_normal_films"] == 3
    # every film's boxes are kept for `fracdet compare`: true boxes, and each source's scored boxes
    films = {Path(f["path"]).name: f for f in json.loads((tmp_path / "loc" / "detections.json").read_text())["films"]}
    assert len(films) == 5 and films["img_1_000.png"]["true"] == [[10.0, 20.0, 40.0, 30.0]]
    assert films["img_1_000.png"]["boxes"]["model"] == [[10.0, 20.0, 40.0, 30.0, 0.9], [70.0, 0.0, 80.0, 10.0, 0.1]]
    assert films["img_0_000.png"]["true"] == [] and set(films["img_0_000.png"]["boxes"]) == {"gradcam", "centre", "model"}
    det = s["detection"]
    assert set(det) == {"gradcam", "model"} and det["gradcam"]["n_films"] == 5 and det["gradcam"]["n_true_boxes"] == 2
    # the model's boxes: both true boxes ranked first, then 5 false ones (one per film) → AP 1, sens@1FP 1
    assert det["model"]["map50"] == pytest.approx(1.0) and det["model"]["sensitivity_at_1fp"] == 1.0
    assert det["model"]["n_predicted_boxes"] == 7 and det["model"]["map50_boxed"] == pytest.approx(1.0)
    assert det["model"]["ci"]["map50"]["low"] == det["model"]["ci"]["map50"]["high"] == 1.0  # every resample: perfect
    centre = s["detection_baselines"]["centre"]
    assert centre["n_predicted_boxes"] == 5 and 0.0 <= centre["map50"] <= 1.0
    # the whole-film box has IoU 0.25 with the centre box: a miss; so at most one of two boxes is found
    assert centre["sensitivity_at_1fp"] <= 0.5
    text = format_localisation(s)
    assert "mAP50" in text and "[centre]" in text and "model" in text and "[1.000, 1.000]" in text
    assert "fx only" in text
    frag = localisation_html(s, tmp_path / "none")
    assert "box mAP50" in frag and "baseline: centre" in frag and "fractured films only" in frag


def test_the_model_card_gives_box_scores_with_their_interval_when_the_evaluation_has_one():
    from fracdet.modelcard import _detection

    d = {"map50": 0.1, "sensitivity_at_1fp": 0.2,
         "ci": {"map50": {"low": 0.05, "high": 0.15}, "sensitivity_at_1fp": {"low": 0.1, "high": 0.3}}}
    assert _detection({"detection": {"model": d}}, "model") == "0.100 [0.050, 0.150] | 0.200 [0.100, 0.300]"
    old = {k: v for k, v in d.items() if k != "ci"}  # an evaluation from before the intervals
    assert _detection({"detection": {"model": old}}, "model") == "0.100 | 0.200"
    assert _detection({}, "model") == "– | –"

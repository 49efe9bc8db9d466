"""CAM heatmaps: size, range, alignment with the original image (letterbox undone), the
model's own CAM layer, ensembles, the "look here" box, overlays and the CLI/API paths."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fracdet.artifact import ModelArtifact, save_artifact
from fracdet.errors import FracdetError
from fracdet.explain import (METHODS, cam_at_input, cam_layer_of, heatmaps, letterbox_window, method_name,
                             render_overlay, save_overlay, top_box, unletterbox)
from fracdet.io.images import XRay
from fracdet.models import create_model
from fracdet.inference import Predictor
from fracdet.transforms import PreprocessSpec, build_transforms, resize_to_input
from synth import write_image

S = 64  # model input of the synthetic models
QUADS = {"tl": (0, 0), "tr": (0, 1), "bl": (1, 0), "br": (1, 1)}


class QuadrantNet(nn.Module):
    """A model whose logit depends only on one quadrant of its input: the input is zeroed
    outside the quadrant, then conv → ReLU (the CAM layer) → mean pool → positive linear."""

    def __init__(self, quadrant: str, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        r, c = QUADS[quadrant]
        mask = torch.zeros(1, 1, S, S)
        mask[..., r * S // 2:(r + 1) * S // 2, c * S // 2:(c + 1) * S // 2] = 1
        self.register_buffer("mask", mask)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.copy_(torch.randn(8, 3, 3, 3, generator=g))
        self.fc = nn.Linear(8, 1)
        with torch.no_grad():
            self.fc.weight.copy_(torch.rand(1, 8, generator=g) + 0.5)
        self.spec = SimpleNamespace(cam_layer="features")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x * self.mask)
        return self.fc(a.mean(dim=(2, 3))).squeeze(-1)


class TwoMemberEnsemble(nn.Module):
    """The duck-typed ensemble interface explain relies on: ``members`` and ``weights``."""

    def __init__(self, members, weights) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.weights = list(weights)

    def forward(self, x):
        return sum(w * m(x) for m, w in zip(self.members, self.weights)) / sum(self.weights)


def _texture(h=60, w=90, seed=1):
    """The same random texture everywhere: only the model can make one quadrant special."""
    return np.random.default_rng(seed).uniform(0.2, 1.0, size=(h, w)).astype(np.float32)


def _prepare(pixels):
    t = build_transforms(PreprocessSpec(input_size=S, mean=(0.5,) * 3, std=(0.5,) * 3))
    return torch.from_numpy(t(pixels)[None])


def _quadrant_of(heatmap):
    r, c = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    h, w = heatmap.shape
    return int(r >= h / 2), int(c >= w / 2)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("quadrant", ["tl", "br", "tr"])
def test_map_peaks_in_the_quadrant_the_model_uses(method, quadrant):
    px = _texture()  # 60 × 90: letterboxed with padding above and below
    model = QuadrantNet(quadrant).eval()
    hm = heatmaps(model, _prepare(px), [XRay(pixels=px, path=None, meta={})], method)[0]
    assert hm.shape == px.shape and hm.dtype == np.float32
    assert np.isfinite(hm).all() and hm.min() >= 0.0 and hm.max() == pytest.approx(1.0)
    assert _quadrant_of(hm) == QUADS[quadrant]
    r, c = QUADS[quadrant]
    inside = hm[r * 30:(r + 1) * 30, c * 45:(c + 1) * 45]
    if method != "eigencam":  # gradient and score maps are zero where the model does not look
        assert inside.sum() > 0.9 * hm.sum()


def test_heatmap_is_at_original_size_when_decoded_smaller():
    px = _texture(40, 30)
    meta = {"original_size": (300, 400)}  # (W, H) of the file; pixels were decoded at 1/10
    hm = heatmaps(QuadrantNet("bl").eval(), _prepare(px), [XRay(pixels=px, path=None, meta=meta)], "gradcam")[0]
    assert hm.shape == (400, 300)
    assert _quadrant_of(hm) == (1, 0)


def test_unletterbox_inverts_the_letterbox():
    h, w = 50, 120
    yy, xx = np.mgrid[0:h, 0:w]
    img = (xx / (w - 1)).astype(np.float32)  # a left→right ramp
    boxed = resize_to_input(img, S)[0]
    top, left, nh, nw = letterbox_window(h, w, S)
    assert (top, left, nh, nw) == (18, 0, 27, 64)  # (64 - 27) // 2 = 18
    assert boxed[:top].max() == 0 and boxed[top + nh:].max() == 0  # the padding
    back = unletterbox(boxed, (h, w))
    assert back.shape == (h, w)
    assert np.abs(back - img).mean() < 0.03  # padding cropped, nothing shifted


def test_every_registered_model_names_its_cam_layer():
    from fracdet.models import list_models
    from fracdet.models.registry import get_spec

    for name in list_models():
        spec = get_spec(name)
        assert spec.cam_layer.startswith("backbone."), name
    model = create_model("simple_cnn", pretrained=False).eval()
    assert cam_layer_of(model) is model.get_submodule("backbone.block4")
    with pytest.raises(FracdetError, match="not found"):
        cam_layer_of(model, "backbone.nope")


@pytest.mark.slow
def test_every_registered_model_gives_a_heatmap():
    from fracdet.models import list_models

    px = _texture(70, 50)
    for name in list_models():
        model = create_model(name, pretrained=False).eval()
        size = model.spec.input_size
        x = build_transforms(PreprocessSpec(input_size=size))(px)[None]
        hm = heatmaps(model, x, [XRay(pixels=px, path=None, meta={})], "gradcam")[0]
        assert hm.shape == (70, 50) and np.isfinite(hm).all() and 0 <= hm.min() <= hm.max() <= 1, name


def test_ensemble_map_is_the_weighted_mean_of_member_maps():
    px = _texture()
    a, b = QuadrantNet("tl", seed=1).eval(), QuadrantNet("br", seed=2).eval()
    x = _prepare(px)
    ens = TwoMemberEnsemble([a, b], [3.0, 1.0])
    for method in ("gradcam", "eigencam"):
        got = cam_at_input(ens, x, method)
        want = 0.75 * cam_at_input(a, x, method) + 0.25 * cam_at_input(b, x, method)
        np.testing.assert_allclose(got, want, atol=1e-6)
    hm = heatmaps(ens, x, [XRay(pixels=px, path=None, meta={})], "gradcam")[0]
    assert _quadrant_of(hm) == (0, 0)  # the heavier member's quadrant
    assert hm[30:, 45:].max() > 0.2  # the lighter member still shows


def test_method_names():
    assert method_name("Grad-CAM++") == "gradcam++" and method_name("EIGENCAM") == "eigencam"
    with pytest.raises(FracdetError, match="choose from"):
        method_name("lime")


def test_top_box_is_the_largest_hot_region():
    hm = np.zeros((40, 60), np.float32)
    hm[5:9, 5:9] = 1.0  # small, hottest
    hm[20:30, 30:50] = 0.8  # large, above half the peak
    hm[0:2, 55:60] = 0.3  # below the threshold
    assert top_box(hm, 0.5) == (30.0, 20.0, 20.0, 10.0)
    assert top_box(hm, 0.9) == (5.0, 5.0, 4.0, 4.0)
    assert top_box(np.zeros((5, 5), np.float32)) is None


def test_overlay_is_a_png_at_original_size_with_boxes(tmp_path):
    px = _texture(120, 90)
    hm = np.zeros((240, 180), np.float32)  # original size: twice the decoded pixels
    hm[50:100, 60:120] = 1.0
    path = save_overlay(tmp_path / "o.png", px, hm, text="P(fracture) 0.90 -> fractured", method="gradcam",
                        box=top_box(hm), true_boxes=[(10, 10, 40, 30)])
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.size[0] == 180 and im.size[1] > 240  # image + legend band
        arr = np.asarray(im)
    assert tuple(arr[10, 30]) == (0, 230, 0)  # true box edge in green
    assert tuple(arr[50, 90]) == (0, 200, 255)  # derived box edge in cyan
    assert arr[240:].max() > 0  # legend drawn
    img = render_overlay(px, np.zeros((120, 90), np.float32))
    assert np.abs(np.asarray(img)[:120, :, 0] / 255.0 - px).max() < 0.01  # cold map: plain radiograph


# ---------------------------------------------------------------- API and CLI
def _artifact(tmp_path):
    torch.manual_seed(0)
    model = create_model("simple_cnn", pretrained=False, head_hidden=16, dropout=0.1).eval()
    art = ModelArtifact(architecture="simple_cnn", state_dict=model.state_dict(),
                        preprocess=PreprocessSpec(input_size=48, mean=(0.5,) * 3, std=(0.25,) * 3),
                        model_config={"head_hidden": 16, "dropout": 0.1}, threshold=0.5)
    return save_artifact(art, tmp_path / "m.fracdet")


def test_predictor_returns_heatmaps(tmp_path):
    path = _artifact(tmp_path)
    img = write_image(tmp_path / "imgs" / "a.png", True, 3, size=(96, 80))
    write_image(tmp_path / "imgs" / "b.png", False, 4, size=(64, 100))
    (tmp_path / "imgs" / "bad.png").write_bytes(b"nope")
    pred = Predictor.from_path(path, backend="torch")
    plain = pred.predict(img)
    one = pred.predict(img, heatmap=True, cam_method="gradcam++")
    assert plain.heatmap is None and one.probability == pytest.approx(plain.probability, abs=1e-6)
    assert one.heatmap.shape == (96, 80) and 0 <= one.heatmap.min() and one.heatmap.max() <= 1
    assert "heatmap" not in one.to_row() and one.heatmap is not None
    rows = list(pred.predict_paths([tmp_path / "imgs"], batch_size=2, heatmaps=True))
    shapes = {r.path.rsplit("/", 1)[-1]: (None if r.heatmap is None else r.heatmap.shape) for r in rows}
    assert shapes == {"a.png": (96, 80), "b.png": (64, 100), "bad.png": None}


def test_explain_and_predict_heatmaps_cli(tmp_path, capsys):
    from fracdet.cli import main

    path = _artifact(tmp_path)
    write_image(tmp_path / "imgs" / "a.png", True, 3, size=(96, 80))
    out = tmp_path / "ex"
    rc = main(["explain", str(tmp_path / "imgs"), "--model", str(path), "--out", str(out),
               "--method", "gradcam", "--method", "eigencam", "--box"])
    assert rc == 0
    for m in ("gradcam", "eigencam"):
        hm = np.load(out / f"a.{m}.npy")
        assert hm.shape == (96, 80) and np.isfinite(hm).all() and hm.min() >= 0 and hm.max() <= 1
        with Image.open(out / f"a.{m}.png") as im:
            assert im.format == "PNG" and im.size[0] == 80
    recs = json.loads((out / "explanations.json").read_text())
    assert [r["method"] for r in recs] == ["gradcam", "eigencam"] and all("box" in r for r in recs)
    assert len(recs[1]["box"]) == 4  # (a random model's Grad-CAM may be all zero: no box then)
    rc = main(["predict", str(tmp_path / "imgs"), "--model", str(path), "--out", str(tmp_path / "rows.csv"),
               "--heatmaps", "--cam-method", "gradcam++", "--quiet", "--backend", "torch"])
    assert rc == 0
    assert (tmp_path / "rows-heatmaps" / "a.gradcampp.png").is_file()
    assert np.load(tmp_path / "rows-heatmaps" / "a.gradcampp.npy").shape == (96, 80)
    assert "heatmap" not in (tmp_path / "rows.csv").read_text().splitlines()[0]


def test_fracdet_ensemble_net_explains_with_its_members_layers():
    from fracdet.models import ensemble
    torch.manual_seed(0)
    nets = [create_model("simple_cnn", pretrained=False, head_hidden=8).eval() for _ in range(2)]
    members = [ensemble.Member(nets[0], 48, (0.5,) * 3, (0.5,) * 3, 1.0),
               ensemble.Member(nets[1], 32, (0.5,) * 3, (0.25,) * 3, 2.0)]
    ens = ensemble.EnsembleNet(members, [1.0, 3.0]).eval()
    px = _texture(70, 50)
    x = torch.from_numpy(resize_to_input(px, 48)).expand(3, -1, -1)[None]  # the ensemble's own input: [0, 1], 3 channels
    for method in ("gradcam", "eigencam"):
        got = cam_at_input(ens, x, method)
        want = 0.25 * cam_at_input(members[0], x, method) + 0.75 * cam_at_input(members[1], x, method)
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert got.shape == (1, 48, 48) and np.isfinite(got).all()
    hm = heatmaps(ens, x, [XRay(pixels=px, path=None, meta={})], "eigencam")[0]
    assert hm.shape == (70, 50) and 0 <= hm.min() and hm.max() <= 1

"""Tests for fracdet.models: registry, FracNet, freezing, Grad-CAM layer, offline weights."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fracdet.errors import FracdetError, WeightsNotFoundError
from fracdet.models import FracNet, ModelSpec, create_model, get_spec, list_models
from fracdet.models.weights import lite_state_dict, pretrained_available

ALL = list_models()
LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.fixture(scope="module")
def models() -> dict[str, FracNet]:
    torch.manual_seed(0)
    return {n: create_model(n, pretrained=False) for n in ALL}


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


def _bns(module: nn.Module) -> list[_BatchNorm]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def test_registry_contents() -> None:
    expected = {"resnet50", "mobilenetv2", "efficientnet_b0", "vgg16", "densenet121", *LITES, "simple_cnn"}
    assert expected <= set(ALL)
    assert get_spec("efficientnet_lite1").input_size == 240
    assert get_spec("efficientnet_lite2").input_size == 260
    assert get_spec("efficientnet_lite0").mean == (0.5, 0.5, 0.5)
    assert get_spec("simple_cnn").weight_source == "none"
    d = get_spec("resnet50").to_dict()
    assert json.loads(json.dumps(d))["stages"] == list(get_spec("resnet50").stages)
    assert isinstance(get_spec("vgg16"), ModelSpec)


def test_unknown_model_lists_names() -> None:
    with pytest.raises(FracdetError, match="resnet50"):
        get_spec("resnet9000")


@pytest.mark.parametrize("name", ALL)
def test_forward_backward(models: dict[str, FracNet], name: str) -> None:
    model = models[name]
    model.unfreeze_backbone()
    model.train()
    model.zero_grad()
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2,)
    nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 1.0])).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is not None for p in model.head_parameters())
    assert model.config == {"head_hidden": 256, "dropout": 0.3}
    assert model.spec.name == name


@pytest.mark.parametrize("name", ALL)
def test_freeze_unfreeze(models: dict[str, FracNet], name: str) -> None:
    model = models[name]
    model.freeze_backbone()
    model.train()
    assert model.backbone_frozen
    assert not any(p.requires_grad for p in model.backbone_parameters())
    assert all(p.requires_grad for p in model.head_parameters())
    assert not model.backbone.training and model.head.training
    assert not any(bn.training for bn in _bns(model.backbone))

    model.unfreeze_backbone()
    model.train()
    assert not model.backbone_frozen
    assert all(p.requires_grad for p in model.backbone_parameters())
    assert all(bn.training for bn in _bns(model.backbone))


@pytest.mark.parametrize("name", ALL)
def test_unfreeze_from_stage(models: dict[str, FracNet], name: str) -> None:
    model = models[name]
    spec = model.spec
    model.freeze_backbone()
    last = spec.stages[-1]
    model.unfreeze_backbone(from_stage=last)
    model.train()
    params = list(model.backbone.named_parameters())
    first = next(i for i, (n, _) in enumerate(params) if n.startswith(last + "."))
    assert not any(p.requires_grad for _, p in params[:first])
    assert all(p.requires_grad for _, p in params[first:])
    stage_bns = _bns(model.backbone.get_submodule(last))
    early_bns = _bns(model.backbone.get_submodule(spec.stages[0]))
    assert all(bn.training for bn in stage_bns)
    assert not any(bn.training for bn in early_bns)
    with pytest.raises(FracdetError, match=spec.stages[0]):
        model.unfreeze_backbone(from_stage="nope")
    model.unfreeze_backbone()


@pytest.mark.parametrize("name", ALL)
def test_features_head_equals_forward(models: dict[str, FracNet], name: str) -> None:
    model = models[name].eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f = model.features(x)
        assert f.shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(f), model(x))


@pytest.mark.parametrize("name", ALL)
def test_cam_layer_outputs_feature_map(models: dict[str, FracNet], name: str) -> None:
    model = models[name].eval()
    layer = model.get_submodule(model.spec.cam_layer)
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, o: seen.append(o))
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 64))
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0].ndim == 4
    assert seen[0].shape[1] == model.num_features
    for stage in model.spec.stages:
        model.backbone.get_submodule(stage)


def test_head_without_hidden_layer() -> None:
    model = create_model("simple_cnn", pretrained=False, head_hidden=0, dropout=0.1)
    assert [type(m) for m in model.head] == [nn.Dropout, nn.Linear]
    assert model(torch.randn(3, 3, 32, 32)).shape == (3,)


def test_simple_cnn_pretrained_is_random_init() -> None:
    assert not pretrained_available("simple_cnn")
    model = create_model("simple_cnn", pretrained=True)
    assert "random" in model.weights_source


@pytest.mark.parametrize("name", LITES)
def test_lite_weights_load_and_differ(name: str) -> None:
    assert pretrained_available(name)
    torch.manual_seed(0)
    rand = create_model(name, pretrained=False)
    model = create_model(name, pretrained=True)
    assert name[-1] in model.weights_source and "package:" in model.weights_source
    a, b = rand.backbone.state_dict(), model.backbone.state_dict()
    assert a.keys() == b.keys()
    assert not torch.equal(a["conv_stem.weight"], b["conv_stem.weight"])
    assert not torch.equal(a["bn2.running_var"], b["bn2.running_var"])


def _patterns(size: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    checker = ((yy // 16 + xx // 16) % 2).float() * 2 - 1
    stripes = torch.sin(xx.float() / 4)
    disk = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 4) ** 2).float() * 2 - 1
    return torch.stack([checker, stripes, disk])[:, None].expand(-1, 3, -1, -1).contiguous()


@pytest.mark.parametrize("name", LITES)
def test_lite_weights_predict_sensibly_in_full_timm_model(name: str) -> None:
    """Mapped weights load strict into the 1000-class timm model and give confident outputs.

    A constant gray image gives near-uniform outputs even with correct lite0/1 weights,
    so structured patterns are used; random init stays near log(1000) on all of them.
    """
    import timm

    spec = get_spec(name)
    torch.manual_seed(0)
    full = timm.create_model(spec.timm_name, num_classes=1000).eval()
    rand = timm.create_model(spec.timm_name, num_classes=1000).eval()
    full.load_state_dict(lite_state_dict(spec, full.state_dict()), strict=True)
    x = _patterns(spec.input_size)

    def entropy(m: nn.Module) -> float:
        with torch.no_grad():
            p = m(x).softmax(-1)
        ent = -(p * p.clamp_min(1e-12).log()).sum(-1)
        return float(ent.min())

    h, h_rand = entropy(full), entropy(rand)
    assert h < math.log(1000) - 1.5
    assert h < h_rand - 0.5


def test_lite_mapping_rejects_wrong_target() -> None:
    spec = get_spec("efficientnet_lite0")
    other = create_model("efficientnet_lite1", pretrained=False).backbone.state_dict()
    with pytest.raises(FracdetError, match="does not match|expects"):
        lite_state_dict(spec, other)


def test_missing_weights_fail_fast(empty_caches: Path) -> None:
    before = os.environ.get("HF_HUB_OFFLINE")
    assert not pretrained_available("resnet50")
    t0 = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as info:
        create_model("resnet50", pretrained=True)
    assert time.monotonic() - t0 < 10
    msg = str(info.value)
    assert "--no-pretrained" in msg and "resnet50" in msg and "\n" not in msg
    assert os.environ.get("HF_HUB_OFFLINE") == before


def test_hf_cache_is_used(empty_caches: Path) -> None:
    import timm
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg("mobilenetv2_100")
    repo = "models--" + cfg.hf_hub_id.replace("/", "--")
    snap = empty_caches / "hf" / "hub" / repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (empty_caches / "hf" / "hub" / repo / "refs").mkdir()
    (empty_caches / "hf" / "hub" / repo / "refs" / "main").write_text("abc123")
    src = timm.create_model("mobilenetv2_100", num_classes=1000)
    torch.save(src.state_dict(), snap / "pytorch_model.bin")
    assert pretrained_available("mobilenetv2")
    model = create_model("mobilenetv2", pretrained=True)
    assert model.weights_source.startswith("cache:")
    torch.testing.assert_close(model.backbone.conv_stem.weight, src.conv_stem.weight)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_path(tmp_path: Path, suffix: str) -> None:
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("mobilenetv2_100", num_classes=1000)
    path = tmp_path / f"w{suffix}"
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    if suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd}, path)
    model = create_model("mobilenetv2", pretrained=True, weights_path=str(path))
    assert model.weights_source == f"file:{path}"
    for k, v in model.backbone.state_dict().items():
        torch.testing.assert_close(v, sd[k])


def test_weights_path_from_fracnet_state_dict(tmp_path: Path) -> None:
    trained = create_model("simple_cnn", pretrained=False)
    path = tmp_path / "fracnet.pt"
    torch.save(trained.state_dict(), path)
    model = create_model("simple_cnn", weights_path=str(path))
    torch.testing.assert_close(model.backbone.block1[0].weight, trained.backbone.block1[0].weight)


def test_weights_path_wrong_naming(tmp_path: Path) -> None:
    path = tmp_path / "tv.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(FracdetError, match="timm"):
        create_model("mobilenetv2", weights_path=str(path))
    with pytest.raises(WeightsNotFoundError):
        create_model("mobilenetv2", weights_path=str(tmp_path / "missing.pth"))


def test_a_fracdet_model_file_gives_the_backbone_to_start_from(tmp_path):
    """--weights MODEL.fracdet starts a training from that model's (fine-tuned) backbone, e.g.
    the shipped model's at a new input size; another architecture or an ensemble is refused."""
    import numpy as np

    from fracdet.artifact import load_artifact
    from synth import tiny_model_file

    path = tiny_model_file(tmp_path)
    art = load_artifact(path)
    model = create_model("simple_cnn", weights_path=str(path), head_hidden=8)
    for name, value in model.backbone.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), art.state_dict[f"backbone.{name}"])
    assert model.weights_source == f"file:{path}"
    with pytest.raises(FracdetError, match="a simple_cnn model, not efficientnet_lite0"):
        create_model("efficientnet_lite0", weights_path=str(path))

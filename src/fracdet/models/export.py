"""The PyTorch side of a model artifact: rebuild its network, export its ONNX graph, read
format 2 files.  :mod:`fracdet.artifact` reaches this module by name, so that reading a model
and predicting with its stored graphs never imports PyTorch.

A graph exported for an artifact that carries none (an in-memory or format 2 model) is cached
by content digest alone (``$FRACDET_CACHE/onnx`` or ``~/.cache/fracdet/onnx``); a parity check
against PyTorch runs on every export.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fracdet.errors import ArtifactError, FracdetError
from fracdet.fsutil import atomic_path, read_verified, write_verified

log = logging.getLogger(__name__)
PARITY_ATOL = 1e-3
EXPORT_VERSION = 3  # 2: "same" padding frozen to constants (see freeze_same_padding); 3: named outputs


def artifact_digest(artifact: Any) -> str:
    """A content hash of the weights and preprocessing (the ONNX cache key)."""
    h = hashlib.sha256(f"v{EXPORT_VERSION}|{artifact.architecture}|{artifact.model_config}|{artifact.preprocess.to_dict()}".encode())
    for name in sorted(artifact.state_dict):
        h.update(name.encode())
        h.update(np.ascontiguousarray(artifact.state_dict[name]).tobytes())
    return h.hexdigest()[:32]


def _cache_dir() -> Path:
    base = os.environ.get("FRACDET_CACHE")
    root = Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fracdet"
    return root / "onnx"


class _StaticSamePadConv(torch.nn.Sequential):
    """A TF-"same" convolution as constant zero padding (computed once for a fixed input
    size) followed by a plain unpadded convolution with the same weights."""

    def __init__(self, conv: torch.nn.Conv2d, height: int, width: int) -> None:
        from timm.layers.padding import get_same_padding

        kh, kw = conv.weight.shape[-2:]
        ph = get_same_padding(height, kh, conv.stride[0], conv.dilation[0])
        pw = get_same_padding(width, kw, conv.stride[1], conv.dilation[1])
        plain = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,  # type: ignore[arg-type]
                                conv.dilation, conv.groups, conv.bias is not None)  # type: ignore[arg-type]
        plain.load_state_dict(conv.state_dict())
        super().__init__(torch.nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)), plain)


def freeze_same_padding(model: torch.nn.Module, input_size: int) -> torch.nn.Module:
    """A copy of ``model`` in which timm's dynamic "same"-padding convolutions (the TF-ported
    EfficientNet-Lite stride-2 layers) pad by constants computed for ``input_size``.

    Their shape arithmetic otherwise goes into the ONNX graph as ~150 extra nodes, and
    onnxruntime's quantization tools reject that graph.  Outputs are unchanged.
    """
    from timm.layers.conv2d_same import Conv2dSame

    model = copy.deepcopy(model)
    shapes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, inp, n=n: shapes.__setitem__(n, tuple(inp[0].shape[-2:])))
             for n, m in model.named_modules() if isinstance(m, Conv2dSame)]
    if not hooks:
        return model
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
    for name, (height, width) in shapes.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _StaticSamePadConv(getattr(parent, child), height, width))
    return model


class _NamedOutputs(torch.nn.Module):
    """``model.graph_outputs`` (a dict, logit first) as the tuple ``torch.onnx.export`` takes."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.graph_outputs(x)
        return tuple(out[n] for n in self.names)


def graph_output_names(model: torch.nn.Module, input_size: int) -> list[str]:
    """The named outputs ``model`` exports: ``logit`` first, then e.g. ``features`` and
    ``fracture_map`` where the model's ``graph_outputs`` gives them; else ``logit`` alone."""
    if not hasattr(model, "graph_outputs"):
        return ["logit"]
    with torch.inference_mode():
        names = list(model.graph_outputs(torch.zeros(1, 3, input_size, input_size)))
    if not names or names[0] != "logit":
        raise FracdetError(f"{type(model).__name__}.graph_outputs must give 'logit' first, not {names}")
    return names


def onnx_bytes(model: torch.nn.Module, input_size: int, check: bool = True) -> bytes:
    """The ONNX graph of ``model`` (N×3×S×S → N logits, then any other named outputs; dynamic
    batch, fixed S), checked against PyTorch's logits with onnxruntime unless ``check`` is false."""
    model = model.float().eval()
    frozen = freeze_same_padding(model, input_size)
    names = graph_output_names(frozen, input_size)
    graph = _NamedOutputs(frozen, names) if len(names) > 1 else frozen
    x = torch.randn(2, 3, input_size, input_size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (x,), buf, input_names=["image"], output_names=names,
                          dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}}, opset_version=17,
                          dynamo=False)
    data = buf.getvalue()
    if check:
        with torch.inference_mode():
            ref = model(x).float().numpy().reshape(-1)
            wanted = [n for n in ("fracture_map", "box_map") if n in names]
            dense = {n: v for n, v in model.graph_outputs(x).items() if n in wanted} if wanted else {}
        import onnxruntime as ort

        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        outs = dict(zip(names, session.run(None, {"image": x.numpy()})))
        diff = float(np.abs(ref - outs["logit"].reshape(-1)).max())
        if diff > PARITY_ATOL:
            raise FracdetError(f"ONNX export does not match PyTorch (max logit difference {diff:.2e})")
        for name, value in dense.items():
            map_diff = float(np.abs(value.float().numpy() - outs[name]).max())
            if map_diff > PARITY_ATOL:
                raise FracdetError(f"ONNX export does not match PyTorch (max {name} difference {map_diff:.2e})")
        log.info("ONNX export parity: max logit difference %.2e", diff)
    return data


def export_onnx(model: torch.nn.Module, input_size: int, path: str | Path, check: bool = True) -> Path:
    """Export ``model`` with :func:`onnx_bytes` to ``path`` atomically."""
    data = onnx_bytes(model, input_size, check)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def cached_onnx_bytes(artifact: Any) -> bytes:
    """The float32 graph of ``artifact`` for one that carries none, exported once and cached
    under a name made of its content digest alone (never of a field read from a model file)."""
    path = _cache_dir() / f"{artifact_digest(artifact)}.onnx"
    cached = read_verified(path)  # stored with its SHA-256: a damaged entry is exported again
    if cached is not None:
        return cached
    if path.exists():
        log.warning("ONNX cache entry %s is damaged or from an older fracdet; exporting again", path)
    log.info("exporting %s to ONNX (once per model): %s", artifact.architecture, path)
    with torch.inference_mode(False):
        data = onnx_bytes(build_model(artifact), artifact.preprocess.input_size)
    try:
        write_verified(path, data)  # unique temporary name, one rename: concurrent runs may both write
    except OSError as exc:
        log.warning("ONNX cache %s not written (%s)", path, exc)
    return data


def build_model(artifact: Any) -> torch.nn.Module:
    """Re-create the network of ``artifact`` (no pretrained download) with its stored weights.
    An ensemble gives one module computing the fused logit (see :mod:`fracdet.models.ensemble`)."""
    from fracdet.models.factory import create_model

    if artifact.kind == "ensemble":
        from fracdet.models.ensemble import EnsembleNet

        model = EnsembleNet.from_config(artifact.model_config)
    else:
        model = create_model(artifact.architecture, pretrained=False, **artifact.model_config)
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32) if np.issubdtype(v.dtype, np.floating) else np.array(v))
             for k, v in artifact.state_dict.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(
            f"weights do not fit architecture {artifact.architecture!r}: "
            f"{len(missing)} missing, {len(unexpected)} unexpected tensors"
        )
    return model.eval()


def read_format2(path: Path) -> dict[str, Any]:
    """The payload of a format 2 model file (``torch.save`` of plain tensors), read with
    ``weights_only=True`` (no pickled code runs), tensors as numpy arrays and bytes."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or not a torch file
        raise ArtifactError(f"{path}: not a readable fracdet model ({type(exc).__name__})") from None
    if not isinstance(payload, dict):
        raise ArtifactError(f"{path}: not a fracdet model file")
    state = payload.get("state_dict")
    if isinstance(state, dict):
        payload["state_dict"] = {str(k): v.detach().float().numpy() if v.is_floating_point() else v.numpy()
                                 for k, v in state.items() if torch.is_tensor(v)}
    if torch.is_tensor(payload.get("int8_onnx")):
        payload["int8_onnx"] = payload["int8_onnx"].numpy().tobytes()
    return payload

"""ONNX export of an artifact's network and an onnxruntime runner for fast CPU inference.

Measured on a 2-core CPU: onnxruntime ran EfficientNet-Lite0 ~3× faster than PyTorch eager
with channels-last, so it is the default inference backend when ``onnxruntime`` is installed.
The exported graph is cached per artifact content (``$FRACDET_CACHE/onnx`` or
``~/.cache/fracdet/onnx``); a parity check against PyTorch runs on every export.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fracdet.errors import FracdetError
from fracdet.fsutil import atomic_path

log = logging.getLogger(__name__)
PARITY_ATOL = 1e-3
EXPORT_VERSION = 2  # 2: "same" padding frozen to constants (see freeze_same_padding)


def onnx_available() -> bool:
    """True when onnxruntime can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def artifact_digest(artifact: Any) -> str:
    """A content hash of the weights and preprocessing (the ONNX cache key)."""
    h = hashlib.sha1(f"v{EXPORT_VERSION}|{artifact.architecture}|{artifact.model_config}|{artifact.preprocess.to_dict()}".encode())
    for name in sorted(artifact.state_dict):
        t = artifact.state_dict[name]
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


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


def onnx_bytes(model: torch.nn.Module, input_size: int, check: bool = True) -> bytes:
    """The ONNX graph of ``model`` (N×3×S×S → N logits, dynamic batch, fixed S), checked
    against PyTorch's logits with onnxruntime unless ``check`` is false."""
    model = model.float().eval()
    frozen = freeze_same_padding(model, input_size)
    x = torch.randn(2, 3, input_size, input_size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(frozen, (x,), buf, input_names=["image"], output_names=["logit"],
                          dynamic_axes={"image": {0: "batch"}, "logit": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    data = buf.getvalue()
    if check:
        with torch.inference_mode():
            ref = model(x).float().numpy()
        got = OnnxRunner(data)(x.numpy())
        diff = float(np.abs(ref - got).max())
        if diff > PARITY_ATOL:
            raise FracdetError(f"ONNX export does not match PyTorch (max logit difference {diff:.2e})")
        log.info("ONNX export parity: max logit difference %.2e", diff)
    return data


def export_onnx(model: torch.nn.Module, input_size: int, path: str | Path, check: bool = True) -> Path:
    """Export ``model`` with :func:`onnx_bytes` to ``path`` atomically."""
    data = onnx_bytes(model, input_size, check)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def cached_onnx(artifact: Any, model: torch.nn.Module | Callable[[], torch.nn.Module]) -> Path:
    """The ONNX file for ``artifact``, exported on first use and cached by content.

    ``model`` may be a callable returning the network, so a cached export needs no network
    built at all (faster start)."""
    path = _cache_dir() / f"{artifact.architecture}-{artifact_digest(artifact)}.onnx"
    if not path.is_file():
        log.info("exporting %s to ONNX (once per model): %s", artifact.architecture, path)
        net = model if isinstance(model, torch.nn.Module) else model()
        export_onnx(net, artifact.preprocess.input_size, path)
    return path


class OnnxRunner:
    """Runs an exported network with onnxruntime on the CPU: ``runner(batch) -> logits``."""

    def __init__(self, model: str | Path | bytes, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

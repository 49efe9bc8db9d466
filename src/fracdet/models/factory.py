"""Build a :class:`~fracdet.models.classifier.FracNet` by registry name (timm's ``create_model`` shape)."""

from __future__ import annotations

import logging

from fracdet.errors import FracdetError
from fracdet.models.classifier import MAP_STRIDES, FracNet, build_backbone
from fracdet.models.registry import get_spec
from fracdet.models.weights import load_pretrained

logger = logging.getLogger(__name__)


def create_model(
    name: str,
    pretrained: bool = True,
    head_hidden: int = 256,
    dropout: float = 0.3,
    weights_path: str | None = None,
    map_stride: int = 0,
    map_fuse: float = 0.0,
    map_width: int = 64,
    box_width: int = 0,
    box_stride: int = 16,
) -> FracNet:
    """Build a :class:`FracNet` for ``name``; with ``pretrained`` load weights offline.

    Raises :class:`~fracdet.errors.WeightsNotFoundError` when pretrained weights
    cannot be found locally. ``weights_path`` implies ``pretrained``. ``map_stride`` 8, 16 or 32
    adds a fracture-map head, ``box_width`` > 0 a box head beside it (see :class:`FracNet`).
    """
    spec = get_spec(name)
    if head_hidden < 0 or not 0.0 <= dropout < 1.0:
        raise FracdetError(f"invalid head: head_hidden={head_hidden}, dropout={dropout}")
    if (map_stride not in MAP_STRIDES or isinstance(map_fuse, bool) or not 0.0 <= float(map_fuse) <= 1.0
            or isinstance(map_width, bool) or not isinstance(map_width, int) or not 1 <= map_width <= 1024):
        raise FracdetError(f"invalid map head: map_stride={map_stride!r} (one of {MAP_STRIDES}), "
                           f"map_fuse={map_fuse!r} (0 to 1), map_width={map_width!r} (1 to 1024)")
    if isinstance(box_width, bool) or not isinstance(box_width, int) or not 0 <= box_width <= 1024:
        raise FracdetError(f"invalid box head: box_width={box_width!r} (0 to 1024)")
    backbone, num_features = build_backbone(spec)
    model = FracNet(backbone, num_features, spec, head_hidden=head_hidden, dropout=dropout,
                    map_stride=int(map_stride), map_fuse=float(map_fuse), map_width=map_width, box_width=box_width,
                    box_stride=box_stride)
    if pretrained or weights_path is not None:
        model.weights_source = load_pretrained(model, spec, weights_path)
    logger.info("created %s (%s)", name, model.weights_source)
    return model

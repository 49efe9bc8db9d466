"""Build a :class:`~fracdet.models.classifier.FracNet` by registry name (timm's ``create_model`` shape)."""

from __future__ import annotations

import logging

from fracdet.errors import FracdetError
from fracdet.models.classifier import FracNet, build_backbone
from fracdet.models.registry import get_spec
from fracdet.models.weights import load_pretrained

logger = logging.getLogger(__name__)


def create_model(
    name: str,
    pretrained: bool = True,
    head_hidden: int = 256,
    dropout: float = 0.3,
    weights_path: str | None = None,
) -> FracNet:
    """Build a :class:`FracNet` for ``name``; with ``pretrained`` load weights offline.

    Raises :class:`~fracdet.errors.WeightsNotFoundError` when pretrained weights
    cannot be found locally. ``weights_path`` implies ``pretrained``.
    """
    spec = get_spec(name)
    if head_hidden < 0 or not 0.0 <= dropout < 1.0:
        raise FracdetError(f"invalid head: head_hidden={head_hidden}, dropout={dropout}")
    backbone, num_features = build_backbone(spec)
    model = FracNet(backbone, num_features, spec, head_hidden=head_hidden, dropout=dropout)
    if pretrained or weights_path is not None:
        model.weights_source = load_pretrained(model, spec, weights_path)
    logger.info("created %s (%s)", name, model.weights_source)
    return model

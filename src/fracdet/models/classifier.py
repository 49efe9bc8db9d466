"""FracNet: a feature-map backbone, global average pooling and a binary head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fracdet.errors import FracdetError
from fracdet.models.registry import ModelSpec
from fracdet.models.simple_cnn import SimpleCNN


def build_backbone(spec: ModelSpec) -> tuple[nn.Module, int]:
    """Randomly initialised backbone for ``spec`` and its feature channel count.

    The backbone's ``forward_features`` returns an N x C x h x w feature map.
    Never downloads anything (``pretrained=False``).
    """
    if spec.timm_name is None:
        cnn = SimpleCNN()
        return cnn, cnn.num_features
    import timm

    backbone = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, global_pool="")
    if spec.timm_name.startswith("vgg"):
        # timm's VGG adds a 4096-d ConvMlp (≈100M params) after the conv features: drop it.
        backbone.pre_logits = nn.Identity()
        backbone.head = nn.Identity()
        last_conv = [m for m in backbone.features.modules() if isinstance(m, nn.Conv2d)][-1]
        return backbone, last_conv.out_channels
    return backbone, int(backbone.num_features)


class FracNet(nn.Module):
    """Binary fracture classifier: ``backbone`` → ``pool`` → ``head`` → logits (N,)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        spec: ModelSpec,
        head_hidden: int = 256,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.config: dict[str, Any] = {"head_hidden": head_hidden, "dropout": dropout}
        self.num_features = num_features
        self.backbone_frozen = False
        self.weights_source = "random init"
        self.backbone = backbone
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        if head_hidden > 0:
            self.head = nn.Sequential(
                nn.Linear(num_features, head_hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(head_hidden, 1),
            )
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, 1))

    # -- forward -------------------------------------------------------------
    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output, N x C x h x w."""
        fwd = getattr(self.backbone, "forward_features", None)
        return fwd(x) if fwd is not None else self.backbone(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, N x C (what feature caching stores)."""
        return self.pool(self.feature_map(x))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """Logits (N,) from pooled features."""
        return self.head(f).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.features(x))

    def graph_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the exported graph returns, by name, the logit first: ``logit`` (N) and
        ``features`` (N×C pooled backbone features, e.g. for the out-of-distribution check)."""
        f = self.features(x)
        return {"logit": self.forward_head(f), "features": f}

    # -- parameter groups ----------------------------------------------------
    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    # -- freezing ------------------------------------------------------------
    def freeze_backbone(self) -> None:
        """Stop gradients into the backbone and keep it in eval mode."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone_frozen = True
        self.train(self.training)

    def unfreeze_backbone(self, from_stage: str | None = None) -> None:
        """Unfreeze all of the backbone, or ``from_stage`` and everything after it.

        Parameters are taken in registration (= forward) order, so trailing
        norm/conv layers after the last stage are unfrozen too; earlier ones
        stay frozen, with their BatchNorm kept in eval mode.
        """
        names = [n for n, _ in self.backbone.named_parameters()]
        start = 0
        if from_stage is not None:
            if from_stage not in self.spec.stages:
                raise FracdetError(
                    f"unknown stage {from_stage!r} for {self.spec.name}; "
                    f"stages: {', '.join(self.spec.stages)}"
                )
            prefix = from_stage + "."
            start = next((i for i, n in enumerate(names) if n.startswith(prefix)), -1)
            if start < 0:
                raise FracdetError(f"stage {from_stage!r} has no parameters in {self.spec.name}")
        for i, (_, p) in enumerate(self.backbone.named_parameters()):
            p.requires_grad_(i >= start)
        self.backbone_frozen = False
        self.train(self.training)

    def train(self, mode: bool = True) -> FracNet:
        """Like ``nn.Module.train`` but frozen backbone parts (and their BN) stay in eval."""
        super().train(mode)
        if not mode:
            return self
        if self.backbone_frozen:
            self.backbone.eval()
            return self
        for m in self.backbone.modules():
            if isinstance(m, _BatchNorm):
                params = list(m.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    m.eval()
        return self

"""FracNet: a feature-map backbone, global average pooling and a binary head; optionally a
dense map head (:class:`MapHead`) giving per-cell fracture logits, learned from boxes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
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


MAP_STRIDES = (0, 8, 16, 32)  # 0: no map head


def mid_stage_index(backbone: nn.Module, reduction: int = 16) -> int:
    """Index (into timm's ``feature_info``) of the last backbone stage at ``reduction``."""
    info = getattr(backbone, "feature_info", None)
    found = [i for i, f in enumerate(info or []) if int(f["reduction"]) == reduction]
    if not found or not hasattr(backbone, "forward_intermediates"):
        raise FracdetError(f"a stride-{reduction} map head needs a timm backbone with a stride-{reduction} stage")
    return found[-1]


class MapHead(nn.Module):
    """Per-cell fracture logits (N×h×w) from the final feature map and, when ``mid_channels``,
    a finer stage (FPN-like: the final map reduced, upsampled to the finer grid and added), and
    when ``fine_channels`` too, a finer one still the same way (stride 8 after stride 16)."""

    def __init__(self, channels: int, mid_channels: int = 0, width: int = 64, fine_channels: int = 0) -> None:
        super().__init__()

        def reduce(c: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))

        self.reduce = reduce(channels)
        self.lateral = reduce(mid_channels) if mid_channels else None
        self.fine = reduce(fine_channels) if fine_channels else None
        self.out = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                 nn.ReLU(inplace=True), nn.Conv2d(width, 1, 1))
        nn.init.constant_(self.out[-1].bias, -4.0)  # fractures are rare cells: start near p = 0.02

    def forward(self, final: torch.Tensor, mid: torch.Tensor | None = None,
                fine: torch.Tensor | None = None) -> torch.Tensor:
        y = self.reduce(final)
        for lateral, m in ((self.lateral, mid), (self.fine, fine)):
            if lateral is not None and m is not None:
                y = F.interpolate(y, size=tuple(m.shape[-2:]), mode="nearest") + lateral(m)
        return self.out(y)[:, 0]


class BoxHead(nn.Module):
    """Centre-point box head (CenterNet-style) on the final map and the stride-16 stage (and the
    stride-8 one when ``fine_channels``, FPN-like): per cell of the finest grid a box-centre logit,
    the centre's offset (dy, dx) within the cell and the box's log height and width in cells —
    N×5×h×w (decoded by :func:`fracdet.fracturemap.centre_boxes`)."""

    def __init__(self, channels: int, mid_channels: int, width: int = 64, fine_channels: int = 0) -> None:
        super().__init__()
        self.lat32, self.lat16 = nn.Conv2d(channels, width, 1), nn.Conv2d(mid_channels, width, 1)
        self.lat8 = nn.Conv2d(fine_channels, width, 1) if fine_channels else None
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(width, 5, 1)
        with torch.no_grad():
            self.out.bias[:1].fill_(-4.6)  # a box centre is a rare cell: start near p = 0.01

    def forward(self, final: torch.Tensor, mid: torch.Tensor, fine: torch.Tensor | None = None) -> torch.Tensor:
        y = F.interpolate(self.lat32(final), size=tuple(mid.shape[-2:]), mode="nearest") + self.lat16(mid)
        if self.lat8 is not None and fine is not None:
            y = F.interpolate(y, size=tuple(fine.shape[-2:]), mode="nearest") + self.lat8(fine)
        return self.out(self.body(y))


class FracNet(nn.Module):
    """Binary fracture classifier: ``backbone`` → ``pool`` → ``head`` → logits (N,).

    ``map_stride`` 8, 16 or 32 adds a :class:`MapHead` (``fracture_map`` output); ``map_fuse`` α
    makes the image logit ``(1 − α)·head + α·max(map)``; ``box_width`` > 0 (with a stride-16 or
    8 map head) adds a :class:`BoxHead` (``box_map`` output) at ``box_stride`` 16 or 8."""

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        spec: ModelSpec,
        head_hidden: int = 256,
        dropout: float = 0.3,
        map_stride: int = 0,
        map_fuse: float = 0.0,
        map_width: int = 64,
        box_width: int = 0,
        box_stride: int = 16,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.config: dict[str, Any] = {"head_hidden": head_hidden, "dropout": dropout}
        if map_stride:
            self.config.update(map_stride=map_stride, map_fuse=map_fuse, map_width=map_width)
        if box_width:
            if map_stride not in (8, 16):
                raise FracdetError("a box head needs a stride-16 or stride-8 map head (map_stride 16 or 8)")
            if box_stride not in (8, 16):
                raise FracdetError(f"box_stride {box_stride!r}: a box head works at stride 16 or 8")
            self.config.update(box_width=int(box_width), box_stride=int(box_stride))
        self.map_stride, self.map_fuse = int(map_stride), float(map_fuse)
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
        self.map_head: MapHead | None = None
        self._mid_indices: tuple[int, ...] = ()  # the stride-16 stage, then the stride-8 one
        if self.map_stride in (8, 16):
            finest = min(self.map_stride, int(box_stride) if box_width else 16)
            self._mid_indices = tuple(mid_stage_index(backbone, r) for r in (16, 8) if r >= finest)
            chans = [int(backbone.feature_info[i]["num_chs"]) for i in self._mid_indices]  # type: ignore[index]
            self.map_head = MapHead(num_features, chans[0], map_width,
                                    chans[1] if len(chans) > 1 and self.map_stride == 8 else 0)
        elif self.map_stride == 32:
            self.map_head = MapHead(num_features, 0, map_width)
        self.box_head: BoxHead | None = None
        if box_width:
            self.box_head = BoxHead(num_features, chans[0], int(box_width), chans[1] if box_stride == 8 else 0)

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
        if self.map_head is not None:
            return self.graph_outputs(x)["logit"]
        return self.forward_head(self.features(x))

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """The final feature map, then (None without) the stride-16 stage's for a stride-16 or 8
        map head, then the stride-8 stage's for a stride-8 one."""
        if self._mid_indices:
            order = sorted(self._mid_indices)  # timm returns the stages shallow first
            final, mids = self.backbone.forward_intermediates(x, indices=order)
            found = dict(zip(order, mids))
            return (final, *(found[i] for i in self._mid_indices))
        return self.feature_map(x), None

    def heads(self, final: torch.Tensor, mid: torch.Tensor | None = None,
              fine: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every output from backbone maps (what cached-feature training calls)."""
        f = self.pool(final)
        out = {"logit": self.forward_head(f), "features": f}
        if self.map_head is not None:
            fmap = self.map_head(final, mid, fine)
            if self.map_fuse:
                out["logit"] = (1.0 - self.map_fuse) * out["logit"] + self.map_fuse * fmap.amax(dim=(1, 2))
            out["fracture_map"] = fmap
        if self.box_head is not None and mid is not None:
            out["box_map"] = self.box_head(final, mid, fine)
        return out

    def graph_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the exported graph returns, by name, the logit first: ``logit`` (N),
        ``features`` (N×C pooled backbone features, e.g. for the out-of-distribution check) and,
        with a map head, ``fracture_map`` (N×h×w per-cell fracture logits); with a box head,
        ``box_map`` (N×5×h×w: box-centre logit, offset, log size per stride-16 cell)."""
        return self.heads(*self.maps(x))

    # -- parameter groups ----------------------------------------------------
    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """The image head's parameters and the map and box heads', when there are."""
        extra = [p for h in (self.map_head, self.box_head) if h is not None for p in h.parameters()]
        return list(self.head.parameters()) + extra

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

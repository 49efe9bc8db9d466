"""Small from-scratch CNN used by the reference projects, as a FracNet backbone."""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SimpleCNN(nn.Module):
    """Four Conv3x3-BN-ReLU-MaxPool blocks (64, 128, 256, 512 channels).

    ``forward_features`` returns the N x 512 x H/16 x W/16 feature map.
    """

    num_features: int = 512

    def __init__(self, in_chans: int = 3, widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        chans = (in_chans, *widths)
        self.block1 = _block(chans[0], chans[1])
        self.block2 = _block(chans[1], chans[2])
        self.block3 = _block(chans[2], chans[3])
        self.block4 = _block(chans[3], chans[4])
        self.num_features = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block4(self.block3(self.block2(self.block1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

"""Residual U-Net (Zhang, Liu & Wang 2018, "Road extraction by deep residual U-Net"), as in the U-SegNet study."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from medseg.models.blocks import NormKind, ResidualUnit, StridePadded


class ResUNet(StridePadded):
    """U-Net of pre-activation residual units; down-sampling by stride-2 units, up-sampling by transposed convs.

    ``widths = (64, 128, 256, 512)``: an input unit at 64, stride-2 units to 128 and 256, and a stride-2 bridge at
    512; each decoder step up-samples (keeping width), concatenates the skip and applies a residual unit.

    Shapes: ``N x in_channels x H x W -> N x out_channels x H x W`` for any H, W.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        widths: Sequence[int] = (64, 128, 256, 512),
        conv_bias: bool = True,
        norm: NormKind = "batch",
    ) -> None:
        super().__init__()
        widths = list(widths)
        self.stride = 2 ** (len(widths) - 1)
        self.encoder = nn.ModuleList(
            [ResidualUnit(in_channels, widths[0], bias=conv_bias, preactivate=False, norm=norm)])
        for previous, width in zip(widths[:-1], widths[1:]):
            self.encoder.append(ResidualUnit(previous, width, stride=2, bias=conv_bias, norm=norm))
        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        previous = widths[-1]
        for width in reversed(widths[:-1]):
            self.upsamplers.append(nn.ConvTranspose2d(previous, previous, 2, stride=2))
            self.decoder.append(ResidualUnit(previous + width, width, bias=conv_bias, norm=norm))
            previous = width
        self.head = nn.Conv2d(previous, out_channels, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for unit in self.encoder:
            x = unit(x)
            skips.append(x)
        skips.pop()
        for upsample, unit in zip(self.upsamplers, self.decoder):
            x = unit(torch.cat([upsample(x), skips.pop()], dim=1))
        return self.head(x)

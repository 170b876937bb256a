"""U-Net (Ronneberger et al. 2015) and the Enhanced / lightweight U-Net variants, by composition.

One class covers every variant: the unit kind (plain conv or depthwise-separable), optional grouped pointwise convs,
squeeze-and-excitation after every block, and spatial attention on the encoder's skip outputs.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from medseg.models.blocks import NormKind, StridePadded, UnitKind, UnitStack


class UNet(StridePadded):
    """Encoder/decoder with max-pool down-sampling, transposed-conv up-sampling and concatenated skips.

    Args:
        in_channels, out_channels: image channels and logit channels (1 = binary).
        widths: one width per level; the last is the bottleneck (``len(widths) - 1`` poolings).
        unit: ``"conv"`` (conv-BN-ReLU) or ``"dw"`` (depthwise-separable) for every block.
        groups: groups of the pointwise convs of ``dw`` units (the first block is never grouped).
        se_reduction: if set, squeeze-and-excitation with this reduction after every block.
        spatial_attention: a 7x7 spatial-attention gate on the output of every encoder block but the bottleneck.
        conv_bias: bias on the 3x3 (or pointwise) convs.
        norm: ``"batch"`` (the papers) or ``"instance"``.

    Shapes: ``N x in_channels x H x W -> N x out_channels x H x W`` for any H, W.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        widths: Sequence[int] = (64, 128, 256, 512, 1024),
        unit: UnitKind = "conv",
        groups: int = 1,
        se_reduction: int | None = None,
        spatial_attention: bool = False,
        conv_bias: bool = True,
        norm: NormKind = "batch",
    ) -> None:
        super().__init__()
        widths = list(widths)
        self.stride = 2 ** (len(widths) - 1)
        self.encoder = nn.ModuleList()
        previous = in_channels
        for level, width in enumerate(widths):
            is_bottleneck = level == len(widths) - 1
            self.encoder.append(
                UnitStack(
                    [previous, width, width],
                    kind=unit,
                    bias=conv_bias,
                    groups=groups if level > 0 else 1,
                    se_reduction=se_reduction,
                    spatial_attention=spatial_attention and not is_bottleneck,
                    norm=norm,
                )
            )
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upsamplers.append(nn.ConvTranspose2d(previous, width, 2, stride=2))
            self.decoder.append(
                UnitStack([2 * width, width, width], kind=unit, bias=conv_bias, groups=groups,
                          se_reduction=se_reduction, norm=norm)
            )
            previous = width
        self.head = nn.Conv2d(previous, out_channels, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.encoder):
            if level:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()
        for upsample, block in zip(self.upsamplers, self.decoder):
            x = block(torch.cat([skips.pop(), upsample(x)], dim=1))
        return self.head(x)

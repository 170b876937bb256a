"""SegNet (Badrinarayanan et al. 2017) and U-SegNet (Kumar et al. 2018) with 0-3 skips, plain or residual encoder."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from medseg.models.blocks import ConvNormAct, NormKind, StridePadded, UnitKind, make_unit


def max_unpool2x(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Max-unpooling by 2: each value goes back to the position its max-pool index names, zeros elsewhere.

    ``N x C x h x w`` (values and per-plane flat indices) -> ``N x C x 2h x 2w``. Same result as ``MaxUnpool2d(2)``
    on inputs of even size, written as a scatter so that it traces and exports to ONNX.
    """
    n, c, h, w = x.shape
    out = x.new_zeros((n, c, 4 * h * w))
    return out.scatter(2, indices.flatten(2), x.flatten(2)).view(n, c, 2 * h, 2 * w)


class SegNet(StridePadded):
    """VGG-style encoder with max-pooling whose indices drive max-unpooling in a mirrored decoder.

    Args:
        widths, convs_per_level: the encoder; SegNet is ``(64, 128, 256, 512, 512)`` x ``(2, 2, 3, 3, 3)``,
            U-SegNet keeps the first three levels (no bottleneck).
        skips: the last ``skips`` decoder blocks (the highest-resolution ones) concatenate the unpooled map with the
            encoder's pre-pool map before their convs (U-SegNet); 0 gives SegNet.
        encoder_unit: ``"conv"`` (conv-BN-ReLU) or ``"residual"`` (pre-activation residual units: Residual U-SegNet).

    Decoder blocks keep their input width until their last conv; the final conv is a plain 3x3 conv to the logits.
    Shapes: ``N x in_channels x H x W -> N x out_channels x H x W`` for any H, W.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        widths: Sequence[int] = (64, 128, 256, 512, 512),
        convs_per_level: Sequence[int] = (2, 2, 3, 3, 3),
        skips: int = 0,
        encoder_unit: UnitKind = "conv",
        conv_bias: bool = True,
        norm: NormKind = "batch",
    ) -> None:
        super().__init__()
        widths, convs_per_level = list(widths), list(convs_per_level)
        if len(widths) != len(convs_per_level):
            raise ValueError("widths and convs_per_level must have the same length")
        if not 0 <= skips <= len(widths):
            raise ValueError(f"skips must be in 0..{len(widths)}, got {skips}")
        self.stride = 2 ** len(widths)
        self.skip_levels = set(range(skips))
        self.encoder = nn.ModuleList()
        previous = in_channels
        for width, n_convs in zip(widths, convs_per_level):
            chain = [previous] + [width] * n_convs
            self.encoder.append(
                nn.Sequential(*[make_unit(encoder_unit, a, b, conv_bias, norm=norm)
                                for a, b in zip(chain[:-1], chain[1:])])
            )
            previous = width
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.decoder = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            first_in = 2 * width if level in self.skip_levels else width
            chain = [first_in] + [width] * (convs_per_level[level] - 1)
            layers: list[nn.Module] = [ConvNormAct(a, b, conv_bias, norm=norm)
                                     for a, b in zip(chain[:-1], chain[1:])]
            if level > 0:
                layers.append(ConvNormAct(chain[-1], widths[level - 1], conv_bias, norm=norm))
            else:
                layers.append(nn.Conv2d(chain[-1], out_channels, 3, padding=1))
            self.decoder.append(nn.Sequential(*layers))

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        pre_pool, indices = [], []
        for block in self.encoder:
            x = block(x)
            pre_pool.append(x)
            x, index = self.pool(x)
            indices.append(index)
        for level, block in zip(reversed(range(len(self.encoder))), self.decoder):
            x = max_unpool2x(x, indices[level])
            if level in self.skip_levels:
                x = torch.cat([x, pre_pool[level]], dim=1)
            x = block(x)
        return x

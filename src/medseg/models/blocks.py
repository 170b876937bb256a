"""Shared building blocks of the zoo: conv units, residual units, depthwise-separable and grouped units,
squeeze-and-excitation, spatial attention, stacks of units, and stride padding.

Every block maps ``N x C_in x H x W`` to ``N x C_out x H x W`` unless its docstring says otherwise.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

UnitKind = Literal["conv", "dw", "residual"]
NormKind = Literal["batch", "instance"]


def make_norm(norm: NormKind, channels: int) -> nn.Module:
    """BatchNorm (the source papers) or affine InstanceNorm (nnU-Net's default; per-sample, so results do not depend
    on how a batch is split across devices). Both have 2 parameters per channel."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"unknown norm {norm!r}; expected batch or instance")


class ConvNormAct(nn.Sequential):
    """3x3 conv -> BatchNorm -> ReLU (the U-Net / SegNet unit)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, kernel_size: int = 3,
                 norm: NormKind = "batch") -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise 3x3 (no bias) -> pointwise 1x1 (optionally grouped) -> BatchNorm -> ReLU.

    ``groups > 1`` gives the grouped pointwise conv of the ultra-light U-Net.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, groups: int = 1,
                 norm: NormKind = "batch") -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=bias),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualUnit(nn.Module):
    """Pre-activation residual unit (ResUNet, Zhang et al. 2018):

    ``BN -> ReLU -> conv3x3(stride) -> BN -> ReLU -> conv3x3`` plus a shortcut ``conv3x3(stride) -> BN``.
    ``preactivate=False`` drops the leading BN/ReLU and the shortcut's BN (the ResUNet input unit).
    Output: ``N x C_out x H/stride x W/stride``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, bias: bool = True, preactivate: bool = True,
        norm: NormKind = "batch",
    ) -> None:
        super().__init__()
        pre = [make_norm(norm, in_channels), nn.ReLU(inplace=False)] if preactivate else []
        self.body = nn.Sequential(
            *pre,
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
        )
        shortcut_norm = [make_norm(norm, out_channels)] if preactivate else []
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias), *shortcut_norm
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class SqueezeExcitation(nn.Module):
    """Channel attention (Hu et al. 2018): GAP -> Linear(C, C/r) -> ReLU -> Linear(C/r, C) -> sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class SpatialAttention(nn.Module):
    """Spatial attention gate (CBAM): channel mean and max -> 7x7 conv (no bias) -> sigmoid -> scale."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


def make_unit(kind: UnitKind, in_channels: int, out_channels: int, bias: bool, groups: int = 1,
              norm: NormKind = "batch") -> nn.Module:
    """One conv unit of the given kind, ``C_in -> C_out`` at the same resolution."""
    if kind == "conv":
        return ConvNormAct(in_channels, out_channels, bias=bias, norm=norm)
    if kind == "dw":
        return DepthwiseSeparableConv(in_channels, out_channels, bias=bias, groups=groups, norm=norm)
    if kind == "residual":
        return ResidualUnit(in_channels, out_channels, bias=bias, norm=norm)
    raise ValueError(f"unknown unit kind {kind!r}; expected conv, dw or residual")


class UnitStack(nn.Sequential):
    """Units chained through ``channels`` (``[c0, c1, ..., cn]`` gives n units), then optional SE and
    spatial attention. ``[c_in, c_out, c_out]`` is the U-Net double conv."""

    def __init__(
        self,
        channels: Sequence[int],
        kind: UnitKind = "conv",
        bias: bool = True,
        groups: int = 1,
        se_reduction: int | None = None,
        spatial_attention: bool = False,
        norm: NormKind = "batch",
    ) -> None:
        layers: list[nn.Module] = [
            make_unit(kind, c_in, c_out, bias, groups, norm) for c_in, c_out in zip(channels[:-1], channels[1:])
        ]
        if se_reduction:
            layers.append(SqueezeExcitation(channels[-1], se_reduction))
        if spatial_attention:
            layers.append(SpatialAttention())
        super().__init__(*layers)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad ``N x C x H x W`` at the bottom/right so H and W divide ``multiple``; returns the original H, W."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x, (height, width)


class StridePadded(nn.Module):
    """Base for networks that need H, W divisible by ``self.stride``: pads the input, crops every output.

    Subclasses implement :meth:`forward_padded`, returning a tensor or (deep supervision) a list of tensors.
    """

    stride: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        padded, (height, width) = pad_to_multiple(x, self.stride)
        out = self.forward_padded(padded)
        if isinstance(out, list):
            return [o[..., :height, :width] for o in out]
        return out[..., :height, :width]

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        raise NotImplementedError

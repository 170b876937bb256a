"""UNet++ (Zhou et al. 2018): nested dense skip pathways, deep supervision, pruned inference."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.blocks import NormKind, StridePadded, UnitStack


class UNetPlusPlus(StridePadded):
    """Nested U-Net: node ``X[i][j] = H([X[i][0], ..., X[i][j-1], Up(X[i+1][j-1])])``.

    Args:
        widths: width of each row i (default ``(32, 64, 128, 256, 512)`` as in the paper's code).
        deep_supervision: 1x1 heads on ``X[0][1..L-1]``. In training mode the model then returns the list of their
            ``L-1`` logit maps (coarsest-path first); in eval mode one map, chosen by ``eval_output``.
        eval_output: ``"last"`` (the ``X[0][L-1]`` head) or ``"mean"`` (mean of all heads) in eval mode.
        prune_depth: ``k`` in ``1..L-1``: in eval mode run only the sub-network that ``X[0][k]`` needs and return
            its head (needs ``deep_supervision``). Weights of the full network are kept, so one trained model can
            be evaluated at every depth by setting ``model.prune_depth``.

    Shapes: ``N x in_channels x H x W -> N x out_channels x H x W`` (or a list of such in training with deep
    supervision) for any H, W.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        deep_supervision: bool = True,
        eval_output: Literal["last", "mean"] = "last",
        prune_depth: int | None = None,
        conv_bias: bool = True,
        norm: NormKind = "batch",
    ) -> None:
        super().__init__()
        widths = list(widths)
        self.levels = len(widths)
        self.stride = 2 ** (self.levels - 1)
        self.deep_supervision = deep_supervision
        if eval_output not in ("last", "mean"):
            raise ValueError(f"eval_output must be 'last' or 'mean', got {eval_output!r}")
        self.eval_output = eval_output
        self.prune_depth = prune_depth
        self.pool = nn.MaxPool2d(2)
        self.nodes = nn.ModuleDict()
        for j in range(self.levels):
            for i in range(self.levels - j):
                if j == 0:
                    in_ch = in_channels if i == 0 else widths[i - 1]
                else:
                    in_ch = widths[i] * j + widths[i + 1]
                self.nodes[f"{i}_{j}"] = UnitStack([in_ch, widths[i], widths[i]], bias=conv_bias, norm=norm)
        n_heads = self.levels - 1 if deep_supervision else 1
        self.heads = nn.ModuleList([nn.Conv2d(widths[0], out_channels, 1) for _ in range(n_heads)])

    @property
    def prune_depth(self) -> int | None:
        return self._prune_depth

    @prune_depth.setter
    def prune_depth(self, depth: int | None) -> None:
        if depth is not None:
            if not self.deep_supervision:
                raise ValueError("prune_depth needs deep_supervision=True (each pruned output needs its own head)")
            if not 1 <= depth <= self.levels - 1:
                raise ValueError(f"prune_depth must be in 1..{self.levels - 1}, got {depth}")
        self._prune_depth = depth

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        depth = self.prune_depth if (self.prune_depth and not self.training) else self.levels - 1
        grid: dict[tuple[int, int], torch.Tensor] = {}
        for i in range(depth + 1):
            grid[i, 0] = self.nodes[f"{i}_0"](x if i == 0 else self.pool(grid[i - 1, 0]))
            # Every node on the anti-diagonal i + j == i becomes computable once X[i][0] exists.
            for j in range(1, i + 1):
                row = i - j
                up = F.interpolate(grid[row + 1, j - 1], scale_factor=2.0, mode="bilinear", align_corners=False)
                grid[row, j] = self.nodes[f"{row}_{j}"](torch.cat([*(grid[row, k] for k in range(j)), up], dim=1))
        if not self.deep_supervision:
            return self.heads[0](grid[0, depth])
        if self.training:
            return [head(grid[0, j]) for j, head in enumerate(self.heads, start=1)]
        if self.prune_depth or self.eval_output == "last":
            return self.heads[depth - 1](grid[0, depth])
        return torch.stack([head(grid[0, j]) for j, head in enumerate(self.heads, start=1)]).mean(dim=0)

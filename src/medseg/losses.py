"""Segmentation losses. Every loss takes logits ``N x K x H x W`` (never probabilities), a mask ``N x H x W`` of
class ids (binary: {0, 1}) and an optional region ``N x H x W`` (bool) outside which pixels are ignored.

``K == 1`` means binary (sigmoid); ``K > 1`` means multi-class (softmax).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import MedsegError


def _region_mean(per_pixel: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``N x H x W`` values over the region (all pixels if None)."""
    if region is None:
        return per_pixel.mean()
    weight = region.to(per_pixel.dtype)
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)


class BCELoss(nn.Module):
    """Binary cross-entropy on logits ``N x 1 x H x W`` (the U-Net paper's pixel-wise loss)."""

    def forward(self, logits: torch.Tensor, mask: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
        if logits.shape[1] != 1:
            raise ValueError("BCELoss expects 1 output channel; use CELoss for multi-class")
        target = (mask == 1).to(logits.dtype)
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
        return _region_mean(per_pixel, region)


class CELoss(nn.Module):
    """Multi-class cross-entropy on logits ``N x K x H x W``, K > 1."""

    def forward(self, logits: torch.Tensor, mask: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
        per_pixel = F.cross_entropy(logits, mask.long(), reduction="none")
        return _region_mean(per_pixel, region)


class DiceLoss(nn.Module):
    """Soft Dice loss ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)``.

    Args:
        smooth: ``s``, added to numerator and denominator (keeps empty masks finite; an empty prediction on an
            empty mask scores 1).
        batch: sum over the whole batch (batch-global Dice, stable for small foregrounds) or per image then mean.
        include_background: multi-class only; include class 0 in the mean over classes.
    """

    def __init__(self, smooth: float = 1.0, batch: bool = True, include_background: bool = False) -> None:
        super().__init__()
        self.smooth = smooth
        self.batch = batch
        self.include_background = include_background

    def forward(self, logits: torch.Tensor, mask: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
        n_classes = logits.shape[1]
        if n_classes == 1:
            probs = torch.sigmoid(logits)
            target = (mask == 1).to(logits.dtype)[:, None]
        else:
            probs = torch.softmax(logits, dim=1)
            target = F.one_hot(mask.long(), n_classes).permute(0, 3, 1, 2).to(logits.dtype)
        if region is not None:
            weight = region.to(logits.dtype)[:, None]
            probs, target = probs * weight, target * weight
        dims = (0, 2, 3) if self.batch else (2, 3)
        intersection = (probs * target).sum(dims)
        denominator = probs.sum(dims) + target.sum(dims)
        dice = (2 * intersection + self.smooth) / (denominator + self.smooth)
        if n_classes > 1 and not self.include_background:
            dice = dice[..., 1:]
        return 1 - dice.mean()


class WeightedSum(nn.Module):
    """``sum_i w_i * loss_i`` of losses sharing the ``(logits, mask, region)`` signature."""

    def __init__(self, terms: Sequence[tuple[float, nn.Module]]) -> None:
        super().__init__()
        self.weights = [float(w) for w, _ in terms]
        self.terms = nn.ModuleList([loss for _, loss in terms])

    def forward(self, logits: torch.Tensor, mask: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
        return sum(w * loss(logits, mask, region) for w, loss in zip(self.weights, self.terms))


class DeepSupervisionLoss(nn.Module):
    """Applies ``loss`` to each output of a deep-supervision list and sums them with normalised weights.

    ``weights``: ``"equal"`` (UNet++), ``"halving"`` (the last, finest output weighs most, each earlier one half
    of the next, as in nnU-Net), or explicit numbers. A single tensor passes straight to ``loss``.
    """

    def __init__(self, loss: nn.Module, weights: Literal["equal", "halving"] | Sequence[float] = "equal") -> None:
        super().__init__()
        self.loss = loss
        self.weights = weights

    def _weights(self, n: int) -> list[float]:
        if self.weights == "equal":
            raw = [1.0] * n
        elif self.weights == "halving":
            raw = [0.5 ** (n - 1 - i) for i in range(n)]
        else:
            raw = [float(w) for w in self.weights]
            if len(raw) != n:
                raise ValueError(f"{len(raw)} deep-supervision weights for {n} outputs")
        total = sum(raw)
        return [w / total for w in raw]

    def forward(
        self,
        outputs: torch.Tensor | list[torch.Tensor],
        mask: torch.Tensor,
        region: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs.float(), mask, region)
        weights = self._weights(len(outputs))
        return sum(w * self.loss(out.float(), mask, region) for w, out in zip(weights, outputs))


LOSS_NAMES = ("bce", "dice", "bce_dice", "ce", "ce_dice")


def build_loss(
    name: str,
    out_channels: int,
    ce_weight: float = 0.5,
    dice_weight: float = 1.0,
    smooth: float = 1.0,
    batch_dice: bool = True,
    deep_supervision_weights: Literal["equal", "halving"] | Sequence[float] = "equal",
) -> DeepSupervisionLoss:
    """The training loss by name, wrapped for deep supervision (a plain tensor output passes through).

    ``bce_dice`` = ``ce_weight * BCE + dice_weight * Dice`` (UNet++: 0.5 and 1); ``ce_dice`` is its multi-class
    counterpart; ``auto`` is whichever fits ``out_channels``. ``bce``/``bce_dice`` need 1 output channel,
    ``ce``/``ce_dice`` more than 1.
    """
    binary = out_channels == 1
    if name == "auto":
        name = "bce_dice" if binary else "ce_dice"
    if name in ("bce", "bce_dice") and not binary:
        raise MedsegError("loss.name", f"{name!r} needs out_channels=1; use 'ce' or 'ce_dice' for {out_channels} "
                                       "classes")
    if name in ("ce", "ce_dice") and binary:
        raise MedsegError("loss.name", f"{name!r} needs out_channels > 1; use 'bce' or 'bce_dice' for a binary task")
    dice = DiceLoss(smooth=smooth, batch=batch_dice)
    pixel_loss = BCELoss() if binary else CELoss()
    losses: dict[str, nn.Module] = {
        "bce": pixel_loss,
        "ce": pixel_loss,
        "dice": dice,
        "bce_dice": WeightedSum([(ce_weight, pixel_loss), (dice_weight, dice)]),
        "ce_dice": WeightedSum([(ce_weight, pixel_loss), (dice_weight, dice)]),
    }
    if name not in losses:
        raise MedsegError("loss.name", f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    return DeepSupervisionLoss(losses[name], deep_supervision_weights)

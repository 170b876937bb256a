"""Losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.errors import MedsegError
from medseg.losses import BCELoss, CELoss, DeepSupervisionLoss, DiceLoss, build_loss


def test_bce_matches_hand_computation():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    mask = torch.tensor([[[0, 1], [1, 0]]])
    expected = (math.log(2) + math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1)) + math.log(1 + math.exp(3))) / 4
    assert BCELoss()(logits, mask).item() == pytest.approx(expected, rel=1e-6)


def test_bce_region_ignores_pixels_outside():
    logits = torch.tensor([[[[0.0, 50.0]]]])
    mask = torch.tensor([[[0, 0]]])
    region = torch.tensor([[[True, False]]])
    assert BCELoss()(logits, mask, region).item() == pytest.approx(math.log(2), rel=1e-6)


def test_dice_binary_hand_value():
    logits = torch.tensor([[[[100.0, 100.0], [-100.0, -100.0]]]])  # probabilities ~ 1 1 0 0
    mask = torch.tensor([[[1, 0], [1, 0]]])
    # intersection 1, |p| 2, |t| 2 -> dice (2 + 1) / (4 + 1) with smooth 1
    assert DiceLoss(smooth=1.0)(logits, mask).item() == pytest.approx(1 - 3 / 5, abs=1e-6)


def test_dice_batch_global_vs_per_image():
    logits = torch.tensor([[[[100.0, -100.0]]], [[[-100.0, -100.0]]]])
    mask = torch.tensor([[[1, 0]], [[1, 0]]])
    # batch: inter 1, |p| 1, |t| 2 -> (2+0)/(3+0); per image: [1, 0] -> mean 0.5
    assert DiceLoss(smooth=0.0, batch=True)(logits, mask).item() == pytest.approx(1 - 2 / 3, abs=1e-6)
    assert DiceLoss(smooth=1e-9, batch=False)(logits, mask).item() == pytest.approx(0.5, abs=1e-6)


def test_dice_multiclass_excludes_background_by_default():
    big = 100.0
    logits = torch.full((1, 3, 1, 2), -big)
    logits[0, 1, 0, 0] = big
    logits[0, 2, 0, 1] = big
    mask = torch.tensor([[[1, 1]]])
    # class 1: inter 1, |p| 1, |t| 2 -> 2/3; class 2: inter 0, |p| 1, |t| 0 -> 0
    assert DiceLoss(smooth=0.0)(logits, mask).item() == pytest.approx(1 - (2 / 3 + 0) / 2, abs=1e-5)


def test_ce_matches_torch():
    logits = torch.randn(2, 4, 5, 6)
    mask = torch.randint(0, 4, (2, 5, 6))
    assert CELoss()(logits, mask).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, mask).item(), rel=1e-6
    )


def test_bce_dice_is_weighted_sum():
    logits = torch.randn(2, 1, 8, 8)
    mask = torch.randint(0, 2, (2, 8, 8))
    loss = build_loss("bce_dice", 1, ce_weight=0.5, dice_weight=1.0)
    expected = 0.5 * BCELoss()(logits, mask) + DiceLoss()(logits, mask)
    assert loss(logits, mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_deep_supervision_weights():
    outputs = [torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 100.0)]
    mask = torch.ones(1, 2, 2, dtype=torch.long)
    bce0, bce1 = math.log(2), 0.0
    assert DeepSupervisionLoss(BCELoss(), "equal")(outputs, mask).item() == pytest.approx((bce0 + bce1) / 2)
    assert DeepSupervisionLoss(BCELoss(), "halving")(outputs, mask).item() == pytest.approx((0.5 * bce0 + bce1) / 1.5)
    assert DeepSupervisionLoss(BCELoss(), [3, 1])(outputs, mask).item() == pytest.approx(0.75 * bce0)


def test_loss_task_mismatch_is_a_clear_error():
    with pytest.raises(MedsegError, match="ce_dice"):
        build_loss("bce_dice", 3)
    with pytest.raises(MedsegError, match="unknown loss"):
        build_loss("focal", 1)

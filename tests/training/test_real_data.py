"""Slow integration test on real data from ../shared/data (skipped where it is absent)."""

from __future__ import annotations

import pytest

from medseg.config import Config
from medseg.workflow import train
from tests.conftest import shared_dataset


@pytest.mark.slow
def test_isbi_validation_dice_rises_well_above_its_start(tmp_path):
    config = Config()
    config.data.root = str(shared_dataset("isbi2012_em"))
    config.data.patch_size = 128
    config.data.val_fraction = 0.2
    config.model.widths = [8, 16, 32, 64]
    config.train.epochs = 12
    config.train.steps_per_epoch = 10
    config.train.deterministic = True
    config.train.val_time_share = None  # validate after every epoch, to see the curve
    config.train.batch_size = 4
    config.optim.lr = 2e-3
    result = train(config, tmp_path / "run")
    dice = [row.val_dice for row in result.history]
    first, best = dice[0], max(dice)
    # 255 (cell interior) covers ~78% of pixels: predicting all-foreground already gives Dice ~0.87, so the bar
    # is set above that trivial answer. Measured here: 0.0 after epoch 1, 0.78 for a few epochs (near the trivial
    # answer), then 0.88 -> 0.92 by epoch 10.
    assert best > 0.90
    assert best > first + 0.3

"""Learning-rate schedules: warm-up, shapes over progress, plateau steps, state round trip."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.config import OptimConfig
from medseg.training.schedule import LearningRateSchedule


def _schedule(**options) -> LearningRateSchedule:
    return LearningRateSchedule(OptimConfig(**{"lr": 1e-3, "warmup_steps": 0, **options}))


def test_warmup_is_linear_then_the_shape_takes_over():
    schedule = _schedule(warmup_steps=4, schedule="constant")
    assert [schedule.factor(step, 0.0) for step in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])


@pytest.mark.parametrize(("name", "expected"), [
    ("cosine", lambda p: 0.5 * (1 + math.cos(math.pi * p))),
    ("poly", lambda p: (1 - p) ** 0.9),
    ("constant", lambda p: 1.0),
])
def test_shapes_over_progress(name, expected):
    schedule = _schedule(schedule=name)
    for progress in (0.0, 0.25, 0.5, 0.9, 1.0, 1.5):  # progress past the end is clamped
        assert schedule.factor(100, progress) == pytest.approx(expected(min(progress, 1.0)))
    assert schedule.anneals == (name != "constant")


def test_apply_sets_every_parameter_group():
    optimizer = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]},
                                 {"params": [torch.zeros(1, requires_grad=True)]}], lr=1.0)
    lr = _schedule(schedule="cosine").apply(optimizer, 10, 0.5)
    assert lr == pytest.approx(5e-4) and [g["lr"] for g in optimizer.param_groups] == [lr, lr]


def test_plateau_scales_after_patience_and_round_trips():
    schedule = _schedule(schedule="plateau", plateau_patience=1, plateau_factor=0.5)
    for dice in (0.5, 0.6, 0.6, 0.6, 0.55, 0.7, 0.7):
        schedule.on_validation(dice)
    assert schedule.plateau_scale == 0.5  # two non-improvements after 0.6 exceed patience 1 once
    restored = _schedule(schedule="plateau", plateau_patience=1, plateau_factor=0.5)
    restored.load_state_dict(schedule.state_dict())
    assert restored.factor(5, 0.3) == schedule.factor(5, 0.3) == pytest.approx(0.5)

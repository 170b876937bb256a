"""Learning-rate schedules driven by progress: the share of steps done (``--iterations`` / epochs) or the share
of the time budget used (``--budget``), so a budgeted run decays to ~0 exactly at its deadline.

``lr = base_lr * warmup(step) * shape(progress) * plateau_scale``. The clock is injectable so tests run budgeted
schedules on fake time.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

from torch.optim import Optimizer

from medseg.config import OptimConfig


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic clock."""


class WallClock:
    def now(self) -> float:
        return time.perf_counter()


class LearningRateSchedule:
    """Warm-up, then the configured shape of progress in [0, 1]; ``plateau`` multiplies the rate by
    ``plateau_factor`` after more than ``plateau_patience`` validations in a row without a better Dice."""

    def __init__(self, optim: OptimConfig) -> None:
        self.optim = optim
        self.plateau_scale = 1.0
        self.plateau_best = -math.inf
        self.plateau_bad = 0

    @property
    def anneals(self) -> bool:
        """Whether the learning rate reaches ~0 at the end of training."""
        return self.optim.schedule in ("cosine", "poly")

    def factor(self, step: int, progress: float) -> float:
        progress = min(max(progress, 0.0), 1.0)
        warmup = min(1.0, (step + 1) / (self.optim.warmup_steps + 1))
        if self.optim.schedule == "cosine":
            shape = 0.5 * (1 + math.cos(math.pi * progress))
        elif self.optim.schedule == "poly":
            shape = (1 - progress) ** self.optim.poly_power
        else:
            shape = 1.0
        return warmup * shape * self.plateau_scale

    def apply(self, optimizer: Optimizer, step: int, progress: float) -> float:
        """Set the learning rate for the step about to run; returns it."""
        lr = self.optim.lr * self.factor(step, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def on_validation(self, dice: float) -> None:
        if self.optim.schedule != "plateau" or math.isnan(dice):
            return
        if dice > self.plateau_best:
            self.plateau_best, self.plateau_bad = dice, 0
            return
        self.plateau_bad += 1
        if self.plateau_bad > self.optim.plateau_patience:
            self.plateau_scale *= self.optim.plateau_factor
            self.plateau_bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.plateau_scale, "best": self.plateau_best, "bad": self.plateau_bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_scale, self.plateau_best, self.plateau_bad = state["scale"], state["best"], state["bad"]

"""The run state: where a training run is, saved and restored as one object (the resume contract of
``checkpoint.safetensors``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.run.history import HistoryRow, StepRow

NAN = math.nan


@dataclass
class RunState:
    """Everything a resumed run needs besides the weights. ``elapsed`` is training time (steps, validation and
    checkpoints); ``epoch_step`` is non-zero only after an interrupt inside an epoch."""

    epoch: int = 0
    step: int = 0
    epoch_step: int = 0
    elapsed: float = 0.0
    val_seconds: float = 0.0
    val_cost: float = NAN  # duration of the last validation, the estimate for the next
    best_score: float = -1.0  # best smoothed validation Dice
    best_epoch: int = 0
    smoothed_dice: float = NAN
    smoothed_loss: float = NAN  # exponentially smoothed training loss (the loss column of steps.csv)
    history: list[HistoryRow] = field(default_factory=list)
    steps: list[StepRow] = field(default_factory=list)
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    torch_rng: Any = None

    def to_checkpoint(self) -> dict[str, Any]:
        """A mapping of plain values and tensors (see :func:`medseg.run.weights.flatten_state`)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["history"] = [asdict(row) for row in self.history]
        values["steps"] = [asdict(row) for row in self.steps]
        return values

    @classmethod
    def from_checkpoint(cls, values: dict[str, Any], path: Path) -> "RunState":
        names = {f.name for f in fields(cls)}
        if set(values) != names:
            missing, unknown = sorted(names - set(values)), sorted(set(values) - names)
            raise MedsegError(path, f"training state from another medseg version (missing {missing}, "
                                    f"unknown {unknown}); start a new run")
        state = cls(**values)
        state.history = [HistoryRow(**row) for row in values["history"]]
        state.steps = [StepRow(**row) for row in values["steps"]]
        return state

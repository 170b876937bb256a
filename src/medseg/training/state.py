"""The run state: where a training run is, saved and restored as one object (the resume contract of
``checkpoint.safetensors``), and the history row written after each epoch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.files import read_csv

NAN = math.nan


@dataclass
class HistoryRow:
    """One epoch in ``history.csv``. Validation columns are NaN after an epoch that was not validated."""

    epoch: int
    step: int
    lr: float
    train_loss: float
    val_dice: float = NAN
    val_iou: float = NAN
    val_accuracy: float = NAN
    val_seconds: float = 0.0
    data_wait: float = 0.0  # share of the epoch's training time spent waiting for data
    seconds: float = 0.0  # elapsed training time at the end of the epoch

    @property
    def validated(self) -> bool:
        return not math.isnan(self.val_dice)


def read_history(run_dir: Path) -> list[HistoryRow]:
    """The rows of ``RUN_DIR/history.csv``."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        raise MedsegError(path, "not found")
    rows = read_csv(path)
    names = {f.name: f.type for f in fields(HistoryRow)}
    try:
        return [HistoryRow(**{k: (int(v) if names[k] == "int" else float(v or "nan")) for k, v in row.items()})
                for row in rows]
    except (KeyError, ValueError) as exc:
        raise MedsegError(path, f"unexpected history columns or values ({exc})") from None


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
    history: list[HistoryRow] = field(default_factory=list)
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    torch_rng: Any = None

    def to_checkpoint(self) -> dict[str, Any]:
        """A mapping of plain values and tensors (see :func:`medseg.run.weights.flatten_state`)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["history"] = [asdict(row) for row in self.history]
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
        return state

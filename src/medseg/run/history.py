"""What training writes as it goes and others read: the rows of ``history.csv`` and ``steps.csv``, and
``progress.json``."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

from medseg.errors import MedsegError
from medseg.files import read_csv
from medseg.run.folder import RunFolder
from medseg.typed_file import TypedFile

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
    steps_per_second: float = NAN  # the epoch's optimizer steps per second of training (validation excluded)

    @property
    def validated(self) -> bool:
        return not math.isnan(self.val_dice)


@dataclass
class StepRow:
    """One logged optimizer step in ``steps.csv``: the curve of a run however short its epochs."""

    step: int
    seconds: float  # elapsed training time after the step
    loss: float  # exponentially smoothed training loss
    lr: float


@dataclass(frozen=True)
class Progress:
    """``progress.json``: how far a training run is, rewritten as it trains (atomically)."""

    step: int
    total_steps: int | None  # None: trained to a budget
    fraction: float  # the share of the run done: of its steps, or of its budget
    elapsed: float  # seconds of training so far
    seconds_left: float | None  # with a budget: what is left of it
    val_dice: float | None  # the last validation's Dice
    finished: bool  # the run ended and wrote its contract


PROGRESS_FILE = TypedFile(Progress, "training progress")


def read_progress(run_dir: Path) -> Progress | None:
    """``RUN_DIR/progress.json``, or None before the run writes one."""
    path = RunFolder(run_dir).progress
    return PROGRESS_FILE.load(path) if path.is_file() else None


Row = TypeVar("Row", HistoryRow, StepRow)


def read_history(run_dir: Path) -> list[HistoryRow]:
    """The rows of ``RUN_DIR/history.csv``."""
    return _read_rows(RunFolder(run_dir).history, HistoryRow)


def read_steps(run_dir: Path) -> list[StepRow]:
    """The rows of ``RUN_DIR/steps.csv``."""
    return _read_rows(RunFolder(run_dir).steps, StepRow)


def _read_rows(path: Path, row_type: type[Row]) -> list[Row]:
    if not path.is_file():
        raise MedsegError(path, "not found")
    names = {f.name: f.type for f in fields(row_type)}
    try:
        return [row_type(**{k: (int(v) if names[k] == "int" else float(v or "nan")) for k, v in row.items()})
                for row in read_csv(path)]
    except (KeyError, TypeError, ValueError) as exc:
        raise MedsegError(path, f"unexpected {path.name} columns or values ({exc})") from None

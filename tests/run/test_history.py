"""history.csv and steps.csv: rows written as training writes them read back; foreign columns are refused."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest

from medseg.errors import MedsegError
from medseg.files import atomic_write_csv
from medseg.run.folder import RunFolder
from medseg.run.history import HistoryRow, StepRow, read_history, read_steps


def test_rows_round_trip(tmp_path):
    run = RunFolder(tmp_path)
    history = [HistoryRow(1, 4, 1e-3, 0.9), HistoryRow(2, 8, 5e-4, 0.7, 0.6, 0.45, 0.9, 0.5, 0.01, 7.5, 3.2)]
    steps = [StepRow(10, 1.5, 0.8, 1e-3), StepRow(20, 3.25, 0.6, 5e-4)]
    atomic_write_csv(run.history, [asdict(row) for row in history])
    atomic_write_csv(run.steps, [asdict(row) for row in steps])
    read = read_history(tmp_path)
    assert read[1] == history[1] and not read[0].validated and math.isnan(read[0].val_iou)
    assert read_steps(tmp_path) == steps


def test_missing_file_and_foreign_columns_are_errors(tmp_path):
    with pytest.raises(MedsegError, match="not found"):
        read_steps(tmp_path)
    atomic_write_csv(RunFolder(tmp_path).steps, [{"step": 1, "loss": 0.5, "momentum": 0.9}])
    with pytest.raises(MedsegError, match="unexpected steps.csv columns"):
        read_steps(tmp_path)

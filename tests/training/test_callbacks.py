"""Observers: the view they get is read-only; the pause test hook holds the run on its named pipes; the default
observer list."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import pytest

from medseg.config import Config
from medseg.run.history import read_progress
from medseg.training.callbacks import (PAUSE_HOOK, SIGNAL_HOOK, PauseAtStep, ProgressCallback, ProgressFile,
                                       TrainingView)
from medseg.training.trainer import default_callbacks


def _view(step: int, rank: int = 0) -> TrainingView:
    return TrainingView(Config(), Path("run"), rank, step, 0, "/10", "/5", 0.0, 1e-3, 0.5, None, False,
                        lambda count: [])


def test_the_view_cannot_be_changed():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _view(3).step = 4


def _in_thread(function, *args) -> threading.Thread:
    thread = threading.Thread(target=function, args=args, daemon=True)
    thread.start()
    return thread


def test_pause_at_step_holds_the_run_until_resumed(tmp_path):
    os.mkfifo(tmp_path / "paused")
    os.mkfifo(tmp_path / "resume")
    hook = PauseAtStep(f"3:{tmp_path}")
    for other in (_view(2), _view(3, rank=1)):  # another step or rank: no pause (the pipes are never opened)
        thread = _in_thread(hook.on_step_end, other)
        thread.join(10)
        assert not thread.is_alive()
    run = _in_thread(hook.on_step_end, _view(3))
    with open(tmp_path / "paused", encoding="utf-8") as pipe:  # waits for the run to get there
        assert pipe.read() == "paused\n"
    run.join(0.2)
    assert run.is_alive()  # held, reading "resume"
    with open(tmp_path / "resume", "w", encoding="utf-8"):
        pass
    run.join(10)
    assert not run.is_alive()


def test_default_observers_and_test_hooks(monkeypatch):
    config = Config()
    config.train.tensorboard = False
    monkeypatch.delenv(SIGNAL_HOOK, raising=False)
    monkeypatch.delenv(PAUSE_HOOK, raising=False)
    assert [type(c) for c in default_callbacks(config)] == [ProgressCallback, ProgressFile]
    monkeypatch.setenv(PAUSE_HOOK, "7:/tmp/somewhere")
    hook = default_callbacks(config)[-1]
    assert isinstance(hook, PauseAtStep) and (hook.step, hook.folder) == (7, Path("/tmp/somewhere"))


def test_progress_json_follows_a_run_to_its_end(tiny_config, tmp_path):
    from medseg.workflow import train

    seen = []
    train(tiny_config, tmp_path / "run", on_epoch_end=lambda epoch, row: seen.append(read_progress(tmp_path / "run")))
    final = read_progress(tmp_path / "run")
    assert [p.step for p in seen] == [2, 4, 6] and not any(p.finished for p in seen)  # written before the hook
    assert final.finished and final.fraction == 1.0 and final.step == 6 and final.total_steps is None
    assert final.val_dice is not None and final.seconds_left is None

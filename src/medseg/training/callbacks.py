"""Observers of a training run: progress lines, TensorBoard, a function after every epoch, and test hooks that
signal or pause the process at a chosen step. They see a read-only snapshot of the run (:class:`TrainingView`)
and cannot change training: validation, checkpoints and history are the trainer's own steps.

Hooks, in the order the loop calls them: ``on_fit_start``; per epoch ``on_step_end`` after every optimizer step
and ``on_epoch_end`` once the epoch is validated and saved; ``on_interrupt`` when a stop request ends the run early
(its checkpoint saved); ``on_fit_end`` once the run's files are written.
"""

from __future__ import annotations

import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medseg.config import Config
from medseg.log import get_logger, is_interactive
from medseg.run.folder import RunFolder
from medseg.files import atomic_write_json
from medseg.run.history import HistoryRow, Progress
from medseg.training.validation import ValidationPicture
from medseg.visualize import overlay


@dataclass(frozen=True)
class TrainingView:
    """What observers see of a training run when a hook is called: a snapshot that cannot change training."""

    config: Config  # a copy of the run's config
    run_dir: Path
    rank: int
    step: int  # optimizer steps done
    epoch: int  # epochs done
    steps_text: str  # after the step count: "/600", or " (40% of the budget)"
    epochs_text: str  # after the epoch count: "/12", or "" with a budget
    elapsed: float  # seconds of training so far
    lr: float  # the last step's learning rate
    loss: float  # the last step's training loss (NaN before the first)
    row: HistoryRow | None  # on_epoch_end: a copy of the epoch's history row, validation included
    improved: bool  # on_epoch_end: the smoothed validation Dice is the best so far
    pictures: Callable[[int], list[ValidationPicture]]  # the first n validation images, predicted now
    fraction: float = 0.0  # the share of the run done: of its steps, or of its budget

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.run_dir)


class Callback:
    def on_fit_start(self, view: TrainingView) -> None: ...

    def on_step_end(self, view: TrainingView) -> None: ...

    def on_epoch_end(self, view: TrainingView) -> None: ...

    def on_interrupt(self, view: TrainingView) -> None: ...

    def on_fit_end(self, view: TrainingView) -> None: ...


class ProgressCallback(Callback):
    """The one progress style: a tqdm bar per epoch on a terminal, a log line every ``log_every`` steps
    otherwise, and a line per epoch."""

    def __init__(self) -> None:
        self.bar = None
        self.losses: list[float] = []

    def on_step_end(self, view: TrainingView) -> None:
        if not view.is_main:
            return
        self.losses.append(view.loss)
        log_every = view.config.train.log_every
        if is_interactive():
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(desc=f"epoch {view.epoch + 1}", unit="step", leave=False)
            self.bar.update()
            self.bar.set_postfix(loss=f"{np.mean(self.losses[-20:]):.4f}")
        elif view.step % log_every == 0:
            get_logger().info("step %d%s  loss %.4f  lr %.2e", view.step, view.steps_text,
                              np.mean(self.losses[-log_every:]), view.lr)

    def on_epoch_end(self, view: TrainingView) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.losses = []
        row = view.row
        validated = f"  val Dice {row.val_dice:.4f}  IoU {row.val_iou:.4f}" if row.validated else ""
        get_logger().info("epoch %d%s  loss %.4f%s  lr %.2e  %.0fs%s", row.epoch, view.epochs_text, row.train_loss,
                          validated, row.lr, row.seconds, "  *best*" if view.improved else "")


class ProgressFile(Callback):
    """``RUN_DIR/progress.json`` (:class:`~medseg.run.history.Progress`) every ``log_every`` steps, after every
    epoch and at the end: how far the run is, for a watcher in another process (the labelling page)."""

    def __init__(self) -> None:
        self.val_dice: float | None = None

    def on_step_end(self, view: TrainingView) -> None:
        if view.is_main and view.step % view.config.train.log_every == 0:
            self.write(view, finished=False)

    def on_epoch_end(self, view: TrainingView) -> None:
        if view.row.validated:
            self.val_dice = view.row.val_dice
        if view.is_main:
            self.write(view, finished=False)

    def on_fit_end(self, view: TrainingView) -> None:
        if view.is_main:
            self.write(view, finished=True)

    def write(self, view: TrainingView, finished: bool) -> None:
        train = view.config.train
        budget = train.budget_minutes * 60 if train.budget_minutes else None
        total = None if budget else train.iterations
        atomic_write_json(view.run.progress, asdict(Progress(
            view.step, total, round(1.0 if finished else min(view.fraction, 1.0), 4), round(view.elapsed, 2),
            None if budget is None else round(max(budget - view.elapsed, 0.0) * (not finished), 1), self.val_dice,
            finished)))


class TensorBoardCallback(Callback):
    """Scalars (loss, learning rate, validation metrics) and a few validation overlays in ``RUN_DIR/tensorboard``
    (needs the ``tensorboard`` package: ``pip install medseg[tensorboard]``)."""

    def __init__(self, images: int = 3) -> None:
        self.images = images
        self.writer = None

    def on_fit_start(self, view: TrainingView) -> None:
        if view.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(view.run.tensorboard))

    def on_step_end(self, view: TrainingView) -> None:
        if self.writer is not None and view.step % view.config.train.log_every == 0:
            self.writer.add_scalar("train/loss", view.loss, view.step)
            self.writer.add_scalar("train/lr", view.lr, view.step)

    def on_epoch_end(self, view: TrainingView) -> None:
        row = view.row
        if self.writer is None or not row.validated:
            return
        for name in ("dice", "iou", "accuracy"):
            self.writer.add_scalar(f"val/{name}", getattr(row, f"val_{name}"), row.step)
        for picture in view.pictures(self.images):
            self.writer.add_image(f"val/{picture.id}", overlay(picture.image, picture.labels, picture.truth),
                                  row.step, dataformats="HWC")
        self.writer.flush()

    def on_fit_end(self, view: TrainingView) -> None:
        if self.writer is not None:
            self.writer.close()


class EpochFunction(Callback):
    """A plain function ``f(epoch, row)`` called after every epoch (the ``on_epoch_end`` argument of train)."""

    def __init__(self, function: Callable[[int, HistoryRow], None]) -> None:
        self.function = function

    def on_epoch_end(self, view: TrainingView) -> None:
        self.function(view.row.epoch, view.row)


SIGNAL_HOOK = "MEDSEG_TEST_SIGNAL"  # "<step>:<SIGNAL>[:<rank>]", e.g. "5:SIGINT"


class SignalAtStep(Callback):
    """Test hook: after optimizer step ``step`` (on ``rank``), the process sends itself ``signal``. Set through the
    :data:`SIGNAL_HOOK` environment variable, so tests of signals and kills know exactly where they land."""

    def __init__(self, spec: str) -> None:
        parts = spec.split(":")
        self.step, self.signal = int(parts[0]), getattr(signal, parts[1])
        self.rank = int(parts[2]) if len(parts) > 2 else 0

    @classmethod
    def from_environment(cls) -> "SignalAtStep | None":
        spec = os.environ.get(SIGNAL_HOOK)
        return cls(spec) if spec else None

    def on_step_end(self, view: TrainingView) -> None:
        if view.step == self.step and view.rank == self.rank:
            get_logger().warning("test hook: sending %s after step %d", self.signal.name, self.step)
            os.kill(os.getpid(), self.signal)


PAUSE_HOOK = "MEDSEG_TEST_PAUSE"  # "<step>:<folder>", the folder holding the named pipes "paused" and "resume"


class PauseAtStep(Callback):
    """Test hook: after optimizer step ``step`` on rank 0, the process writes "paused" into the named pipe
    ``<folder>/paused`` (opening it waits for the test to read), then reads ``<folder>/resume`` to its end (waits
    for the test to open and close it). Set through :data:`PAUSE_HOOK`, so a test knows, without sleeping, that
    the run is held at that step."""

    def __init__(self, spec: str) -> None:
        step, folder = spec.split(":", 1)
        self.step, self.folder = int(step), Path(folder)

    @classmethod
    def from_environment(cls) -> "PauseAtStep | None":
        spec = os.environ.get(PAUSE_HOOK)
        return cls(spec) if spec else None

    def on_step_end(self, view: TrainingView) -> None:
        if view.step == self.step and view.is_main:
            get_logger().warning("test hook: paused after step %d until %s is opened", self.step,
                                 self.folder / "resume")
            with open(self.folder / "paused", "w", encoding="utf-8") as pipe:
                pipe.write("paused\n")
            with open(self.folder / "resume", encoding="utf-8") as pipe:
                pipe.read()

"""The training loop and its own steps: epochs of optimizer steps until the step count or the time budget is spent,
validation paced by time, best-weights tracking, checkpoints and history; then what the run keeps. Callbacks only
observe (:mod:`medseg.training.callbacks`).

Every sample's crop and augmentation are seeded from ``(seed, epoch, position)`` and the whole run state is saved
with each checkpoint, so a resumed run continues exactly as the uninterrupted run would have. With a budget, the
learning rate follows the elapsed share of the budget and the run ends, annealed, at the deadline.
"""

from __future__ import annotations

import math
import signal
import threading
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from medseg.config import Config
from medseg.files import atomic_write_bytes, atomic_write_csv
from medseg.inference.postprocess import ValidationCase
from medseg.training.callbacks import (Callback, EpochFunction, PauseAtStep, ProgressCallback, ProgressFile,
                                       SignalAtStep, TensorBoardCallback, TrainingView)
from medseg.run.folder import RunFolder
from medseg.run.history import HistoryRow, StepRow
from medseg.run.weights import WeightsInfo, load_checkpoint, load_resumable, load_weights_into, save_checkpoint
from medseg.device import select_device, training_memory_format
from medseg.training.components import Components, TrainingData, build_components, epoch_loader, seed_everything
from medseg.run.contract import RunContract, WeightsName, training_contract
from medseg.distributed import DistributedContext, parameter_checksum
from medseg.training.schedule import Clock, WallClock
from medseg.training.curves import curves_png
from medseg.training.init import InitSource, start_from
from medseg.training.selection import keep
from medseg.training.state import RunState
from medseg.training.validation import ValidationPicture, Validator
from medseg.errors import MedsegError
from medseg.log import get_logger
from medseg.models import count_parameters
from medseg.plan import STEPS_PER_EPOCH, Plan

RESERVE_FACTOR = 1.5  # the end of a budget keeps 1.5 validations: the final one and the choices after it
STEP_ROW_EVERY = 10  # steps.csv gets a row every train.log_every steps, at least every 10 (and at the last step)
LOSS_SMOOTHING = 0.9  # steps.csv's loss: an EMA of the training loss (the weight of the past)


@dataclass
class TrainResult:
    run_dir: Path
    best_val_dice: float
    best_epoch: int
    epochs_run: int
    steps_run: int
    seconds: float
    selected: WeightsName
    history: list[HistoryRow] = field(default_factory=list)
    steps_per_second: float = math.nan  # optimizer steps per second of training time (validation excluded)
    planned_steps_per_second: float | None = None  # what the plan's probe predicted for this run


class StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks the loop to stop at the next step boundary (so the saved
    state is consistent); a second one interrupts at once, and then nothing is saved (the state may be torn)."""

    def __init__(self) -> None:
        self.requested = self.forced = False

    def __call__(self, signum: int, frame: object) -> None:
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt(f"signal {signum}")
        self.requested = True
        get_logger().warning("stop requested (signal %d): finishing the current step", signum)


class Trainer:
    """One training run in ``run_dir``: components, data and state, the loop, and the loop's own steps (as nnU-Net's
    trainer owns its hooks): validation paced by time with an EMA of its Dice, best-weights tracking, checkpoints,
    ``history.csv`` and ``steps.csv``, and after the loop the choice of what the run keeps
    (:func:`medseg.training.selection.keep`), the final weights, the contract and ``curves.png``. Callbacks only
    observe, through a :class:`TrainingView`. Use :func:`fit_run`."""

    def __init__(self, config: Config, run_dir: Path, context: DistributedContext, clock: Clock,
                 callbacks: Sequence[Callback], data: TrainingData, plan: Plan | None = None,
                 resume: bool = False) -> None:
        self.config, self.run_dir, self.context, self.clock = config, run_dir, context, clock
        self.run = RunFolder(run_dir)
        self.device = select_device(config.train.device, context.local_rank)
        seed_everything(config.train.seed, config.train.deterministic)
        self.data = data
        self.components: Components = build_components(config, self.data.channels, self.device, context)
        if config.train.init and not resume:
            start_from(self.components.model, InitSource.load(config.train.init))
        self.contract: RunContract = training_contract(config, self.components.model.spec, self.data.channels,
                                                       self.data.record, plan)
        self.callbacks = list(callbacks)
        self.observed_config = config.model_copy(deep=True)  # what observers see: changing it changes nothing
        self.state = RunState()
        self.stop = StopRequest()
        self.improved = False  # the epoch's smoothed validation Dice is the best so far
        self.finishing = False  # the epoch is the run's last
        self.current_lr, self.last_loss = config.optim.lr, math.nan
        self.seconds_per_pixel = math.nan  # training time per input pixel, measured every epoch
        self.reserve = math.nan  # seconds kept at the end of a budget for the final validation
        self.validator = Validator(data.val, self._val_indices(), self.contract.inference, self.device,
                                   config.train.batch_size, context)
        self.last_cases: list[ValidationCase] = []  # the last validation's predictions, when it kept them
        self.step_row_every = min(config.train.log_every, STEP_ROW_EVERY)
        global_batch = config.train.batch_size * context.world_size
        self.steps_per_epoch = config.train.steps_per_epoch or max(
            STEPS_PER_EPOCH, math.ceil(len(self.data.train) / global_batch))
        self.budget = config.train.budget_minutes * 60 if config.train.budget_minutes else None
        self.total_steps = None if self.budget else (config.train.iterations or
                                                     config.train.epochs * self.steps_per_epoch)
        self._last_tick = clock.now()
        if resume:
            self.restore()

    def _val_indices(self) -> list[int]:
        """All validation images, or a fixed seeded subset of at most ``train.val_images`` of them made of whole
        cases (a volume's slices all in or all out, at least one case), so per-case scores and 3D post-processing
        see whole volumes."""
        items, limit = self.data.val.items, self.config.train.val_images
        if limit is None or limit >= len(items):
            return list(range(len(items)))
        cases: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            cases.setdefault(item.group, []).append(index)
        groups = list(cases.values())
        chosen: list[int] = []
        for pick in np.random.default_rng(self.config.data.split_seed).permutation(len(groups)):
            if chosen and len(chosen) + len(groups[pick]) > limit:
                break
            chosen += groups[pick]
        return sorted(chosen)

    # -- state ---------------------------------------------------------------------------------------------------
    def state_for_checkpoint(self) -> dict[str, Any]:
        parts, state = self.components, self.state
        state.optimizer, state.scaler = parts.optimizer.state_dict(), parts.scaler.state_dict()
        state.schedule, state.torch_rng = parts.schedule.state_dict(), torch.get_rng_state()
        return state.to_checkpoint()

    def restore(self) -> None:
        """Continue from ``checkpoint.safetensors``: its weights, the optimizer, scaler and schedule, the run state
        and the random state."""
        path = self.run.checkpoint
        checkpoint = load_resumable(path, self.contract)
        load_weights_into(self.components.model, checkpoint.weights, path)
        self.state = RunState.from_checkpoint(checkpoint.train_state, path)
        self.components.optimizer.load_state_dict(self.state.optimizer)
        self.components.scaler.load_state_dict(self.state.scaler)
        self.components.schedule.load_state_dict(self.state.schedule)
        torch.set_rng_state(self.state.torch_rng)
        get_logger().info("resuming %s at epoch %d (step %d, %.0fs of training done)", self.run_dir,
                          self.state.epoch, self.state.step, self.state.elapsed)

    # -- time and progress ---------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Add the time since the last tick to ``elapsed`` (the same on every rank under DDP)."""
        now = self.clock.now()
        self.state.elapsed += now - self._last_tick
        self._last_tick = now
        if self.budget:
            self.state.elapsed = self.context.maximum(self.state.elapsed)

    def progress(self) -> float:
        """The share of the run done: of the steps, or of the budget less ``reserve`` (so the final validation
        and the choices after it also fit in the budget). Every input is the same on every rank."""
        if not self.budget:
            return self.state.step / self.total_steps
        reserve = 0.0 if math.isnan(self.reserve) else min(self.reserve, 0.2 * self.budget)
        return self.state.elapsed / (self.budget - reserve)

    def done(self) -> bool:
        return self.progress() >= 1.0

    def step_total_text(self) -> str:
        return f"/{self.total_steps}" if self.total_steps else f" ({100 * self.progress():.0f}% of the budget)"

    def epoch_total_text(self) -> str:
        return f"/{math.ceil(self.total_steps / self.steps_per_epoch)}" if self.total_steps else ""

    # -- observers -----------------------------------------------------------------------------------------------
    def view(self, row: HistoryRow | None = None) -> TrainingView:
        """What the callbacks see now (``row``: the epoch's, on ``on_epoch_end``)."""
        state = self.state
        return TrainingView(self.observed_config, self.run_dir, self.context.rank, state.step, state.epoch,
                            self.step_total_text(), self.epoch_total_text(), state.elapsed, self.current_lr,
                            self.last_loss, None if row is None else replace(row), self.improved,
                            self.validation_pictures, self.progress())

    def notify(self, hook: str, row: HistoryRow | None = None) -> None:
        if self.callbacks:
            view = self.view(row)
            for callback in self.callbacks:
                getattr(callback, hook)(view)

    def validation_pictures(self, count: int) -> list[ValidationPicture]:
        """The first ``count`` validation images, predicted by the current weights."""
        return self.validator.pictures(self.components.model, count)

    # -- the loop ------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        parts = self.components
        get_logger().info("model %s: %s parameters on %s; %s, batch %d, %d steps per epoch",
                          parts.model.spec.name, f"{count_parameters(parts.model):,}", self.device,
                          f"{self.budget / 60:g} min budget" if self.budget else f"{self.total_steps} steps",
                          self.config.train.batch_size, self.steps_per_epoch)
        self.notify("on_fit_start")
        self._last_tick = self.clock.now()
        while not self.done():
            self.run_epoch()
            if self.stop.requested:
                get_logger().warning("stopped after epoch %d; continue with `medseg train --resume %s`",
                                     self.state.epoch, self.run_dir)
                raise KeyboardInterrupt("stop requested")
        self._check_ranks_in_sync()
        self.on_train_end()
        state = self.state
        get_logger().info("done: %d steps in %.0fs (validation %.0fs); using %s weights; run folder %s",
                          state.step, state.elapsed, state.val_seconds, self.contract.selected, self.run_dir)
        actual, planned = self.step_rates()
        return TrainResult(self.run_dir, state.best_score, state.best_epoch, state.epoch, state.step, state.elapsed,
                           self.contract.selected, list(state.history), actual, planned)

    def step_rates(self) -> tuple[float, float | None]:
        """Optimizer steps per second of training time (validation excluded), and what the plan predicted; both
        are logged, with their ratio."""
        state = self.state
        training = state.elapsed - state.val_seconds
        actual = state.step / training if training > 0 else math.nan
        plan = self.contract.plan
        planned = 1 / plan.seconds_per_step if plan is not None and plan.seconds_per_step else None
        if planned is not None:
            get_logger().info("steps per second: %.3f actual, %.3f planned (actual / planned %.2f)", actual,
                              planned, actual / planned)
        else:
            get_logger().info("steps per second: %.3f", actual)
        return actual, planned

    def run_epoch(self) -> None:
        """Train an epoch, then :meth:`on_epoch_end`; a stop request inside it saves a checkpoint and re-raises."""
        try:
            row = self.train_epoch()
        except KeyboardInterrupt:
            if self.stop.requested and not self.stop.forced:  # stopped at a step boundary: consistent state
                self.on_interrupt()
            raise
        self.on_epoch_end(row)

    def train_epoch(self) -> HistoryRow:
        """Train until the epoch's steps are done or the budget is spent; returns the epoch's history row."""
        state = self.state
        steps = self.steps_per_epoch
        if self.total_steps:
            steps = min(steps, self.total_steps - state.step + state.epoch_step)
        loader = epoch_loader(self.data.train, self.config, state.epoch, steps, state.epoch_step, self.context,
                              self.device)
        self.components.model.train()
        losses, waiting, started = [], 0.0, self.clock.now()
        fetch_started = started
        for batch in loader:
            waiting += self.clock.now() - fetch_started
            losses.append(self.train_step(batch))
            self.on_step_end(losses[-1])
            if self.stop.requested:
                raise KeyboardInterrupt("stop requested")
            if self.done():
                break
            fetch_started = self.clock.now()
        total = self.clock.now() - started
        self._measure_speed(total, len(losses))
        state.epoch += 1
        state.epoch_step = 0
        return HistoryRow(epoch=state.epoch, step=state.step, lr=self.current_lr,
                          train_loss=float(np.mean(losses)) if losses else math.nan,
                          data_wait=round(waiting / total, 4) if total > 0 else 0.0,
                          seconds=round(state.elapsed, 2),
                          steps_per_second=round(len(losses) / total, 4) if total > 0 else math.nan)

    def _measure_speed(self, seconds: float, steps: int) -> None:
        """Training seconds per input pixel of the epoch (the slowest rank's, so every rank agrees)."""
        if steps and seconds > 0:
            side = self.config.data.resize or self.config.data.patch_size or max(self.data.train.shapes[0])
            self.seconds_per_pixel = self.context.maximum(seconds / (steps * self.config.train.batch_size * side**2))

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        parts = self.components
        self.current_lr = parts.schedule.apply(parts.optimizer, self.state.step, self.progress())
        image = batch["image"].to(self.device, non_blocking=True, memory_format=training_memory_format(self.device))
        mask = batch["mask"].to(self.device, non_blocking=True)
        region = batch["region"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=parts.autocast, enabled=parts.autocast is not None):
            output = parts.network(image)
        loss = parts.loss(output, mask, region)  # in float32
        if not self.context.all_true(bool(torch.isfinite(loss)), self.device):
            raise MedsegError(self.run_dir, f"loss became {loss.item()} at step {self.state.step + 1}; stopped. The "
                              "last good checkpoint is kept (try a lower optim.lr or optim.grad_clip)")
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(loss).backward()
        if self.config.optim.grad_clip:
            parts.scaler.unscale_(parts.optimizer)
            torch.nn.utils.clip_grad_norm_(parts.model.parameters(), self.config.optim.grad_clip)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        return float(loss.item())

    def on_step_end(self, loss: float) -> None:
        """Count the step, tell the observers, add the step's time, and record its ``steps.csv`` row when due."""
        state = self.state
        state.step += 1
        state.epoch_step += 1
        self.last_loss = loss
        self.notify("on_step_end")
        self.tick()
        previous = state.smoothed_loss
        state.smoothed_loss = loss if math.isnan(previous) else LOSS_SMOOTHING * previous + (1 - LOSS_SMOOTHING) * loss
        if state.step % self.step_row_every == 0 or self.done():
            state.steps.append(StepRow(state.step, round(state.elapsed, 2), state.smoothed_loss, self.current_lr))

    def on_epoch_end(self, row: HistoryRow) -> None:
        """Validate when due (tracking the best), save the epoch's files, then tell the observers."""
        self.improved, self.finishing = False, self.done()
        self.state.history.append(row)
        self.on_validation_epoch_end(row)
        self.save_epoch(row)
        self.notify("on_epoch_end", row)

    def on_interrupt(self) -> None:
        """A stop request inside an epoch: save a checkpoint at this step boundary (rank 0)."""
        if self.context.is_main:
            self.write_checkpoint(math.nan)
            get_logger().warning("interrupted: checkpoint saved at epoch %d, step %d; continue with "
                                 "`medseg train --resume %s`", self.state.epoch + 1, self.state.step, self.run_dir)
        self.notify("on_interrupt")

    def on_train_end(self) -> None:
        """Choose what the run keeps, write its final files (rank 0; every rank waits), then tell the observers."""
        parts = self.components
        self.contract = keep(self.config, self.run, self.contract, parts.model, parts.schedule.anneals,
                             self.validator, self.last_cases)
        if self.context.is_main:
            self.save_final()
        self.context.barrier()
        if self.context.is_main and self.state.history:
            atomic_write_bytes(self.run.curves, curves_png(self.state.steps, self.state.history))
        self.notify("on_fit_end")

    def _check_ranks_in_sync(self) -> None:
        if not self.context.enabled:
            return
        checksums = self.context.all_gather(parameter_checksum(self.components.model))
        spread = max(checksums) - min(checksums)
        get_logger().info("ranks in sync: %d parameter checksums, max difference %.3g", len(checksums), spread)
        if spread > 1e-6 * max(1.0, abs(checksums[0])):
            raise RuntimeError(f"DDP ranks diverged: parameter checksums {checksums}")

    # -- validation ----------------------------------------------------------------------------------------------
    def validation_cost(self) -> float:
        """Seconds the next validation should take: the last one's, or an estimate from the training speed."""
        cost = self.state.val_cost
        return cost if not math.isnan(cost) else self.validator.estimated_cost(self.seconds_per_pixel)

    def validation_due(self) -> bool:
        """After the last epoch; after any other when the validation time so far, this validation and the final
        one stay within ``train.val_time_share`` of the elapsed time (every epoch when the share is None). So
        validation never costs more than that share of the run, however small the epochs."""
        share, state = self.config.train.val_time_share, self.state
        if not self.validator.indices:
            return False
        if share is None or self.finishing:
            return True
        return state.val_seconds + 2 * self.validation_cost() <= share * state.elapsed

    def on_validation_epoch_end(self, row: HistoryRow) -> None:
        """Validate when rank 0 finds it due, and keep ``reserve`` for the final validation."""
        if self.context.agree(self.validation_due()):
            self.validate_epoch(row)
        if self.validator.indices:
            self.reserve = RESERVE_FACTOR * self.validation_cost()

    def validate_epoch(self, row: HistoryRow) -> None:
        """Score the validation images into ``row`` (its time counts as training time), then track the best."""
        started = self.clock.now()
        metrics, self.last_cases = self.validator.scores(self.components.model,
                                                         keep_cases=self.finishing and self.context.is_main)
        state = self.state
        state.val_cost = self.context.maximum(self.clock.now() - started)
        state.val_seconds += state.val_cost
        self.tick()
        row.val_dice, row.val_iou, row.val_accuracy = metrics["dice"], metrics["iou"], metrics["accuracy"]
        row.val_seconds, row.seconds = round(state.val_cost, 3), round(state.elapsed, 2)
        self.track_best(row.val_dice)

    def track_best(self, dice: float) -> None:
        """Smooth the validation Dice (an EMA of weight ``train.val_smoothing``); ``improved`` when it is the
        best so far. The schedule sees the raw Dice (plateau)."""
        state, smoothing = self.state, self.config.train.val_smoothing
        previous = state.smoothed_dice
        state.smoothed_dice = dice if math.isnan(previous) else smoothing * previous + (1 - smoothing) * dice
        self.components.schedule.on_validation(dice)
        if state.smoothed_dice > state.best_score:
            state.best_score, state.best_epoch = state.smoothed_dice, state.epoch
            self.improved = True

    # -- files ---------------------------------------------------------------------------------------------------
    def write_weights(self, path: Path, val_dice: float, train_state: dict[str, Any] | None = None) -> None:
        state = self.state
        save_checkpoint(path, self.components.model.state_dict(), self.contract,
                        WeightsInfo(state.epoch, state.step, round(state.elapsed, 3), val_dice), train_state)

    def write_checkpoint(self, val_dice: float) -> None:
        """``checkpoint.safetensors``: the weights and the whole run state (resume)."""
        self.write_weights(self.run.checkpoint, val_dice, self.state_for_checkpoint())

    def save_epoch(self, row: HistoryRow) -> None:
        """``best_model`` when the epoch improved, the checkpoint, ``history.csv`` and ``steps.csv`` (rank 0);
        every rank waits for them."""
        if self.context.is_main:
            if self.improved:
                self.write_weights(self.run.weights("best_model"), row.val_dice)
            self.write_checkpoint(row.val_dice)
            atomic_write_csv(self.run.history, [asdict(r) for r in self.state.history])
            atomic_write_csv(self.run.steps, [asdict(r) for r in self.state.steps],
                             [f.name for f in fields(StepRow)])
        self.context.barrier()

    def save_final(self) -> None:
        """``final_model``, ``best_model`` again under the final contract (the same weights), ``contract.json``."""
        last = self.state.history[-1].val_dice if self.state.history else math.nan
        self.write_weights(self.run.weights("final_model"), last)
        best = self.run.weights("best_model")
        if best.is_file():
            checkpoint = load_checkpoint(best)
            save_checkpoint(best, checkpoint.weights, self.contract, checkpoint.info)
        self.contract.save(self.run.contract)


def tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def default_callbacks(config: Config, on_epoch_end: Callable[[int, HistoryRow], None] | None = None) -> list[Callback]:
    """The observers: progress (lines, and ``progress.json``); TensorBoard when asked for (or installed); the user's
    function; the test hooks."""
    callbacks: list[Callback] = [ProgressCallback(), ProgressFile()]
    if config.train.tensorboard or (config.train.tensorboard is None and tensorboard_installed()):
        callbacks.append(TensorBoardCallback())
    if on_epoch_end is not None:
        callbacks.append(EpochFunction(on_epoch_end))
    hooks = [SignalAtStep.from_environment(), PauseAtStep.from_environment()]
    return callbacks + [hook for hook in hooks if hook is not None]


def _install_stop_handlers(stop: StopRequest) -> dict[int, Any]:
    """SIGINT/SIGTERM -> ``stop``, when training runs in the main thread (signals only reach that thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}


def fit_run(config: Config, run_dir: Path, data: TrainingData, context: DistributedContext,
            callbacks: Sequence[Callback], plan: Plan | None = None, resume: bool = False,
            clock: Clock | None = None) -> TrainResult:
    """Train (or, with ``resume``, continue) the run in ``run_dir`` on prepared ``data``, stopping at a step
    boundary on SIGINT/SIGTERM. The caller has opened the folder (:func:`medseg.workflow.train_run`)."""
    trainer = Trainer(config, run_dir, context, clock or WallClock(), callbacks, data, plan, resume)
    previous = _install_stop_handlers(trainer.stop)
    try:
        return trainer.fit()
    finally:
        for sig, previous_handler in previous.items():
            signal.signal(sig, previous_handler)

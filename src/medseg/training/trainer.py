"""The training loop: epochs of optimizer steps until the step count or the time budget is spent, with
callbacks for everything else (:mod:`medseg.training.callbacks`).

Every sample's crop and augmentation are seeded from ``(seed, epoch, position)`` and the whole run state is saved
with each checkpoint, so a resumed run continues exactly as the uninterrupted run would have. With a budget, the
learning rate follows the elapsed share of the budget and the run ends, annealed, at the deadline.
"""

from __future__ import annotations

import math
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from medseg.config import Config, load_config, save_config
from medseg.data.fingerprint import Fingerprint
from medseg.training.callbacks import (Callback, CheckpointCallback, EpochFunction, HistoryCallback, ProgressCallback,
                                     SignalAtStep, TensorBoardCallback, ValidationCallback)
from medseg.run.weights import load_checkpoint, load_weights_into
from medseg.training.components import (Components, build_components, epoch_loader, model_options, prepare_data,
                                      resolve_classes, seed_everything, select_device)
from medseg.run.contract import RunContract, WeightsName, training_contract
from medseg.training.distributed import DistributedContext, init_distributed, parameter_checksum, shutdown_distributed
from medseg.training.schedule import Clock, WallClock
from medseg.training.state import HistoryRow, RunState
from medseg.errors import MedsegError
from medseg.log import get_logger, log_to_file
from medseg.models import count_parameters, get_entry
from medseg.plan import Plan

MIN_STEPS_PER_EPOCH = 250  # as nnU-Net: an epoch is never a handful of steps, whatever the dataset size


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
    """One training run in ``run_dir``: components, data, state and callbacks, and the loop. Use :func:`train`.

    Callbacks read and write a few attributes: ``improved`` (the epoch's smoothed validation Dice is the best so
    far), ``finishing`` (the epoch is the last), ``reserve`` (seconds kept at the end of a budget for the final
    validation), ``current_lr``, ``seconds_per_pixel`` (training time per input pixel, measured every epoch)."""

    def __init__(self, config: Config, run_dir: Path, context: DistributedContext, clock: Clock,
                 callbacks: Sequence[Callback], plan: Plan | None = None, fingerprint: Fingerprint | None = None,
                 resume: bool = False) -> None:
        self.config, self.run_dir, self.context, self.clock = config, run_dir, context, clock
        self.device = select_device(config.train.device, context.local_rank)
        seed_everything(config.train.seed, config.train.deterministic)
        self.data = prepare_data(config, fingerprint)
        self.components: Components = build_components(config, self.data.channels, self.device, context)
        self.contract: RunContract = training_contract(config, self.components.model.spec, self.data.channels,
                                                       self.data.record, plan)
        self.callbacks = list(callbacks)
        self.state = RunState()
        self.stop = StopRequest()
        self.improved = self.finishing = False
        self.current_lr = config.optim.lr
        self.seconds_per_pixel = self.reserve = math.nan
        self.val_indices = self._val_indices()
        global_batch = config.train.batch_size * context.world_size
        self.steps_per_epoch = config.train.steps_per_epoch or max(
            MIN_STEPS_PER_EPOCH, math.ceil(len(self.data.train) / global_batch))
        self.budget = config.train.budget_minutes * 60 if config.train.budget_minutes else None
        self.total_steps = None if self.budget else (config.train.iterations or
                                                     config.train.epochs * self.steps_per_epoch)
        self._last_tick = clock.now()
        if resume:
            self.restore()

    def _val_indices(self) -> list[int]:
        """All validation images, or a fixed seeded subset of ``train.val_images``."""
        n, limit = len(self.data.val), self.config.train.val_images
        if limit is None or limit >= n:
            return list(range(n))
        return sorted(np.random.default_rng(self.config.data.split_seed).permutation(n)[:limit].tolist())

    # -- state ---------------------------------------------------------------------------------------------------
    def state_for_checkpoint(self) -> dict[str, Any]:
        parts, state = self.components, self.state
        state.optimizer, state.scaler = parts.optimizer.state_dict(), parts.scaler.state_dict()
        state.schedule, state.torch_rng = parts.schedule.state_dict(), torch.get_rng_state()
        return state.to_checkpoint()

    def restore(self) -> None:
        path = self.run_dir / "checkpoint.safetensors"
        checkpoint = load_checkpoint(path)
        if checkpoint.train_state is None:
            raise MedsegError(path, "has no training state to resume from")
        if checkpoint.contract.model.name != self.contract.model.name:
            raise MedsegError(path, f"was written for model {checkpoint.contract.model.name!r}, the config says "
                                    f"{self.contract.model.name!r}")
        self._check_same_data(checkpoint.contract, path)
        load_weights_into(self.components.model, checkpoint.weights, path)
        self.state = RunState.from_checkpoint(checkpoint.train_state, path)
        self.components.optimizer.load_state_dict(self.state.optimizer)
        self.components.scaler.load_state_dict(self.state.scaler)
        self.components.schedule.load_state_dict(self.state.schedule)
        torch.set_rng_state(self.state.torch_rng)
        get_logger().info("resuming %s at epoch %d (step %d, %.0fs of training done)", self.run_dir,
                          self.state.epoch, self.state.step, self.state.elapsed)

    def _check_same_data(self, recorded: RunContract, path: Path) -> None:
        """Resuming on other data: other split ids would mix validation or test images into training (an error);
        the same ids with other files get a warning."""
        now, then = self.data.record, recorded.data
        if now.splits != then.splits:
            moved = len(set(now.splits.train) ^ set(then.splits.train))
            raise MedsegError(path, f"the data's split differs from the one this run started with ({moved} training "
                                    "ids differ); resuming would train on other images. Restore the data or start "
                                    "a new run")
        if now.hash != then.hash:
            get_logger().warning("%s: the data has the recorded ids but other files (hash %s, recorded %s)",
                                 self.config.data.root, now.hash, then.hash)

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

    # -- the loop ------------------------------------------------------------------------------------------------
    def call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def fit(self) -> TrainResult:
        parts = self.components
        get_logger().info("model %s: %s parameters on %s; %s, batch %d, %d steps per epoch",
                          parts.model.spec.name, f"{count_parameters(parts.model):,}", self.device,
                          f"{self.budget / 60:g} min budget" if self.budget else f"{self.total_steps} steps",
                          self.config.train.batch_size, self.steps_per_epoch)
        self.call("on_fit_start")
        self._last_tick = self.clock.now()
        while not self.done():
            try:
                row = self.train_epoch()
            except KeyboardInterrupt:
                if self.stop.requested and not self.stop.forced:  # stopped at a step boundary: consistent state
                    self.call("on_interrupt")
                raise
            self.improved, self.finishing = False, self.done()
            self.state.history.append(row)
            self.call("on_epoch_end", row)
            if self.stop.requested:
                get_logger().warning("stopped after epoch %d; continue with `medseg train --resume %s`",
                                     self.state.epoch, self.run_dir)
                raise KeyboardInterrupt("stop requested")
        self._check_ranks_in_sync()
        self.call("on_fit_end")
        state = self.state
        get_logger().info("done: %d steps in %.0fs (validation %.0fs); using %s weights; run folder %s",
                          state.step, state.elapsed, state.val_seconds, self.contract.selected, self.run_dir)
        return TrainResult(self.run_dir, state.best_score, state.best_epoch, state.epoch, state.step, state.elapsed,
                           self.contract.selected, list(state.history))

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
            state.step += 1
            state.epoch_step += 1
            self.call("on_step_end", losses[-1])
            self.tick()
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
                          seconds=round(state.elapsed, 2))

    def _measure_speed(self, seconds: float, steps: int) -> None:
        """Training seconds per input pixel of the epoch (the slowest rank's, so every rank agrees)."""
        if steps and seconds > 0:
            side = self.config.data.resize or self.config.data.patch_size or max(self.data.train.shapes[0])
            self.seconds_per_pixel = self.context.maximum(seconds / (steps * self.config.train.batch_size * side**2))

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        parts = self.components
        self.current_lr = parts.schedule.apply(parts.optimizer, self.state.step, self.progress())
        image = batch["image"].to(self.device, non_blocking=True)
        mask = batch["mask"].to(self.device, non_blocking=True)
        region = batch["region"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, enabled=parts.amp):
            loss = parts.loss(parts.network(image), mask, region)
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

    def _check_ranks_in_sync(self) -> None:
        if not self.context.enabled:
            return
        checksums = self.context.all_gather(parameter_checksum(self.components.model))
        spread = max(checksums) - min(checksums)
        get_logger().info("ranks in sync: %d parameter checksums, max difference %.3g", len(checksums), spread)
        if spread > 1e-6 * max(1.0, abs(checksums[0])):
            raise RuntimeError(f"DDP ranks diverged: parameter checksums {checksums}")


def tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def default_callbacks(config: Config, on_epoch_end: Callable[[int, HistoryRow], None] | None = None) -> list[Callback]:
    """Validation, checkpoints, history, progress; TensorBoard when asked for (or installed); the user's
    function; the test hook."""
    callbacks: list[Callback] = [ValidationCallback(), CheckpointCallback(), HistoryCallback(), ProgressCallback()]
    if config.train.tensorboard or (config.train.tensorboard is None and tensorboard_installed()):
        callbacks.append(TensorBoardCallback())
    if on_epoch_end is not None:
        callbacks.append(EpochFunction(on_epoch_end))
    hook = SignalAtStep.from_environment()
    if hook is not None:
        callbacks.append(hook)
    return callbacks


def _check_config(config: Config) -> None:
    """Problems that need no data: fail before decoding anything."""
    if not config.data.root:
        raise MedsegError("data.root", "no dataset given (--data DIR)")
    get_entry(config.model.name)
    model_options(config.model)
    if config.train.tensorboard and not tensorboard_installed():
        raise MedsegError("train.tensorboard", "needs the tensorboard package (pip install 'medseg[tensorboard]')")
    if config.train.select == "best" and config.data.fold == "all":
        raise MedsegError("train.select", "'best' needs validation images; --fold all has none")


def _install_stop_handlers(stop: StopRequest) -> dict[int, Any]:
    """SIGINT/SIGTERM -> ``stop``, when training runs in the main thread (signals only reach that thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}


def train(config: Config | None, run_dir: str | Path, resume: bool = False,
          on_epoch_end: Callable[[int, HistoryRow], None] | None = None, plan: Plan | None = None,
          fingerprint: Fingerprint | None = None, clock: Clock | None = None,
          callbacks: Sequence[Callback] | None = None) -> TrainResult:
    """Train (or, with ``resume``, continue) a run in ``run_dir``; the function `medseg train` calls.

    When resuming, the run's saved config is used. ``callbacks`` replaces the default list
    (:func:`default_callbacks`); ``clock`` replaces wall time (tests)."""
    run_dir = Path(run_dir)
    context = init_distributed()
    if not context.is_main:
        get_logger().setLevel("WARNING")
    if resume:
        if not (run_dir / "checkpoint.safetensors").is_file():
            raise MedsegError(run_dir, "no checkpoint.safetensors to resume from")
        config = load_config(run_dir / "config.yaml")
        plan = Plan.load(run_dir / "plan.yaml") if (run_dir / "plan.yaml").is_file() else None
        if (run_dir / "fingerprint.json").is_file():
            fingerprint = Fingerprint.load(run_dir / "fingerprint.json")
    elif config is None:
        raise ValueError("config is required unless resuming")
    elif (run_dir / "checkpoint.safetensors").exists():
        raise MedsegError(run_dir, "already holds a run; use --resume to continue it or choose another --out")
    else:
        config = resolve_classes(config)
    _check_config(config)
    context.barrier()  # every rank has checked the folder before rank 0 writes to it
    handler = None
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = log_to_file(run_dir / "train.log")
    previous: dict[int, Any] = {}
    try:
        if context.is_main and not resume:
            save_config(config, run_dir / "config.yaml")
            if plan is not None:
                plan.save(run_dir / "plan.yaml")
        trainer = Trainer(config, run_dir, context, clock or WallClock(),
                          callbacks if callbacks is not None else default_callbacks(config, on_epoch_end),
                          plan, fingerprint, resume)
        if context.is_main:
            trainer.data.record.fingerprint.save(run_dir / "fingerprint.json")
        previous = _install_stop_handlers(trainer.stop)
        return trainer.fit()
    finally:
        for sig, previous_handler in previous.items():
            signal.signal(sig, previous_handler)
        if handler is not None:
            get_logger().removeHandler(handler)
            handler.close()
        if context.enabled:
            shutdown_distributed()

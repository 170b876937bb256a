"""The training loop's callbacks: validation (paced by time), checkpoints and the run contract, history and
curves, progress, TensorBoard, and a test hook that signals the process at a chosen step.

Hooks, in the order the loop calls them: ``on_fit_start``, then per epoch ``on_step_end`` after every step and
``on_epoch_end`` with the epoch's :class:`HistoryRow`; ``on_interrupt`` when a stop request ends the run early;
``on_fit_end`` once training is over. The trainer runs its callbacks in list order, so validation fills the row
before checkpoints and history see it.
"""

from __future__ import annotations

import copy
import math
import os
import signal
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from medseg.data.store import SampleStore
from medseg.run.folder import RunFolder
from medseg.run.weights import WeightsInfo, load_checkpoint, load_weights_into, save_checkpoint
from medseg.run.contract import InferenceSpec, PostprocessSpec, WeightsName
from medseg.training.distributed import DistributedContext
from medseg.inference.predictor import Predictor, TorchBackend
from medseg.inference.scoring import score_samples
from medseg.inference.postprocess import ValidationCase, choose_postprocessing, to_labels
from medseg.inference.sliding_window import tile_starts
from medseg.training.state import HistoryRow
from medseg.visualize import figure_png, overlay, pyplot
from medseg.errors import MedsegError
from medseg.files import atomic_write_bytes, atomic_write_csv, atomic_write_json
from medseg.log import get_logger, is_interactive

if TYPE_CHECKING:
    from medseg.training.trainer import Trainer


class Callback:
    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", loss: float) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", row: HistoryRow) -> None: ...

    def on_interrupt(self, trainer: "Trainer") -> None: ...

    def on_fit_end(self, trainer: "Trainer") -> None: ...


def validate(predictor: Predictor, store: SampleStore, indices: list[int], context: DistributedContext,
             keep_cases: bool = False) -> tuple[dict[str, float], list[ValidationCase]]:
    """Mean per-image Dice, IoU and accuracy of whole validation images. Under DDP each rank scores a shard and the
    scores are gathered, so every rank gets the single-process result. ``keep_cases``: this rank's cases too."""
    rows, cases = score_samples(predictor, store, indices[context.rank :: context.world_size], keep_cases)
    rows = [row for _, row in sorted(s for shard in context.all_gather(rows) for s in shard)]
    return {name: float(np.nanmean([row[name] for row in rows])) for name in ("dice", "iou", "accuracy")}, cases


def validation_spec(trainer: "Trainer") -> InferenceSpec:
    """How validation predicts: as inference does, without TTA (cheaper) and before post-processing is chosen."""
    return replace(trainer.contract.inference, tta=False, postprocess=PostprocessSpec())


RESERVE_FACTOR = 1.5  # the end of a budget keeps 1.5 validations: the final one and the choices after it


class ValidationCallback(Callback):
    """Validates after the last epoch, and after any other epoch when the validation time so far, this
    validation and the final one stay within ``train.val_time_share`` of the elapsed time (every epoch when the
    share is None); so validation never costs more than that share of the run, however small the epochs. The
    cost of a validation is the last one's, or before any, an estimate from the training speed. Tracks an EMA of
    validation Dice for ``best_model``; at the end, chooses the weights to keep and the post-processing."""

    def __init__(self) -> None:
        self.last_cases: list[ValidationCase] = []

    def cost(self, trainer: "Trainer") -> float:
        """Seconds the next validation should take: the last one's, or an estimate from the training speed."""
        return trainer.state.val_cost if not math.isnan(trainer.state.val_cost) else estimated_cost(trainer)

    def due(self, trainer: "Trainer") -> bool:
        share, state = trainer.config.train.val_time_share, trainer.state
        if not trainer.val_indices:
            return False
        if share is None or trainer.finishing:
            return True
        return state.val_seconds + 2 * self.cost(trainer) <= share * state.elapsed

    def on_epoch_end(self, trainer: "Trainer", row: HistoryRow) -> None:
        if trainer.context.agree(self.due(trainer)):
            self._validate(trainer, row)
        if trainer.val_indices:
            trainer.reserve = RESERVE_FACTOR * self.cost(trainer)

    def _validate(self, trainer: "Trainer", row: HistoryRow) -> None:
        started = trainer.clock.now()
        trainer.components.model.eval()
        predictor = Predictor([TorchBackend(trainer.components.model, trainer.device)], validation_spec(trainer),
                              batch_size=trainer.config.train.batch_size)
        metrics, self.last_cases = validate(predictor, trainer.data.val, trainer.val_indices, trainer.context,
                                            keep_cases=trainer.finishing and trainer.context.is_main)
        trainer.components.model.train()
        state = trainer.state
        state.val_cost = trainer.context.maximum(trainer.clock.now() - started)
        state.val_seconds += state.val_cost
        trainer.tick()
        row.val_dice, row.val_iou, row.val_accuracy = metrics["dice"], metrics["iou"], metrics["accuracy"]
        row.val_seconds, row.seconds = round(state.val_cost, 3), round(state.elapsed, 2)
        smoothing = trainer.config.train.val_smoothing
        previous = state.smoothed_dice
        state.smoothed_dice = (row.val_dice if math.isnan(previous)
                               else smoothing * previous + (1 - smoothing) * row.val_dice)
        trainer.components.schedule.on_validation(row.val_dice)
        if state.smoothed_dice > state.best_score:
            state.best_score, state.best_epoch = state.smoothed_dice, state.epoch
            trainer.improved = True

    def on_fit_end(self, trainer: "Trainer") -> None:
        """Choose final or best weights, then threshold and post-processing on validation predictions."""
        selected = selected_weights(trainer)
        trainer.contract = replace(trainer.contract, selected=selected)
        if not trainer.context.is_main or not trainer.val_indices:
            return
        if trainer.config.inference.postprocess != "auto":
            return
        cases = self.last_cases  # the final weights' validation predictions (this rank's shard under DDP)
        if selected == "best_model" or not cases or trainer.context.enabled:
            cases = self._cases_of(trainer, selected)
        choice = choose_postprocessing(cases, trainer.config.data.n_classes, trainer.config.inference.threshold)
        atomic_write_json(trainer.run_dir / "postprocess.json", {
            "images": len(cases), "weights": selected, "threshold": choice.threshold,
            "postprocess": asdict(choice.postprocess), "dice_before": choice.dice_before,
            "dice_after": choice.dice_after, "steps": list(choice.steps)})
        trainer.contract = trainer.contract.with_inference(threshold=choice.threshold,
                                                           postprocess=choice.postprocess)
        get_logger().info("post-processing chosen on %d validation images: threshold %.2f, %s (Dice %.4f -> %.4f)",
                          len(cases), choice.threshold, choice.postprocess.describe(), choice.dice_before,
                          choice.dice_after)

    def _cases_of(self, trainer: "Trainer", selected: str) -> list[ValidationCase]:
        """Validation predictions of the weights in ``RUN_DIR/<selected>.safetensors``."""
        model = trainer.components.model
        if selected == "best_model":
            path = trainer.run_dir / "best_model.safetensors"
            model = copy.deepcopy(model)
            load_weights_into(model, load_checkpoint(path).weights, path)
        predictor = Predictor([TorchBackend(model.eval(), trainer.device)], validation_spec(trainer),
                              batch_size=trainer.config.train.batch_size)
        _, cases = validate(predictor, trainer.data.val, trainer.val_indices, DistributedContext(), keep_cases=True)
        return cases


def estimated_cost(trainer: "Trainer") -> float:
    """Seconds one validation pass should take: its pixels (tiles included) at a third of the training time per
    pixel (a forward pass without backward). NaN before the first epoch."""
    spec = trainer.contract.inference
    pixels = 0
    for index in trainer.val_indices:
        height, width = trainer.data.val.shapes[index]
        if spec.resize:
            pixels += spec.resize**2
        elif spec.patch_size:
            tile_h, tile_w = min(spec.patch_size, height), min(spec.patch_size, width)
            pixels += (len(tile_starts(height, tile_h, spec.overlap)) * tile_h
                       * len(tile_starts(width, tile_w, spec.overlap)) * tile_w)
        else:
            pixels += height * width
    return pixels * trainer.seconds_per_pixel / 3


def selected_weights(trainer: "Trainer") -> WeightsName:
    """``train.select``; ``auto`` keeps the final weights when the schedule anneals (or there is no validation),
    else the best by smoothed validation Dice."""
    choice = trainer.config.train.select
    has_best = (trainer.run_dir / "best_model.safetensors").is_file() if trainer.context.is_main else True
    if choice == "auto":
        choice = "final" if trainer.components.schedule.anneals or not trainer.val_indices or not has_best else "best"
    if choice == "best" and not has_best:
        raise MedsegError("train.select", "best weights were requested, but no validation ever ran")
    return "final_model" if choice == "final" else "best_model"


class CheckpointCallback(Callback):
    """``checkpoint`` after every epoch (and mid-epoch on a stop request), ``best_model`` when the smoothed
    validation Dice improves, ``final_model`` and ``contract.json`` at the end (rank 0 only)."""

    def info(self, trainer: "Trainer", val_dice: float) -> WeightsInfo:
        state = trainer.state
        return WeightsInfo(state.epoch, state.step, round(state.elapsed, 3), val_dice)

    def save_checkpoint(self, trainer: "Trainer", val_dice: float) -> None:
        save_checkpoint(trainer.run_dir / "checkpoint.safetensors", trainer.components.model.state_dict(),
                        trainer.contract, self.info(trainer, val_dice), trainer.state_for_checkpoint())

    def on_epoch_end(self, trainer: "Trainer", row: HistoryRow) -> None:
        if trainer.context.is_main:
            if trainer.improved:
                save_checkpoint(trainer.run_dir / "best_model.safetensors", trainer.components.model.state_dict(),
                                trainer.contract, self.info(trainer, row.val_dice))
            self.save_checkpoint(trainer, row.val_dice)
        trainer.context.barrier()

    def on_interrupt(self, trainer: "Trainer") -> None:
        if trainer.context.is_main:
            self.save_checkpoint(trainer, math.nan)
            get_logger().warning("interrupted: checkpoint saved at epoch %d, step %d; continue with "
                                 "`medseg train --resume %s`", trainer.state.epoch + 1, trainer.state.step,
                                 trainer.run_dir)

    def on_fit_end(self, trainer: "Trainer") -> None:
        if trainer.context.is_main:
            last = trainer.state.history[-1].val_dice if trainer.state.history else math.nan
            save_checkpoint(trainer.run_dir / "final_model.safetensors", trainer.components.model.state_dict(),
                            trainer.contract, self.info(trainer, last))
            best = trainer.run_dir / "best_model.safetensors"
            if best.is_file():  # the same weights, under the final contract
                checkpoint = load_checkpoint(best)
                save_checkpoint(best, checkpoint.weights, trainer.contract, checkpoint.info)
            trainer.contract.save(RunFolder(trainer.run_dir).contract)
        trainer.context.barrier()


class HistoryCallback(Callback):
    """``history.csv`` after every epoch; ``curves.png`` at the end."""

    def on_epoch_end(self, trainer: "Trainer", row: HistoryRow) -> None:
        if trainer.context.is_main:
            atomic_write_csv(trainer.run_dir / "history.csv", [asdict(r) for r in trainer.state.history])

    def on_fit_end(self, trainer: "Trainer") -> None:
        if trainer.context.is_main and trainer.state.history:
            atomic_write_bytes(trainer.run_dir / "curves.png", curves_png(trainer.state.history))


def curves_png(history: list[HistoryRow]) -> bytes:
    """Training loss and validation Dice against steps."""
    plt = pyplot()
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot([r.step for r in history], [r.train_loss for r in history], marker=".")
    ax_loss.set(title="training loss", xlabel="step")
    validated = [r for r in history if r.validated]
    ax_dice.plot([r.step for r in validated], [r.val_dice for r in validated], marker=".", color="tab:green")
    ax_dice.set(title="validation Dice", xlabel="step", ylim=(0, 1))
    return figure_png(fig)


class ProgressCallback(Callback):
    """The one progress style: a tqdm bar per epoch on a terminal, a log line every ``log_every`` steps
    otherwise, and a line per epoch."""

    def __init__(self) -> None:
        self.bar = None
        self.losses: list[float] = []

    def on_step_end(self, trainer: "Trainer", loss: float) -> None:
        if not trainer.context.is_main:
            return
        self.losses.append(loss)
        if is_interactive():
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(desc=f"epoch {trainer.state.epoch + 1}", unit="step", leave=False)
            self.bar.update()
            self.bar.set_postfix(loss=f"{np.mean(self.losses[-20:]):.4f}")
        elif trainer.state.step % trainer.config.train.log_every == 0:
            get_logger().info("step %d%s  loss %.4f  lr %.2e", trainer.state.step, trainer.step_total_text(),
                              np.mean(self.losses[-trainer.config.train.log_every:]), trainer.current_lr)

    def on_epoch_end(self, trainer: "Trainer", row: HistoryRow) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.losses = []
        validated = f"  val Dice {row.val_dice:.4f}  IoU {row.val_iou:.4f}" if row.validated else ""
        get_logger().info("epoch %d%s  loss %.4f%s  lr %.2e  %.0fs%s", row.epoch, trainer.epoch_total_text(),
                          row.train_loss, validated, row.lr, row.seconds, "  *best*" if trainer.improved else "")


class TensorBoardCallback(Callback):
    """Scalars (loss, learning rate, validation metrics) and a few validation overlays in ``RUN_DIR/tensorboard``
    (needs the ``tensorboard`` package: ``pip install medseg[tensorboard]``)."""

    def __init__(self, images: int = 3) -> None:
        self.images = images
        self.writer = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        if trainer.context.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(trainer.run_dir / "tensorboard"))

    def on_step_end(self, trainer: "Trainer", loss: float) -> None:
        if self.writer is not None and trainer.state.step % trainer.config.train.log_every == 0:
            self.writer.add_scalar("train/loss", loss, trainer.state.step)
            self.writer.add_scalar("train/lr", trainer.current_lr, trainer.state.step)

    def on_epoch_end(self, trainer: "Trainer", row: HistoryRow) -> None:
        if self.writer is None or not row.validated:
            return
        for name in ("dice", "iou", "accuracy"):
            self.writer.add_scalar(f"val/{name}", getattr(row, f"val_{name}"), row.step)
        model = trainer.components.model.eval()
        predictor = Predictor([TorchBackend(model, trainer.device)], validation_spec(trainer))
        for index in trainer.val_indices[: self.images]:
            sample = trainer.data.val[index]
            labels = to_labels(predictor.probabilities(sample.image, sample.statistics), predictor.spec.threshold,
                               predictor.spec.n_classes)
            picture = overlay(sample.image, labels, sample.mask)
            self.writer.add_image(f"val/{sample.id}", picture, row.step, dataformats="HWC")
        model.train()
        self.writer.flush()

    def on_fit_end(self, trainer: "Trainer") -> None:
        if self.writer is not None:
            self.writer.close()


class EpochFunction(Callback):
    """A plain function ``f(epoch, row)`` called after every epoch (the ``on_epoch_end`` argument of train)."""

    def __init__(self, function: Callable[[int, HistoryRow], None]) -> None:
        self.function = function

    def on_epoch_end(self, trainer: "Trainer", row: HistoryRow) -> None:
        self.function(row.epoch, row)


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

    def on_step_end(self, trainer: "Trainer", loss: float) -> None:
        if trainer.state.step == self.step and trainer.context.rank == self.rank:
            get_logger().warning("test hook: sending %s after step %d", self.signal.name, self.step)
            os.kill(os.getpid(), self.signal)

"""The training engine: data -> patches + augmentation -> model/loss/optimizer/schedule -> validation on whole
images -> atomic checkpoints (``checkpoint``, ``best_model``, ``final_model``), history, curves, resume.

Training runs in *rounds*: ``steps_per_epoch`` optimizer steps, then validation and a checkpoint. Every sample's
crop and augmentation are seeded from ``(seed, round, position)``, so a run resumed from a round's checkpoint
continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

import medseg
from medseg.config import Config, load_config, save_config
from medseg.data.datasets import Item, Sample, load_items, load_sample, split_items
from medseg.data.transforms import augment, build_augmentation, normalize, random_patch, resize_sample
from medseg.engine.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from medseg.engine.distributed import (SINGLE_PROCESS, DistributedContext, init_distributed,
                                       parameter_checksum, shutdown_distributed)
from medseg.engine.predict import InferenceSettings, predict_image
from medseg.errors import MedsegError
from medseg.log import get_logger, is_interactive, log_to_file
from medseg.losses import build_loss
from medseg.metrics import MetricAccumulator
from medseg.models import count_parameters, create_model

HISTORY_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_dice", "val_iou", "val_accuracy", "data_wait",
                   "seconds")


def select_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA if available (the process's own GPU under torchrun), else CPU."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise MedsegError("train.device", f"invalid device {spec!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedsegError("train.device", "CUDA requested but not available")
    return device


class SampleStore:
    """Decoded samples of a list of items: all decoded (and validated) up front, kept in memory when they fit in
    ``cache_gb``, else re-read on demand."""

    def __init__(self, items: list[Item], channels: int | None, n_classes: int, cache_gb: float,
                 require_masks: bool = True) -> None:
        self.items, self.channels, self.n_classes = items, channels, n_classes
        self.cache: list[Sample] | None = []
        budget = cache_gb * 2**30
        used = 0
        for item in items:
            sample = load_sample(item, channels, n_classes)
            if require_masks and sample.mask is None:
                raise MedsegError(item.image, "no mask for this image (needed for training and validation)")
            used += sample.image.nbytes + (sample.mask.nbytes if sample.mask is not None else 0)
            if self.cache is not None:
                self.cache.append(sample)
                if used > budget:
                    self.cache = None
        if self.cache is None:
            get_logger().info("dataset larger than data.cache_gb=%.1f: reading images lazily", cache_gb)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        if self.cache is not None:
            return self.cache[index]
        return load_sample(self.items[index], self.channels, self.n_classes)


class PatchDataset(Dataset):
    """Training examples; the key ``(index, seed)`` fixes crop and augmentation. Returns ``image`` float32
    ``C x P x P``, ``mask`` int64 ``P x P`` and ``region`` bool ``P x P``."""

    def __init__(self, store: SampleStore, config: Config) -> None:
        self.store = store
        self.data = config.data
        self.pipeline = build_augmentation(config.augment)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        rng = np.random.default_rng(seed)
        sample = self.store[index]
        if self.data.resize:
            sample = resize_sample(sample, self.data.resize)
        elif self.data.patch_size:
            sample = random_patch(sample, self.data.patch_size, rng, self.data.foreground_p)
        sample = augment(self.pipeline, sample, int(rng.integers(2**31)))
        image = normalize(sample.image, self.data.normalize)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(sample.mask),
            "region": torch.from_numpy(sample.region),
        }


def round_keys(n_items: int, steps: int, batch_size: int, seed: int, round_index: int) -> list[tuple[int, int]]:
    """The ``(index, sample_seed)`` keys of one round: seeded reshuffled passes over the items."""
    rng = np.random.default_rng([seed, round_index])
    needed = steps * batch_size
    indices = np.concatenate([rng.permutation(n_items) for _ in range(math.ceil(needed / n_items))])[:needed]
    seeds = rng.integers(0, 2**31, size=needed)
    return list(zip(indices.tolist(), seeds.tolist()))


def data_fingerprint(items: list[Item]) -> str:
    """A short hash of the training items (ids, files, sizes) recorded with every checkpoint."""
    digest = hashlib.sha256()
    for item in items:
        for path in (item.image, *item.masks):
            digest.update(f"{item.id}|{path.name}|{item.frame}|{path.stat().st_size};".encode())
    return digest.hexdigest()[:16]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_optimizer(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = config.optim
    if o.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               nesterov=o.momentum > 0)
    raise MedsegError("optim.name", f"unknown optimizer {o.name!r}; choose adam, adamw or sgd")


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    o = config.optim
    if o.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if o.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if o.schedule == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=max(1, total_steps), power=o.poly_power)
    if o.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=o.plateau_factor,
                                                          patience=o.plateau_patience)
    raise MedsegError("optim.schedule", f"unknown schedule {o.schedule!r}; choose constant, cosine, poly, plateau")


def validate(model: torch.nn.Module, store: SampleStore, settings: InferenceSettings,
             context: DistributedContext = SINGLE_PROCESS) -> dict[str, float]:
    """Mean per-image Dice, IoU and accuracy of whole validation images (tiled like prediction). Under DDP each
    rank scores a shard and the per-image scores are gathered, so every rank gets the single-process result."""
    model.eval()
    accumulator = MetricAccumulator(n_classes=settings.n_classes, with_hd95=False)
    scores = []
    for index in range(context.rank, len(store), context.world_size):
        sample = store[index]
        labels, _ = predict_image(model, sample.image, settings)
        scores.append((index, accumulator.add(sample.id, labels, sample.mask, sample.region)))
    rows = [row for _, row in sorted(s for shard in context.all_gather(scores) for s in shard)]
    return {name: float(np.nanmean([row[name] for row in rows])) for name in ("dice", "iou", "accuracy")}


@dataclass
class TrainResult:
    run_dir: Path
    best_val_dice: float
    best_epoch: int
    epochs_run: int
    steps_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


RoundCallback = Callable[[int, dict[str, float]], None]


class Trainer:
    """One training run in ``run_dir`` (see module docstring). Use :func:`train`."""

    def __init__(self, config: Config, run_dir: Path, resume: bool = False,
                 on_round_end: RoundCallback | None = None) -> None:
        self.config, self.run_dir, self.on_round_end = config, run_dir, on_round_end
        self.log = get_logger()
        self.context = init_distributed()
        self.device = select_device(config.train.device, self.context.local_rank)
        seed_everything(config.train.seed, config.train.deterministic)
        self._prepare_data()
        out_channels = 1 if config.data.n_classes == 2 else config.data.n_classes
        self.model = create_model(config.model.name, self.channels, out_channels, **config.model_options())
        self.model.to(self.device)
        self.network: torch.nn.Module = self.model
        if self.context.enabled:
            if config.train.sync_batchnorm:
                if self.device.type != "cuda":
                    raise MedsegError("train.sync_batchnorm", "SyncBatchNorm needs CUDA; on CPU use model.options.norm=instance")
                self.network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.network = DistributedDataParallel(
                self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.loss_fn = build_loss(config.loss.name, out_channels, config.loss.ce_weight, config.loss.dice_weight,
                                  config.loss.smooth, config.loss.batch_dice, config.loss.deep_supervision_weights)
        self.global_batch = config.train.batch_size * self.context.world_size
        self.steps_per_round = config.train.steps_per_epoch or math.ceil(len(self.train_store) / self.global_batch)
        if config.train.iterations:
            self.total_steps = config.train.iterations
        else:
            self.total_steps = config.train.epochs * self.steps_per_round
        self.total_rounds = math.ceil(self.total_steps / self.steps_per_round)
        self.optimizer = build_optimizer(config, self.model)
        self.scheduler = build_scheduler(config, self.optimizer, self.total_steps)
        self.use_amp = config.train.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.round, self.step, self.elapsed = 0, 0, 0.0
        self.round_step = 0  # steps already done in the current epoch (non-zero only after an interrupt)
        self.stop = StopRequest()
        self.best_dice, self.best_epoch = -1.0, 0
        self.history: list[dict[str, float]] = []
        if resume:
            self._restore()

    def _prepare_data(self) -> None:
        data = self.config.data
        items = load_items(data.root, data.format)
        splits = split_items(items, data.val_fraction, data.test_fraction, data.split_seed, data.fold, data.folds)
        for name in ("train", "val"):
            if not splits[name]:
                raise MedsegError(data.root, f"the {name} split is empty (check split.csv or data.val_fraction)")
        self.splits = splits
        first = load_sample(splits["train"][0], data.channels, data.n_classes)
        self.channels = data.channels or first.image.shape[2]
        self.log.info("data %s: %d train, %d val, %d test images, %d channel(s), %d classes", data.root,
                      len(splits["train"]), len(splits["val"]), len(splits["test"]), self.channels, data.n_classes)
        self.train_store = SampleStore(splits["train"], self.channels, data.n_classes, data.cache_gb)
        self.val_store = SampleStore(splits["val"], self.channels, data.n_classes, data.cache_gb)
        self.fingerprint = data_fingerprint(splits["train"])

    def inference_settings(self) -> InferenceSettings:
        d = self.config.data
        return InferenceSettings(n_classes=d.n_classes, channels=self.channels, normalize=d.normalize,
                                 patch_size=d.patch_size, resize=d.resize, batch_size=self.config.train.batch_size,
                                 threshold=self.config.train.threshold, device=str(self.device))

    def _meta(self, epoch: int, val_dice: float) -> dict[str, Any]:
        d = self.config.data
        return {
            "model": self.model.spec,
            "data": {"n_classes": d.n_classes, "normalize": d.normalize, "patch_size": d.patch_size,
                     "resize": d.resize, "channels": self.channels},
            "threshold": self.config.train.threshold,
            "class_names": d.class_names or (["background", "foreground"] if d.n_classes == 2
                                             else [f"class_{k}" for k in range(d.n_classes)]),
            "epoch": epoch,
            "step": self.step,
            "val_dice": val_dice,
            "medseg_version": medseg.__version__,
            "training_data": {"root": str(d.root), "fingerprint": self.fingerprint,
                              "train_ids": [i.id for i in self.splits["train"]],
                              "val_ids": [i.id for i in self.splits["val"]],
                              "test_ids": [i.id for i in self.splits["test"]]},
        }

    def _train_state(self) -> dict[str, Any]:
        return {
            "round": self.round, "step": self.step, "elapsed": self.elapsed, "round_step": self.round_step,
            "best_dice": self.best_dice, "best_epoch": self.best_epoch,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
            "history": [dict(row) for row in self.history],
        }

    def _restore(self) -> None:
        path = self.run_dir / "checkpoint.safetensors"
        state, meta, train_state = load_checkpoint(path)
        if train_state is None:
            raise MedsegError(path, "has no training state to resume from")
        if meta.get("model", {}).get("name") != self.model.spec["name"]:
            raise MedsegError(path, f"was written for model {meta.get('model', {}).get('name')!r}, "
                                    f"the config says {self.model.spec['name']!r}")
        try:
            self.model.load_state_dict(state)
        except RuntimeError as exc:
            raise MedsegError(path, f"weights do not fit the model: {str(exc).splitlines()[0]}") from None
        self.optimizer.load_state_dict(train_state["optimizer"])
        self.scheduler.load_state_dict(train_state["scheduler"])
        self.scaler.load_state_dict(train_state["scaler"])
        torch.set_rng_state(train_state["torch_rng"])
        self.round, self.step, self.elapsed = train_state["round"], train_state["step"], train_state["elapsed"]
        self.round_step = train_state.get("round_step", 0)
        self.best_dice, self.best_epoch = train_state["best_dice"], train_state["best_epoch"]
        self.history = train_state["history"]
        self.log.info("resuming %s at epoch %d (step %d, best val Dice %.4f)", self.run_dir, self.round,
                      self.step, self.best_dice)

    def _loader(self, round_index: int, steps: int) -> DataLoader:
        keys = round_keys(len(self.train_store), steps, self.global_batch, self.config.train.seed, round_index)
        keys = keys[self.round_step * self.global_batch:]  # resume inside an interrupted epoch
        view = _KeyedView(PatchDataset(self.train_store, self.config), keys)
        sampler = None
        if self.context.enabled:
            # The round's keys are already reshuffled per epoch; the sampler gives each rank its interleaved shard.
            sampler = DistributedSampler(view, self.context.world_size, self.context.rank, shuffle=False)
        return DataLoader(
            view, batch_size=self.config.train.batch_size, shuffle=False, sampler=sampler,
            num_workers=self.config.data.workers, pin_memory=self.device.type == "cuda",
        )

    def fit(self) -> TrainResult:
        cfg = self.config.train
        self.log.info("model %s: %s parameters on %s; %d steps (%d epochs of %d steps), batch %d",
                      self.model.spec["name"], f"{count_parameters(self.model):,}", self.device, self.total_steps,
                      self.total_rounds, self.steps_per_round, cfg.batch_size)
        interactive = is_interactive()
        while self.round < self.total_rounds:
            started = time.perf_counter()
            steps = min(self.steps_per_round, self.total_steps - self.step + self.round_step)
            try:
                train_loss, data_wait = self._train_round(steps, interactive)
            except KeyboardInterrupt:
                if self.stop.requested:  # stopped cleanly at a step boundary: the state is consistent
                    self._save_interrupted()
                raise
            self.round_step = 0
            metrics = validate(self.model, self.val_store, self.inference_settings(), self.context)
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(metrics["dice"])
            self.round += 1
            self.elapsed += time.perf_counter() - started
            row = {"epoch": self.round, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
                   "train_loss": train_loss, "val_dice": metrics["dice"], "val_iou": metrics["iou"],
                   "val_accuracy": metrics["accuracy"], "data_wait": round(data_wait, 4),
                   "seconds": round(self.elapsed, 2)}
            self.history.append(row)
            improved = metrics["dice"] > self.best_dice
            if improved:
                self.best_dice, self.best_epoch = metrics["dice"], self.round
            if self.context.is_main:
                if improved:
                    save_checkpoint(self.run_dir / "best_model.safetensors", self.model.state_dict(),
                                    self._meta(self.round, metrics["dice"]))
                save_checkpoint(self.run_dir / "checkpoint.safetensors", self.model.state_dict(),
                                self._meta(self.round, metrics["dice"]), self._train_state())
                self._write_history()
            self.context.barrier()
            self.log.info("epoch %d/%d  loss %.4f  val Dice %.4f  IoU %.4f  lr %.2e  %.0fs%s", self.round,
                          self.total_rounds, train_loss, metrics["dice"], metrics["iou"], row["lr"], self.elapsed,
                          "  *best*" if improved else "")
            if self.on_round_end:
                self.on_round_end(self.round, row)
            if self.stop.requested:
                self.log.warning("stopped after epoch %d; continue with `medseg train --resume %s`", self.round,
                                 self.run_dir)
                raise KeyboardInterrupt("stop requested")
            if cfg.max_minutes and self.elapsed > cfg.max_minutes * 60 and self.round < self.total_rounds:
                self.log.info("time budget of %.1f min reached after epoch %d", cfg.max_minutes, self.round)
                break
        if self.context.enabled:
            checksums = self.context.all_gather(parameter_checksum(self.model))
            spread = max(checksums) - min(checksums)
            self.log.info("ranks in sync: %d parameter checksums, max difference %.3g", len(checksums), spread)
            if spread > 1e-6 * max(1.0, abs(checksums[0])):
                raise RuntimeError(f"DDP ranks diverged: parameter checksums {checksums}")
        if self.context.is_main:
            save_checkpoint(self.run_dir / "final_model.safetensors", self.model.state_dict(),
                            self._meta(self.round, self.history[-1]["val_dice"] if self.history else math.nan))
            self._write_curves()
        self.context.barrier()
        self.log.info("done: best val Dice %.4f at epoch %d; run folder %s", self.best_dice, self.best_epoch,
                      self.run_dir)
        return TrainResult(self.run_dir, self.best_dice, self.best_epoch, self.round, self.step, self.elapsed,
                           list(self.history))

    def _save_interrupted(self) -> None:
        if self.context.is_main:
            save_checkpoint(self.run_dir / "checkpoint.safetensors", self.model.state_dict(),
                            self._meta(self.round, math.nan), self._train_state())
            self.log.warning("interrupted: checkpoint saved at epoch %d, step %d; continue with "
                             "`medseg train --resume %s`", self.round + 1, self.step, self.run_dir)

    def _train_round(self, steps: int, interactive: bool) -> tuple[float, float]:
        """Train ``steps`` steps; returns the mean loss and the share of the time spent waiting for data."""
        self.model.train()
        losses = []
        loader = self._loader(self.round, steps)
        bar = None
        if interactive and self.context.is_main:
            from tqdm import tqdm

            bar = tqdm(total=steps - self.round_step, desc=f"epoch {self.round + 1}/{self.total_rounds}",
                       unit="step", leave=False)
        tick = time.perf_counter()
        waiting, fetch_started = 0.0, time.perf_counter()
        for batch in loader:
            waiting += time.perf_counter() - fetch_started
            image = batch["image"].to(self.device, non_blocking=True)
            mask = batch["mask"].to(self.device, non_blocking=True)
            region = batch["region"].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, enabled=self.use_amp):
                loss = self.loss_fn(self.network(image), mask, region)
            if not self.context.all_true(bool(torch.isfinite(loss)), self.device):
                raise MedsegError(self.run_dir, f"loss became {loss.item()} at step {self.step + 1}; stopped. The "
                                  "last good checkpoint is kept (try a lower optim.lr or optim.grad_clip)")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.config.optim.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step()
            self.step += 1
            self.round_step += 1
            losses.append(loss.item())
            self.stop.check()
            fetch_started = time.perf_counter()
            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            elif self.step % self.config.train.log_every == 0:
                rate = len(losses) * self.global_batch / (time.perf_counter() - tick)
                self.log.info("step %d/%d  loss %.4f  %.1f img/s", self.step, self.total_steps,
                              np.mean(losses[-self.config.train.log_every:]), rate)
        if bar is not None:
            bar.close()
        total = time.perf_counter() - tick
        return (float(np.mean(losses)) if losses else math.nan), (waiting / total if total > 0 else 0.0)

    def _write_history(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.run_dir / "history.csv", buffer.getvalue())

    def _write_curves(self) -> None:
        if not self.history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [row["epoch"] for row in self.history]
        fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 3.5))
        ax_loss.plot(epochs, [row["train_loss"] for row in self.history], marker=".")
        ax_loss.set(title="training loss", xlabel="epoch")
        ax_dice.plot(epochs, [row["val_dice"] for row in self.history], marker=".", color="tab:green")
        ax_dice.set(title="validation Dice", xlabel="epoch", ylim=(0, 1))
        fig.tight_layout()
        fig.savefig(self.run_dir / "curves.png", dpi=100)
        plt.close(fig)


class _KeyedView(Dataset):
    """A dataset view that maps positions to the round's ``(index, seed)`` keys."""

    def __init__(self, dataset: PatchDataset, keys: list[tuple[int, int]]) -> None:
        self.dataset, self.keys = dataset, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return self.dataset[self.keys[position]]


class StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks the training loop to stop at the next step boundary (so the
    saved state is consistent); a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"signal {signum}")
        self.requested = True
        get_logger().warning("stop requested (signal %d): finishing the current step", signum)

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt("stop requested")


def train(config: Config | None, run_dir: str | Path, resume: bool = False,
          on_round_end: RoundCallback | None = None) -> TrainResult:
    """Train (or, with ``resume``, continue) a run in ``run_dir``. When resuming, the run's saved config is used."""
    run_dir = Path(run_dir)
    context = init_distributed()
    if not context.is_main:
        get_logger().setLevel("WARNING")
    if resume:
        if not (run_dir / "checkpoint.safetensors").is_file():
            raise MedsegError(run_dir, "no checkpoint.safetensors to resume from")
        config = load_config(run_dir / "config.yaml")
    elif config is None:
        raise ValueError("config is required unless resuming")
    elif (run_dir / "checkpoint.safetensors").exists():
        raise MedsegError(run_dir, "already holds a run; use --resume to continue it or choose another --out")
    if not config.data.root:
        raise MedsegError("data.root", "no dataset given (--data DIR)")
    context.barrier()  # every rank has checked the folder before rank 0 writes to it
    handler = None
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = log_to_file(run_dir / "train.log")
    stop = StopRequest()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if context.is_main and not resume:
            save_config(config, run_dir / "config.yaml")
        trainer = Trainer(config, run_dir, resume, on_round_end)
        trainer.stop = stop
        return trainer.fit()
    finally:
        for sig, previous_handler in previous.items():
            signal.signal(sig, previous_handler)
        if handler is not None:
            get_logger().removeHandler(handler)
            handler.close()
        if context.enabled:
            shutdown_distributed()



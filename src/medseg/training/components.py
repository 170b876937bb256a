"""What a training run is built from, made from the config: the data (splits, decoded stores, the data record),
device, model (wrapped for DDP), loss, optimizer, learning-rate schedule, gradient scaler, and the per-epoch
data loaders."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from medseg.config import Config, OptimConfig
from medseg.data.datasets import Item, Splits, input_channels, split_items
from medseg.data.fingerprint import MAX_SAMPLES, Fingerprint, compute_fingerprint, dataset_hash, spread
from medseg.data.store import PatchDataset, SampleStore, epoch_keys
from medseg.device import autocast_dtype, configure_backends, training_memory_format
from medseg.run.contract import DataRecord, SplitIds
from medseg.distributed import DistributedContext
from medseg.training.schedule import LearningRateSchedule
from medseg.errors import MedsegError
from medseg.log import get_logger
from medseg.losses import build_loss
from medseg.models import create_model


@dataclass
class TrainingData:
    splits: Splits
    channels: int
    train: SampleStore
    val: SampleStore
    record: DataRecord


def prepare_data(config: Config, items: list[Item], fingerprint: Fingerprint | None = None) -> TrainingData:
    """Splits of the dataset's ``items`` and their decoded stores; the data record (hash, split ids and
    fingerprint) for the contract."""
    data = config.data
    splits = split_items(items, data.val_fraction, data.test_fraction, data.split_seed, data.fold, data.folds)
    if not splits.train:
        raise MedsegError(data.root, "the train split is empty (check split.csv)")
    if not splits.val and data.fold != "all":
        raise MedsegError(data.root, "the val split is empty (check split.csv or data.val_fraction; "
                                     "--fold all trains on every labelled image without validation)")
    channels = input_channels(config, splits, fingerprint.channels if fingerprint else None)
    train_store = SampleStore(splits.train, channels, data.n_classes, data.cache_gb, data.spacing, data.scale,
                              data.normalize)
    # validation images stay at their own resolution: the predictor resamples them by the scale, as for any image
    val_store = SampleStore(splits.val, channels, data.n_classes, data.cache_gb, data.spacing,
                            normalize=data.normalize)
    if fingerprint is None:  # streamed: one decoded sample at a time
        labelled = itertools.chain((train_store[i] for i in spread(len(train_store))),
                                   (val_store[i] for i in spread(len(val_store), MAX_SAMPLES // 4)))
        fingerprint = compute_fingerprint(labelled, data.n_classes)
    ids = SplitIds(*(tuple(i.id for i in part) for part in (splits.train, splits.val, splits.test)))
    record = DataRecord(str(data.root), data.format, dataset_hash(splits.train + splits.val + splits.test), ids,
                        fingerprint)
    get_logger().info("data %s: %d train, %d val, %d test images, %d channel(s), %d classes", data.root,
                      len(splits.train), len(splits.val), len(splits.test), channels, data.n_classes)
    return TrainingData(splits, channels, train_store, val_store, record)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seeds every generator, and sets the backends for reproducibility or for speed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    configure_backends(deterministic)


def output_channels(n_classes: int) -> int:
    """One sigmoid output for a binary task, else one softmax output per class."""
    return 1 if n_classes == 2 else n_classes


def build_optimizer(optim: OptimConfig, parameters: Any) -> torch.optim.Optimizer:
    if optim.name == "adam":
        return torch.optim.Adam(parameters, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.name == "adamw":
        return torch.optim.AdamW(parameters, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(parameters, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                           nesterov=optim.momentum > 0)


@dataclass
class Components:
    """``model`` holds the weights; ``network`` is what the forward pass runs (the model, or its DDP wrapper)."""

    model: nn.Module
    network: nn.Module
    loss: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LearningRateSchedule
    scaler: torch.amp.GradScaler
    autocast: torch.dtype | None  # the forward pass's mixed precision (None: float32)


def build_components(config: Config, channels: int, device: torch.device,
                     context: DistributedContext) -> Components:
    out_channels = output_channels(config.data.n_classes)
    model = create_model(config.model.name, channels, out_channels, **config.model.zoo_options())
    model = model.to(device, memory_format=training_memory_format(device))
    network: nn.Module = model
    if context.enabled:
        if config.train.sync_batchnorm:
            if device.type != "cuda":
                raise MedsegError("train.sync_batchnorm", "SyncBatchNorm needs CUDA; on CPU use "
                                                          "model.options.norm=instance")
            network = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        network = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
    loss = config.loss
    autocast = autocast_dtype(device, config.train.amp, config.train.cpu_bf16)
    return Components(
        model=model,
        network=network,
        loss=build_loss(loss.name, out_channels, loss.ce_weight, loss.dice_weight, loss.smooth, loss.batch_dice,
                        loss.deep_supervision_weights),
        optimizer=build_optimizer(config.optim, model.parameters()),
        schedule=LearningRateSchedule(config.optim),
        scaler=torch.amp.GradScaler("cuda", enabled=autocast == torch.float16),
        autocast=autocast,
    )


def epoch_loader(store: SampleStore, config: Config, epoch: int, steps: int, skip_steps: int,
                 context: DistributedContext, device: torch.device) -> DataLoader:
    """The batches of one epoch (``steps`` steps of the global batch), skipping the first ``skip_steps`` steps
    when resuming inside an interrupted epoch. Under DDP each rank gets an interleaved shard of every batch."""
    global_batch = config.train.batch_size * context.world_size
    keys = epoch_keys(len(store), steps, global_batch, config.train.seed, epoch)[skip_steps * global_batch:]
    dataset = PatchDataset(store, config.data, config.augment, keys)
    sampler = DistributedSampler(dataset, context.world_size, context.rank, shuffle=False) if context.enabled else None
    return DataLoader(dataset, batch_size=config.train.batch_size, shuffle=False, sampler=sampler,
                      num_workers=config.data.workers, pin_memory=device.type == "cuda")

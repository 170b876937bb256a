"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

from medseg.config import Config


def tiny_config(data: Path, epochs: int = 3, steps: int = 2) -> Config:
    """A config that trains a 3-level, width-4..16 U-Net on 32x32 patches in seconds."""
    config = Config()
    config.data.root = str(data)
    config.data.patch_size = 32
    config.model.widths = [4, 8, 16]
    config.train.epochs = epochs
    config.train.steps_per_epoch = steps
    config.train.batch_size = 2
    config.train.val_time_share = None  # validate after every epoch
    config.train.tensorboard = False
    config.optim.warmup_steps = 0
    return config


def contract_for(model, n_classes: int = 2, patch_size: int | None = 32, class_names=None):
    """A run contract for a bare model, as training would write it."""
    from medseg.run.contract import (DataRecord, InferenceSpec, PostprocessSpec, SplitIds, default_class_names,
                                        new_contract)

    inference = InferenceSpec(n_classes=n_classes, channels=model.spec.in_channels, normalize="zscore",
                              patch_size=patch_size, resize=None, threshold=0.5, tta=False, tta_vflip=True,
                              overlap=0.5, postprocess=PostprocessSpec(),
                              class_names=tuple(class_names or default_class_names(n_classes)))
    data = DataRecord("", "folder", "", SplitIds((), (), ()), None)
    return new_contract(model.spec, inference, data, None, "best_model")


def save_model(path, model, **contract_options):
    """``model`` as a weights file with a contract (epoch 0)."""
    from medseg.run.weights import WeightsInfo, save_checkpoint

    save_checkpoint(path, model.state_dict(), contract_for(model, **contract_options), WeightsInfo(0, 0, 0.0, 0.0))
    return path

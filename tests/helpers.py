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
    return config

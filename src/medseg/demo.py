"""The built-in demo: synthetic cells -> train a small U-Net on a time budget -> evaluate on the held-out split."""

from __future__ import annotations

import time
from pathlib import Path

from medseg.config import Config
from medseg.data.synthetic import make_synthetic_dataset
from medseg.engine.evaluate import evaluate
from medseg.engine.train import train
from medseg.log import get_logger


def demo_config(data: Path, minutes: float) -> Config:
    config = Config()
    config.data.root = str(data)
    config.data.patch_size = 128
    config.model.name = "unet"
    config.model.widths = [8, 16, 32, 64]
    config.train.batch_size = 8
    config.train.steps_per_epoch = 50
    config.train.budget_minutes = minutes
    config.train.seed = 0
    config.optim.lr = 3e-3
    config.augment.elastic_p = 0.2
    return config


def run_demo(out: str | Path, minutes: float = 1.5) -> dict:
    """Run the demo into ``out`` (a fresh run each time: data/, run/, eval/); returns the test summary."""
    log = get_logger()
    out = Path(out)
    started = time.perf_counter()
    data = make_synthetic_dataset(out / "data")
    run_dir = out / "run"
    if run_dir.exists():
        for leftover in run_dir.iterdir():
            leftover.unlink()
    log.info("demo: synthetic dataset in %s; training for %.1f min", data, minutes)
    result = train(demo_config(data, minutes), run_dir)
    summary = evaluate(run_dir, data, out / "eval", split="test")
    dice = summary.metrics["dice"]
    total = time.perf_counter() - started
    print()
    print(f"medseg demo finished in {total / 60:.1f} min ({result.epochs_run} epochs, {result.steps_run} steps)")
    print(f"  test Dice {dice['mean']:.4f} +/- {dice['std']:.4f} over {summary.n_images} held-out images "
          f"(IoU {summary.metrics['iou']['mean']:.4f}, HD95 {summary.metrics['hd95']['mean']:.2f} px)")
    print(f"  report:   {out / 'eval' / 'summary.json'}  and  {out / 'eval' / 'per_image.csv'}")
    print(f"  overlays: {out / 'eval' / 'overlays.png'}")
    print(f"  curves:   {run_dir / 'curves.png'}")
    return summary.to_dict()

"""The built-in demo, the main job on built-in data: synthetic cells -> plan for a time budget -> train to the
deadline -> evaluate on the held-out split (what `medseg train --data DIR --budget 1.5m` does)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from medseg.data.synthetic import make_synthetic_dataset
from medseg.inference.evaluate import EvaluationSummary
from medseg.workflow import TrainRequest, train_run
from medseg.log import get_logger
from medseg.run.folder import RunFolder


def run_demo(out: str | Path, minutes: float = 1.5) -> EvaluationSummary:
    """Run the demo into ``out`` (data/, run/ with run/eval/), continuing an interrupted one; returns the test
    summary."""
    out = Path(out)
    started = time.perf_counter()
    data = make_synthetic_dataset(out / "data")
    run_dir = out / "run"
    if RunFolder(run_dir).finished:  # a finished demo runs again; an interrupted one continues
        shutil.rmtree(run_dir)
    get_logger().info("demo: synthetic dataset in %s; planning and training for %.1f min", data, minutes)
    outcome = train_run(TrainRequest(out=run_dir, overrides=(f"data.root={data}", "train.seed=0"),
                                     budget_minutes=minutes, resume="auto"))
    summary, result = outcome.test, outcome.train
    dice, total = summary.metrics["dice"], time.perf_counter() - started
    print()
    print(f"medseg demo finished in {total / 60:.1f} min ({result.steps_run} steps in {result.seconds:.0f} s, "
          f"{result.selected} weights)")
    print(f"  test Dice {dice['mean']:.4f} +/- {dice['std']:.4f} over {summary.n_images} held-out images "
          f"(pooled {dice['pooled']:.4f}, IoU {summary.metrics['iou']['mean']:.4f}, "
          f"HD95 {summary.metrics['hd95']['mean']:.2f} px)")
    print(f"  plan:     {run_dir / 'plan.yaml'}")
    print(f"  report:   {run_dir / 'eval' / 'summary.json'}  and  {run_dir / 'eval' / 'per_image.csv'}")
    print(f"  overlays: {run_dir / 'eval' / 'overlays.png'}")
    print(f"  curves:   {run_dir / 'curves.png'}")
    return summary

"""The gain of a k-fold ensemble over its single folds, on the test split, at a stated budget.

    python benchmarks/ensemble.py --datasets busi,chase_db1 --budget 10 --folds 5 --out ensemble.json

For each dataset: `medseg train --data D --folds K --budget B` (a planned cross-validation; the budget covers all
folds), then `medseg evaluate` of every single fold and of the ensemble on the test split. Prints a table (test
Dice per single fold, their mean, the ensemble, the gain) and the cross-validation summary, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def medseg(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"medseg {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def evaluate(run: Path, data: Path, out: Path, folds: str | None) -> dict[str, float]:
    medseg("evaluate", str(run), "--data", str(data), "--out", str(out), *(["--folds", folds] if folds else []))
    dice = json.loads((out / "summary.json").read_text())["metrics"]["dice"]
    return {"mean": dice["mean"], "pooled": dice["pooled"]}


def measure(name: str, budget: float, folds: int, work: Path) -> dict[str, Any]:
    data, run = SHARED / name, work / f"cv_{name}"
    started = time.perf_counter()
    if not (run / "cv_summary.json").is_file():
        medseg("train", "--data", str(data), "--folds", str(folds), "--budget", f"{budget}m", "--out", str(run))
    trained = time.perf_counter() - started
    single = [evaluate(run, data, run / f"eval_fold{k}", str(k)) for k in range(folds)]
    ensemble = evaluate(run, data, run / "eval_ensemble", None)
    cv = json.loads((run / "cv_summary.json").read_text())
    return {"dataset": name, "budget_minutes": budget, "folds": folds, "train_seconds": trained,
            "single": single, "ensemble": ensemble, "cv_dice": cv["metrics"]["dice"], "cv_fold_dice": cv["fold_dice"],
            "postprocess": cv["postprocess"], "threshold": cv["threshold"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="busi,chase_db1")
    parser.add_argument("--budget", type=float, default=10.0, help="minutes for all folds together")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--work", default="/tmp/medseg-ensemble")
    parser.add_argument("--out", default="ensemble.json")
    args = parser.parse_args()
    rows = [measure(name, args.budget, args.folds, Path(args.work)) for name in args.datasets.split(",")]
    print("| dataset | budget (min, all folds) | single folds: test Dice (mean per image) | their mean | "
          "ensemble | gain | pooled: single mean / ensemble | out-of-fold CV Dice (fold spread) |")
    print("|---|---:|---|---:|---:|---:|---|---|")
    for row in rows:
        means = [s["mean"] for s in row["single"]]
        pooled = [s["pooled"] for s in row["single"]]
        single_mean, single_pooled = sum(means) / len(means), sum(pooled) / len(pooled)
        row["gain_mean"] = row["ensemble"]["mean"] - single_mean
        row["gain_pooled"] = row["ensemble"]["pooled"] - single_pooled
        cv = row["cv_dice"]
        spread = max(row["cv_fold_dice"]) - min(row["cv_fold_dice"])
        print(f"| {row['dataset']} | {row['budget_minutes']:g} | {', '.join(f'{m:.3f}' for m in means)} | "
              f"{single_mean:.4f} | {row['ensemble']['mean']:.4f} | {row['gain_mean']:+.4f} | "
              f"{single_pooled:.4f} / {row['ensemble']['pooled']:.4f} | {cv['mean']:.4f} +/- {cv['std']:.4f} "
              f"(fold means {min(row['cv_fold_dice']):.3f}-{max(row['cv_fold_dice']):.3f}, range {spread:.3f}) |")
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

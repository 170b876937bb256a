"""`medseg compare`: train every model with one protocol on one split, select each on validation, evaluate each on
the test split only, and aggregate over seeds with confidence intervals and paired tests. Resumable: finished
runs are kept, interrupted ones resumed. Shardable: ``--shard i/N`` processes share one study folder, each run
claimed by one process at a time (:mod:`medseg.claims`); a final call without a shard finishes and reports.

STUDY_DIR layout::

    study.json                   the protocol (models, seeds, base config); a different protocol is refused
    runs/<model>/seed<k>/        a normal run folder, plus eval/ (test-split report) and record.json (done marker)
    results.csv/.json/.md, pairs.csv, *.png, report.html   (see medseg.study.report)
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medseg.claims import CLAIM_FILE, shard_order, try_claim
from medseg.config import Config, load_config
from medseg.run.folder import RunFolder
from medseg.run.weights import load_checkpoint, load_model
from medseg.inference.evaluate import EvaluationSummary, evaluate
from medseg.training.trainer import train
from medseg.errors import MedsegError
from medseg.files import atomic_create_json, atomic_write_json, csv_float, read_csv, read_json
from medseg.log import get_logger
from medseg.models import count_gflops, count_parameters, measure_latency
from medseg.stats import PairedComparison, all_pairs, bootstrap_mean_ci, rank_with_ties

REPORTED_METRICS = ("dice", "iou", "accuracy", "precision", "recall", "hd95")
EVAL_ONLY_OPTIONS = ("prune_depth",)  # change how a trained network runs, not what is trained


@dataclass(frozen=True)
class ModelChoice:
    """``name:key=value:key=value`` from the command line: a zoo name plus options."""

    label: str
    name: str
    options: dict[str, Any]

    @classmethod
    def parse(cls, text: str) -> "ModelChoice":
        name, *pairs = text.strip().split(":")
        options = {}
        for pair in pairs:
            if "=" not in pair:
                raise MedsegError("--models", f"expected name:key=value, got {text!r}")
            key, value = pair.split("=", 1)
            options[key] = yaml.safe_load(value)
        return cls(text.strip(), name, options)

    @property
    def folder(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.label.replace(":", "__"))

    @property
    def prune_depth(self) -> int | None:
        return self.options.get("prune_depth")

    def trained_as(self) -> "ModelChoice":
        """The choice whose training this one shares: the same without eval-only options (UNet++ pruning is
        applied to the fully trained network, as in the paper)."""
        options = {k: v for k, v in self.options.items() if k not in EVAL_ONLY_OPTIONS}
        label = ":".join([self.name] + [f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                        for k, v in options.items()])
        return ModelChoice(label, self.name, options)


@dataclass
class StudySpec:
    data: str
    models: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    budget_minutes: float | None = None
    epochs: int | None = None

    def base_config(self) -> Config:
        config = load_config(self.config, self.overrides)
        config.data.root = self.data
        if self.epochs is not None:
            config.train.epochs = self.epochs
        if self.budget_minutes is not None:
            config.train.budget_minutes = self.budget_minutes
        if config.data.test_fraction <= 0:
            config.data.test_fraction = 0.2  # only used when the dataset has no test split of its own
        return config

    def run_config(self, choice: ModelChoice, seed: int) -> Config:
        config = self.base_config().model_copy(deep=True)
        config.model.name = choice.name
        config.model.options = {**config.model.options, **choice.options}
        config.train.seed = seed
        return config


def _record(train_dir: Path, choice: ModelChoice, seed: int, config: Config,
            summary: EvaluationSummary) -> dict[str, Any]:
    final = load_checkpoint(train_dir / "final_model.safetensors").info
    model, contract = load_model(train_dir / "final_model.safetensors", prune_depth=choice.prune_depth)
    channels = contract.model.in_channels
    size = config.data.resize or config.data.patch_size or 256
    record: dict[str, Any] = {
        "model": choice.label, "seed": seed, "params": count_parameters(model),
        "gflops": count_gflops(model, channels, (size, size)), "input_size": size,
        "cpu_latency_ms": 1000 * measure_latency(model, channels, (size, size), "cpu"),
        "gpu_latency_ms": (1000 * measure_latency(model.cuda(), channels, (size, size), "cuda")
                           if torch.cuda.is_available() else None),
        "train_seconds": final.seconds, "epochs": final.epoch, "steps": final.step, "weights": contract.selected,
        "n_test_images": summary.n_images, "trained_in": str(train_dir), "prune_depth": choice.prune_depth,
    }
    for name in REPORTED_METRICS:
        record[name] = summary.metrics[name]["mean"]
        record[f"{name}_pooled"] = summary.metrics[name]["pooled"]
    if len(summary.class_names) > 2:  # multi-class: Dice of each foreground class beside their mean
        record["class_names"] = list(summary.class_names)
        record.update({f"dice_c{k}": summary.metrics[f"dice_c{k}"]["mean"] for k in range(1, len(summary.class_names))
                       if f"dice_c{k}" in summary.metrics})
    return record


def _check_protocol(spec: StudySpec, out: Path) -> None:
    """Write ``study.json``, or check that the folder's study has the same protocol."""
    protocol = asdict(spec)
    spec_path = out / "study.json"
    if spec_path.is_file():
        if read_json(spec_path, "study protocol") != protocol:
            raise MedsegError(spec_path, "this folder holds a study with a different protocol; choose another --out")
        return
    spec.base_config()  # validate before writing anything
    if not atomic_create_json(spec_path, protocol):  # another shard created it first
        _check_protocol(spec, out)


def run_study(spec: StudySpec, out: str | Path, shard: tuple[int, int] | None = None) -> list[dict[str, Any]] | None:
    """Run (or resume) the study into ``out``; returns one aggregated row per model once every run is done and
    reported. With ``shard``, only train and evaluate what no other process holds (no report; None)."""
    from medseg.study.report import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    choices = [ModelChoice.parse(m) for m in spec.models]
    if len({c.folder for c in choices}) != len(choices):
        raise MedsegError("--models", "the same model is listed twice")
    _check_protocol(spec, out)
    trainings = list({(c.trained_as().folder, seed): (c.trained_as(), seed)
                      for c in choices for seed in spec.seeds}.values())
    evaluations = [(c, seed) for c in choices for seed in spec.seeds]
    for index in shard_order(len(trainings), shard):
        trained, seed = trainings[index]
        _train_one(spec, trained, seed, out)
        for choice, _ in [e for e in evaluations if e[1] == seed and e[0].trained_as().folder == trained.folder]:
            _evaluate_one(spec, choice, seed, out)
    for index in shard_order(len(evaluations), shard):  # what other shards trained
        _evaluate_one(spec, *evaluations[index], out)
    records = [_read_record(out, c, seed) for c, seed in evaluations]
    if shard is not None or any(r is None for r in records):
        get_logger().info("study: %d of %d runs done; run again without --shard to finish and report",
                          sum(r is not None for r in records), len(records))
        return None
    rows = aggregate(records, [c.label for c in choices])
    pairs = add_statistics(rows, {c.label: test_scores(out, c, spec.seeds) for c in choices})
    write_report(out, spec, rows, records, choices, pairs)
    return rows


def _train_one(spec: StudySpec, trained: ModelChoice, seed: int, out: Path) -> None:
    """Train (or resume) one network, unless it is done or another process holds it."""
    train_dir = out / "runs" / trained.folder / f"seed{seed}"
    claim = try_claim(train_dir, f"{trained.label} seed {seed}")
    if claim is None:
        get_logger().info("study: %s seed %d is being trained by another process", trained.label, seed)
        return
    with claim:
        if RunFolder(train_dir).finished:
            return
        if (train_dir / "checkpoint.safetensors").is_file():
            get_logger().info("study: resuming %s seed %d", trained.label, seed)
            train(None, train_dir, resume=True)
            return
        get_logger().info("study: training %s seed %d", trained.label, seed)
        for leftover in train_dir.iterdir():  # a run that died before its first checkpoint
            if leftover.is_file() and leftover.name != CLAIM_FILE:
                leftover.unlink()
        train(spec.run_config(trained, seed), train_dir)


def _evaluate_one(spec: StudySpec, choice: ModelChoice, seed: int, out: Path) -> None:
    """Evaluate one (model, seed) on the test split once its network is trained."""
    run_dir = out / "runs" / choice.folder / f"seed{seed}"
    train_dir = out / "runs" / choice.trained_as().folder / f"seed{seed}"
    if (run_dir / "record.json").is_file() or not RunFolder(train_dir).finished:
        return
    claim = try_claim(run_dir / "eval", f"{choice.label} seed {seed} evaluation")
    if claim is None:
        return
    with claim:
        if (run_dir / "record.json").is_file():
            return
        summary = evaluate(train_dir, spec.data, run_dir / "eval", split="test", max_overlays=0,
                           prune_depth=choice.prune_depth)
        record = _record(train_dir, choice, seed, spec.run_config(choice.trained_as(), seed), summary)
        atomic_write_json(run_dir / "record.json", record)


def _read_record(out: Path, choice: ModelChoice, seed: int) -> dict[str, Any] | None:
    path = out / "runs" / choice.folder / f"seed{seed}" / "record.json"
    return read_json(path, "study record") if path.is_file() else None


def aggregate(records: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """One row per model: mean over seeds of every numeric field, plus ``<field>_std`` (NaN for one seed)."""
    rows = []
    for label in labels:
        mine = [r for r in records if r["model"] == label]
        row: dict[str, Any] = {"model": label, "seeds": len(mine)}
        for key in mine[0]:
            if key in ("model", "seed", "gpu_latency_ms") or not isinstance(mine[0][key], (int, float)):
                continue
            values = np.array([r[key] for r in mine], dtype=np.float64)
            row[key] = float(np.nanmean(values)) if not np.all(np.isnan(values)) else math.nan
            row[f"{key}_std"] = float(np.nanstd(values)) if len(mine) > 1 else math.nan
        gpu = [r["gpu_latency_ms"] for r in mine if r.get("gpu_latency_ms") is not None]
        row["gpu_latency_ms"] = float(np.mean(gpu)) if gpu else None  # shards may run on machines without one
        rows.append(row)
    return rows


def test_scores(out: Path, choice: ModelChoice, seeds: list[int], metric: str = "dice") -> np.ndarray:
    """``seeds x images`` per-image test scores of a model (images in id order)."""
    rows = []
    for seed in seeds:
        per_image = {r["id"]: csv_float(r[metric])
                     for r in read_csv(out / "runs" / choice.folder / f"seed{seed}" / "eval" / "per_image.csv")}
        rows.append([per_image[i] for i in sorted(per_image)])
    return np.array(rows, dtype=np.float64)


def add_statistics(rows: list[dict[str, Any]], scores: dict[str, np.ndarray]) -> list[PairedComparison]:
    """Add each model's bootstrap 95% interval of test Dice (over images, and seeds when several) and its rank
    (tied where intervals overlap) to ``rows``; return every paired comparison, Holm-corrected."""
    intervals = {label: bootstrap_mean_ci(matrix) for label, matrix in scores.items()}
    means = {label: float(np.nanmean(matrix)) for label, matrix in scores.items()}
    ranks = rank_with_ties(means, intervals)
    for row in rows:
        row["dice_ci_low"], row["dice_ci_high"] = intervals[row["model"]]
        row["rank"] = ranks[row["model"]]
    return all_pairs(scores)


def parse_models(text: str) -> list[str]:
    """Split ``--models`` on commas (options use ':' so commas are free)."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise MedsegError("--models", "no models given")
    return models




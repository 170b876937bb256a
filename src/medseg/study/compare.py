"""`medseg compare`: train every model with one protocol on one split, select each on validation, evaluate each on
the test split only, and aggregate over seeds. Resumable: finished runs are kept, interrupted ones resumed.

STUDY_DIR layout::

    study.json                   the protocol (models, seeds, base config); a different protocol is refused
    runs/<model>/seed<k>/        a normal run folder, plus eval/ (test-split report) and record.json (done marker)
    results.csv/.json/.md, *.png, report.html   (see medseg.study.report)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medseg.config import Config, load_config
from medseg.engine.checkpoint import load_checkpoint, load_model
from medseg.engine.evaluate import EvaluationSummary, evaluate
from medseg.engine.train import train
from medseg.errors import MedsegError
from medseg.files import atomic_write_json
from medseg.log import get_logger
from medseg.models import count_gflops, count_parameters, measure_latency

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
    return record


def run_study(spec: StudySpec, out: str | Path) -> list[dict[str, Any]]:
    """Run (or resume) the study into ``out`` and write its report; returns one aggregated row per model."""
    from medseg.study.report import write_report

    log = get_logger()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    choices = [ModelChoice.parse(m) for m in spec.models]
    if len({c.folder for c in choices}) != len(choices):
        raise MedsegError("--models", "the same model is listed twice")
    protocol = asdict(spec)
    spec_path = out / "study.json"
    if spec_path.is_file():
        previous = json.loads(spec_path.read_text())
        if previous != protocol:
            raise MedsegError(spec_path, "this folder holds a study with a different protocol; choose another --out")
    else:
        spec.base_config()  # validate before writing anything
        atomic_write_json(spec_path, protocol)
    records = []
    for choice in choices:
        for seed in spec.seeds:
            records.append(_run_one(spec, choice, seed, out / "runs" / choice.folder / f"seed{seed}", log))
    rows = aggregate(records, [c.label for c in choices])
    write_report(out, spec, rows, records, choices)
    return rows


def _run_one(spec: StudySpec, choice: ModelChoice, seed: int, run_dir: Path, log) -> dict[str, Any]:
    record_path = run_dir / "record.json"
    if record_path.is_file():
        log.info("study: %s seed %d already done", choice.label, seed)
        return json.loads(record_path.read_text())
    trained = choice.trained_as()
    train_dir = run_dir.parent.parent / trained.folder / f"seed{seed}"
    config = spec.run_config(trained, seed)
    if (train_dir / "final_model.safetensors").is_file():
        log.info("study: %s seed %d uses the trained %s", choice.label, seed, trained.label)
    elif (train_dir / "checkpoint.safetensors").is_file():
        log.info("study: resuming %s seed %d", trained.label, seed)
        train(None, train_dir, resume=True)
    else:
        log.info("study: training %s seed %d", trained.label, seed)
        if train_dir.exists():
            for leftover in train_dir.iterdir():
                if leftover.is_file():
                    leftover.unlink()
        train(config, train_dir)
    summary = evaluate(train_dir, spec.data, run_dir / "eval", split="test", max_overlays=0,
                       prune_depth=choice.prune_depth)
    record = _record(train_dir, choice, seed, config, summary)
    atomic_write_json(record_path, record)
    return record


def aggregate(records: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """One row per model: mean over seeds of every numeric field, plus ``<field>_std`` (NaN for one seed)."""
    rows = []
    for label in labels:
        mine = [r for r in records if r["model"] == label]
        row: dict[str, Any] = {"model": label, "seeds": len(mine)}
        for key in mine[0]:
            if key in ("model", "seed") or not isinstance(mine[0][key], (int, float)) or mine[0][key] is None:
                continue
            values = np.array([r[key] for r in mine], dtype=np.float64)
            row[key] = float(np.nanmean(values)) if not np.all(np.isnan(values)) else math.nan
            row[f"{key}_std"] = float(np.nanstd(values)) if len(mine) > 1 else math.nan
        row["gpu_latency_ms"] = (float(np.mean([r["gpu_latency_ms"] for r in mine]))
                                 if mine[0].get("gpu_latency_ms") is not None else None)
        rows.append(row)
    return rows


def parse_models(text: str) -> list[str]:
    """Split ``--models`` on commas (options use ':' so commas are free)."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise MedsegError("--models", "no models given")
    return models




"""A study's typed files and where they lie: the protocol (``study.json``), each run's record (``record.json``), each
model's row aggregated over seeds, and the names of the study folder's files.

STUDY_DIR layout::

    study.json                   the protocol (models, seeds, base config, schedule)
    runs/<model>/seed<k>/        a run folder (its eval/ the test-split evaluation), plus record.json (done marker)
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml
from pydantic import ConfigDict

from medseg.config import Config, load_config
from medseg.errors import MedsegError
from medseg.files import read_mapping
from medseg.run.contract import WeightsName
from medseg.run.folder import RunFolder
from medseg.typed_file import TypedFile

REPORTED_METRICS = ("dice", "iou", "accuracy", "precision", "recall", "hd95")
_CLASS_DICE = re.compile(r"dice_c(\d+)")
_NOT_AVERAGED = ("model", "seed", "gpu_latency_ms")  # labels, and a latency only some machines measure


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
    """The protocol every run of a study shares, stored as ``study.json``: the data, models and seeds, the base
    config and its overrides (those `medseg train` flags give, :func:`medseg.cli.run_overrides`: the epochs or
    iterations among them) and the training time per run (None: the config's steps)."""

    __pydantic_config__ = ConfigDict(extra="forbid")
    data: str
    models: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    budget_minutes: float | None = None

    def base_config(self) -> Config:
        config = load_config(self.config, self.overrides)
        config.data.root = self.data
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


PROTOCOL_FILE = TypedFile(StudySpec, "study protocol")


class StudyFolder:
    """A study folder and the paths of its files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def protocol(self) -> Path:
        return self.path / "study.json"

    def run(self, folder: str, seed: int) -> RunFolder:
        """``runs/<folder>/seed<k>``: a model's training (or, for an eval-only option, its evaluation)."""
        return RunFolder(self.path / "runs" / folder / f"seed{seed}")

    def record(self, folder: str, seed: int) -> Path:
        return self.run(folder, seed).path / "record.json"

    def per_image(self, folder: str, seed: int) -> Path:
        """The per-image test scores of a (model, seed)."""
        return self.run(folder, seed).evaluation / "per_image.csv"


@dataclass(frozen=True)
class StudyRecord:
    """One (model, seed) of a study: its network's size and speed at the input size, its training, and its test
    scores (per-image means; ``*_pooled`` over all test pixels). Multi-class runs add the class names and each
    foreground class's Dice, stored flat as ``dice_c<k>``."""

    __pydantic_config__ = ConfigDict(extra="forbid")
    model: str
    seed: int
    params: int
    gflops: float
    input_size: int
    cpu_latency_ms: float
    gpu_latency_ms: float | None
    train_seconds: float
    epochs: int
    steps: int
    weights: WeightsName
    n_test_images: int
    trained_in: str
    prune_depth: int | None
    dice: float
    dice_pooled: float
    iou: float
    iou_pooled: float
    accuracy: float
    accuracy_pooled: float
    precision: float
    precision_pooled: float
    recall: float
    recall_pooled: float
    hd95: float
    hd95_pooled: float
    class_names: tuple[str, ...] | None = None
    class_dice: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The record as ``record.json`` and ``results.json`` hold it (per-class Dice flat, after the names)."""
        flat = asdict(self)
        names, per_class = flat.pop("class_names"), flat.pop("class_dice")
        if names is not None:
            flat["class_names"] = list(names)
        return flat | {f"dice_c{k}": dice for k, dice in per_class.items()}

    def numbers(self) -> dict[str, float]:
        """The fields averaged over seeds, by their ``to_dict`` names: every number but the seed and GPU latency."""
        return {key: value for key, value in self.to_dict().items() if key not in _NOT_AVERAGED
                and isinstance(value, (int, float)) and not isinstance(value, bool)}

    @classmethod
    def from_dict(cls, mapping: dict[str, Any], where: str | Path) -> "StudyRecord":
        per_class = {int(match.group(1)): value for key, value in mapping.items()
                     if (match := _CLASS_DICE.fullmatch(key))}
        rest = {key: value for key, value in mapping.items() if not _CLASS_DICE.fullmatch(key)}
        return RECORD_FILE.validate({**rest, "class_dice": per_class}, where)

    @classmethod
    def load(cls, path: Path) -> "StudyRecord":
        return cls.from_dict(read_mapping(path, RECORD_FILE.what), path)


RECORD_FILE = TypedFile(StudyRecord, "study record")


@dataclass(frozen=True)
class ModelRow:
    """One model's results over its seeds: the mean and std (NaN for one seed) of each number of its records, by
    the records' names; its mean GPU latency where measured; once ranked, its test Dice interval and rank."""

    model: str
    seeds: int
    means: dict[str, float]
    stds: dict[str, float]
    gpu_latency_ms: float | None
    dice_ci: tuple[float, float] | None = None
    rank: int | None = None

    @classmethod
    def over_seeds(cls, label: str, records: Sequence[StudyRecord]) -> "ModelRow":
        numbers = [record.numbers() for record in records]
        means, stds = {}, {}
        for key in numbers[0]:
            values = np.array([n[key] for n in numbers], dtype=np.float64)
            means[key] = float(np.nanmean(values)) if not np.all(np.isnan(values)) else math.nan
            stds[key] = float(np.nanstd(values)) if len(records) > 1 else math.nan
        gpu = [r.gpu_latency_ms for r in records if r.gpu_latency_ms is not None]  # shards may run without one
        return cls(label, len(records), means, stds, float(np.mean(gpu)) if gpu else None)

    @property
    def dice(self) -> float:
        return self.means["dice"]

    def value(self, column: str) -> Any:
        """A results column: a mean, ``gpu_latency_ms``, ``dice_ci`` (low, high) or ``rank``; None if absent."""
        own = {"gpu_latency_ms": self.gpu_latency_ms, "dice_ci": self.dice_ci, "rank": self.rank}
        return own[column] if column in own else self.means.get(column)

    def spread(self, column: str) -> float | None:
        """The std over seeds of a mean column; None for the others."""
        return self.stds.get(column)

    def to_dict(self) -> dict[str, Any]:
        """The row as ``results.csv`` and ``results.json`` hold it."""
        row: dict[str, Any] = {"model": self.model, "seeds": self.seeds}
        for key, mean in self.means.items():
            row |= {key: mean, f"{key}_std": self.stds[key]}
        row["gpu_latency_ms"] = self.gpu_latency_ms
        if self.dice_ci is not None:
            row["dice_ci_low"], row["dice_ci_high"] = self.dice_ci
        if self.rank is not None:
            row["rank"] = self.rank
        return row


def aggregate(records: Sequence[StudyRecord], labels: Sequence[str]) -> list[ModelRow]:
    """One row per model, in the order of ``labels``."""
    return [ModelRow.over_seeds(label, [r for r in records if r.model == label]) for label in labels]

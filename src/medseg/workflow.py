"""From a dataset to an evaluated model in one call: fingerprint and plan (unless a plan is given), train to the
deadline, evaluate on the test split. What `medseg plan` and `medseg train --budget` run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from medseg.config import Config, load_config, parse_overrides, read_yaml_mapping
from medseg.data.datasets import Item, default_class_names, find_classes, load_items, load_sample, split_items
from medseg.data.fingerprint import Fingerprint, compute_fingerprint, spread, volume_facts
from medseg.data.readers import Reader
from medseg.run.folder import RunFolder
from medseg.training.components import input_channels, resolve_classes, select_device
from medseg.training.crossval import CrossValidationSummary, train_folds
from medseg.inference.evaluate import EvaluationSummary, evaluate
from medseg.training.trainer import TrainResult, train
from medseg.errors import MedsegError
from medseg.log import get_logger
from medseg.plan import Plan, PlanInputs, make_plan

FINGERPRINT_FILE = "fingerprint.json"


@dataclass
class PlannedRun:
    plan: Plan
    run_dir: Path
    train: TrainResult | None  # a single run
    cross_validation: CrossValidationSummary | None  # every fold (None while a sharded run is unfinished)
    test: EvaluationSummary | None


def fixed_keys(config_path: str | Path | None, overrides: Iterable[str]) -> frozenset[str]:
    """The dotted config keys a user set in a config file or with flags: the plan leaves them alone."""

    def leaves(mapping: dict, prefix: str = "") -> list[str]:
        keys = []
        for key, value in mapping.items():
            if isinstance(value, dict) and f"{prefix}{key}" != "model.options":
                keys += leaves(value, f"{prefix}{key}.")
            else:
                keys.append(f"{prefix}{key}")
        return keys

    mapping = read_yaml_mapping(config_path) if config_path else {}
    return frozenset(leaves(mapping) + leaves(parse_overrides(overrides)))


HELD_OUT = 0.2  # the share of cases a plan holds out for testing when the dataset has no labelled test split


@dataclass(frozen=True)
class PlannedData:
    """What planning saw of the dataset: its fingerprint and the split sizes of the config's (or held-out) split."""

    fingerprint: Fingerprint
    n_train: int
    n_val: int
    test_fraction: float  # data.test_fraction the plan sets (the config's, or HELD_OUT)


def fingerprint_dataset(config: Config, items: list[Item], hold_out: bool = True) -> PlannedData:
    """The fingerprint of the dataset's labelled non-test ``items`` (at most a spread-out sample of them) and the
    split sizes. With ``hold_out``, a dataset without a labelled test split has :data:`HELD_OUT` of its cases held
    out first, as training will."""
    data = config.data
    has_test = any(item.split == "test" for item in items)
    test_fraction = HELD_OUT if hold_out and not has_test and not data.test_fraction else data.test_fraction
    splits = split_items(items, data.val_fraction, test_fraction, data.split_seed, data.fold, data.folds)
    labelled = splits.train + splits.val
    if not labelled:
        raise MedsegError(data.root, "no labelled training images to plan from")
    channels = input_channels(config, splits)
    with Reader() as reader:
        samples = (load_sample(labelled[i], channels, data.n_classes, reader) for i in spread(len(labelled)))
        fingerprint = compute_fingerprint(samples, data.n_classes, volume_facts(labelled))
    return PlannedData(fingerprint, len(splits.train), len(splits.val), test_fraction)


def plan_dataset(config_path: str | Path | None, overrides: list[str], budget_minutes: float, device: str = "auto",
                 out: Path | None = None) -> tuple[Plan, Fingerprint]:
    """Fingerprint the dataset and plan for ``budget_minutes`` on ``device``; with ``out``, write the plan there
    and ``fingerprint.json`` beside it. The planning time counts against the budget."""
    started = time.perf_counter()
    config = load_config(config_path, overrides)
    if not config.data.root:
        raise MedsegError("data.root", "no dataset given")
    items = load_items(config.data.root, config.data.format, config.data.slice_axis)
    classes = find_classes(config.data.root, items)
    config = resolve_classes(config, classes)
    fixed = fixed_keys(config_path, overrides) - {"data.root"}
    planned = fingerprint_dataset(config, items, hold_out="data.test_fraction" not in fixed)
    fingerprint = planned.fingerprint
    names = tuple(config.data.class_names or default_class_names(config.data.n_classes))
    inputs = PlanInputs(data=str(config.data.root), classes=names, classes_source=classes.source,
                        n_train=planned.n_train, n_val=planned.n_val, test_fraction=planned.test_fraction,
                        budget_minutes=budget_minutes, device=str(select_device(device)),
                        fixed=fixed)
    plan = make_plan(fingerprint, inputs, spent_seconds=time.perf_counter() - started)
    if out is not None:
        plan.save(out)
        fingerprint.save(out.with_name(FINGERPRINT_FILE))
    return plan, fingerprint


def default_run_dir(data: str | Path) -> Path:
    """``runs/<dataset folder name>``, numbered when taken."""
    base = Path("runs") / Path(data).resolve().name
    candidate, number = base, 2
    while candidate.exists():
        candidate, number = base.with_name(f"{base.name}-{number}"), number + 1
    return candidate


def run_planned(config_path: str | Path | None, overrides: list[str], budget_minutes: float | None,
                plan_path: str | Path | None, out: str | Path | None, cross_validate: bool = False,
                shard: tuple[int, int] | None = None) -> PlannedRun:
    """Plan (or read ``plan_path``), train to the deadline, evaluate on the test split when there is one.
    ``overrides`` and the config file override the plan's choices. With ``cross_validate`` the budget covers
    every fold (the plan is made for one fold's share), and a folder that already holds the cross-validation
    keeps its config and plan, so shards, resumes and the final summary agree."""
    log = get_logger()
    run_dir = Path(out) if out else None
    if cross_validate and run_dir is not None and (run_dir / "config.yaml").is_file():
        config = load_config(run_dir / "config.yaml")
        plan = Plan.load(run_dir / "plan.yaml")
        return _finish(plan, run_dir, config, None, train_folds(config, run_dir, shard, plan))
    fingerprint = None
    if plan_path is not None:
        plan = Plan.load(Path(plan_path))
        beside = Path(plan_path).with_name(FINGERPRINT_FILE)
        fingerprint = Fingerprint.load(beside) if beside.is_file() else None
        if budget_minutes is not None:
            overrides = overrides + [f"train.budget_minutes={budget_minutes}"]
    else:
        if budget_minutes is None:
            raise MedsegError("--budget", "give a time budget (or a --plan)")
        folds = load_config(config_path, overrides).data.folds if cross_validate else 1
        plan, fingerprint = plan_dataset(config_path, overrides, budget_minutes / folds, _device(overrides))
    log.info("%s", plan.table())
    config = load_config(config_path, overrides, base=plan.mapping())
    run_dir = run_dir or default_run_dir(config.data.root)
    if cross_validate:
        plan.save(run_dir / "plan.yaml")
        return _finish(plan, run_dir, config, None, train_folds(config, run_dir, shard, plan))
    return _finish(plan, run_dir, config, train(config, run_dir, plan=plan, fingerprint=fingerprint), None)


def _finish(plan: Plan, run_dir: Path, config: Config, result: TrainResult | None,
            summary: CrossValidationSummary | None) -> PlannedRun:
    """Evaluate a finished run (or cross-validation) on its test split, when there is one."""
    test = None
    if RunFolder(run_dir).finished and RunFolder(run_dir).read_contract().data.splits.test:
        test = evaluate(run_dir, config.data.root, run_dir / "eval", split="test")
    return PlannedRun(plan, run_dir, result, summary, test)


def _device(overrides: list[str]) -> str:
    return str(parse_overrides(overrides).get("train", {}).get("device", "auto"))

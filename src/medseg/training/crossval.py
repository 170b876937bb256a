"""k-fold cross-validation in one run folder: train every fold (resumable, shardable), predict each fold's
validation images with its own model (out-of-fold), choose post-processing on all of them, and summarise.

RUN_DIR layout::

    config.yaml                  the base config (each fold validates on its fold of the same partition)
    fold_<k>/                    a normal run folder
    contract.json                the ensemble's contract: post-processing chosen on out-of-fold predictions
    cv_per_image.csv             every metric per out-of-fold image (with that post-processing)
    cv_summary.json              mean, std and pooled values per metric, and the fold-to-fold spread

`medseg predict` / `evaluate` on RUN_DIR average the folds' probabilities (``--folds`` picks some).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from medseg.claims import shard_order, try_claim
from medseg.config import Config, load_config, save_config
from medseg.data.datasets import load_items, load_sample
from medseg.data.readers import Reader
from medseg.run.folder import RunFolder
from medseg.training.components import resolve_classes
from medseg.run.contract import PostprocessSpec, RunContract
from medseg.inference.predictor import Predictor
from medseg.inference.postprocess import (PostprocessChoice, ValidationCase, choose_postprocessing, postprocess,
                                      stack_cases, to_labels)
from medseg.training.trainer import train
from medseg.errors import MedsegError
from medseg.files import atomic_write_csv, atomic_write_json
from medseg.log import get_logger
from medseg.metrics import MetricAccumulator
from medseg.plan import Plan

SUMMARY_FILE = "cv_summary.json"


@dataclass(frozen=True)
class CrossValidationSummary:
    folds: int
    n_images: int
    metrics: dict[str, dict[str, float]]  # per metric: mean, std, n, pooled over out-of-fold images
    fold_dice: list[float]  # mean Dice of each fold's validation images
    fold_dice_std: float  # the fold-to-fold spread
    threshold: float
    postprocess: str
    postprocess_steps: list[str]


def fold_config(config: Config, fold: int) -> Config:
    fold_config = config.model_copy(deep=True)
    fold_config.data.fold = fold
    return fold_config


def train_folds(config: Config, run_dir: str | Path, shard: tuple[int, int] | None = None,
                plan: Plan | None = None) -> CrossValidationSummary | None:
    """Train (or resume, or skip when done) every fold of ``data.folds``; with ``shard``, take only folds no
    other process holds, starting with this shard's share. When every fold is done, write the ensemble contract
    and the summary (and return it); otherwise return None."""
    log = get_logger()
    run_dir = Path(run_dir)
    folds = config.data.folds
    config_path = run_dir / "config.yaml"
    config = resolve_classes(config)
    if config_path.is_file():
        if load_config(config_path) != config:
            raise MedsegError(run_dir, "holds a cross-validation with another config; choose another --out")
    else:
        save_config(config, config_path)
    for fold in shard_order(folds, shard):
        folder = run_dir / f"fold_{fold}"
        claim = try_claim(folder, f"fold {fold}")
        if claim is None:
            log.info("fold %d is being trained by another process", fold)
            continue
        with claim:
            if RunFolder(folder).finished:
                continue
            resume = (folder / "checkpoint.safetensors").is_file()
            log.info("%s fold %d of %d", "resuming" if resume else "training", fold, folds)
            train(None if resume else fold_config(config, fold), folder, resume=resume, plan=plan)
    if not all(RunFolder(run_dir).fold(k).finished for k in range(folds)):
        log.info("not every fold is finished yet; run again (without --shard) to summarise")
        return None
    return summarise_folds(run_dir, config)


def summarise_folds(run_dir: Path, config: Config) -> CrossValidationSummary:
    """Out-of-fold predictions -> post-processing choice -> ensemble contract, per-image CSV and summary."""
    cases, ids, fold_of = _out_of_fold_cases(run_dir, config)
    choice = choose_postprocessing(cases, config.data.n_classes, config.inference.threshold)
    contracts = [RunFolder(run_dir).fold(k).read_contract() for k in range(config.data.folds)]
    ensemble = _ensemble_contract(contracts, choice)
    ensemble.save(RunFolder(run_dir).contract)
    accumulator = MetricAccumulator(n_classes=config.data.n_classes)
    rows = []
    for case, item_id, fold in zip(cases, ids, fold_of):
        labels = postprocess(to_labels(case.probabilities, choice.threshold, config.data.n_classes), choice.postprocess)
        rows.append({"fold": fold, **accumulator.add(item_id, labels, case.truth, case.region)})
    atomic_write_csv(run_dir / "cv_per_image.csv", rows)
    fold_dice = [float(np.nanmean([r["dice"] for r in rows if r["fold"] == k])) for k in range(config.data.folds)]
    summary = CrossValidationSummary(
        folds=config.data.folds, n_images=len(rows), metrics=accumulator.summary(), fold_dice=fold_dice,
        fold_dice_std=float(np.std(fold_dice)), threshold=choice.threshold,
        postprocess=choice.postprocess.describe(), postprocess_steps=list(choice.steps))
    atomic_write_json(run_dir / SUMMARY_FILE, asdict(summary))
    dice = summary.metrics["dice"]
    get_logger().info("cross-validation (%d folds, %d images): Dice %.4f +/- %.4f (pooled %.4f); fold means %s; "
                      "post-processing %s", summary.folds, summary.n_images, dice["mean"], dice["std"],
                      dice["pooled"], ", ".join(f"{d:.3f}" for d in fold_dice), summary.postprocess)
    return summary


def _out_of_fold_cases(run_dir: Path, config: Config) -> tuple[list[ValidationCase], list[str], list[int]]:
    """Each fold's validation images predicted by that fold's selected weights (no post-processing); a volume's
    slices as one case, in 3D."""
    items = {item.id: item for item in load_items(config.data.root, config.data.format, config.data.slice_axis)}
    cases, ids, fold_of = [], [], []
    with Reader() as reader:
        for fold in range(config.data.folds):
            folder = run_dir / f"fold_{fold}"
            predictor = Predictor.from_run(folder, postprocess=PostprocessSpec())
            missing = [i for i in predictor.contract.data.splits.val if i not in items]
            if missing:
                raise MedsegError(config.data.root, f"fold {fold} validated on ids the dataset no longer has "
                                                    f"(e.g. {missing[0]!r})")
            slices = []
            for item_id in predictor.contract.data.splits.val:
                sample = load_sample(items[item_id], predictor.spec.channels, predictor.spec.n_classes, reader)
                probabilities = predictor.probabilities(sample.image, sample.statistics,
                                                        sample.spacing).astype(np.float16)
                slices.append((items[item_id].group, probabilities, sample))
            for name, case in stack_cases(slices, predictor.spec.n_classes):
                cases.append(case)
                ids.append(name)
                fold_of.append(fold)
    return cases, ids, fold_of


def _ensemble_contract(contracts: Sequence[RunContract], choice: PostprocessChoice) -> RunContract:
    """Fold 0's contract with every fold's training images, no validation images, and the post-processing
    chosen out of fold."""
    first = contracts[0]
    splits = first.data.splits
    trained = tuple(dict.fromkeys(i for c in contracts for i in c.data.splits.train + c.data.splits.val))
    data = replace(first.data, splits=replace(splits, train=trained, val=()))
    return replace(first.with_inference(threshold=choice.threshold, postprocess=choice.postprocess), data=data)


"""The cross-validation summary: predict each fold's validation cases with that fold's model (out-of-fold), choose
post-processing on all of them, and write the ensemble's contract and the out-of-fold scores.

RUN_DIR layout (beside ``fold_<k>/``, one run folder per fold)::

    contract.json                the ensemble's contract: post-processing chosen on out-of-fold predictions
    cv_per_image.csv             every metric per out-of-fold case (with that post-processing)
    cv_summary.json              mean, std and pooled values per metric, and the fold-to-fold spread

`medseg predict` / `evaluate` on RUN_DIR average the folds' probabilities (``--folds`` picks some).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np

from medseg.config import Config
from medseg.data.datasets import Item
from medseg.data.readers import Reader
from medseg.run.folder import RunFolder
from medseg.run.contract import PostprocessSpec, RunContract
from medseg.inference.predictor import Predictor
from medseg.inference.postprocess import PostprocessChoice, choose_postprocessing
from medseg.inference.scoring import PredictedCase, load_cases, predict_case, score_predicted
from medseg.errors import MedsegError
from medseg.files import atomic_write_csv, atomic_write_json
from medseg.log import get_logger
from medseg.metrics import MetricAccumulator


@dataclass(frozen=True)
class CrossValidationSummary:
    """What ``cv_summary.json`` holds: the out-of-fold scores (with the post-processing chosen on them) and the
    fold-to-fold spread."""

    folds: int
    n_images: int  # out-of-fold cases scored, a volume counting once (scored in 3D)
    metrics: dict[str, dict[str, float]]  # per metric: mean, std, n, pooled over out-of-fold cases
    fold_dice: list[float]  # mean Dice of each fold's validation cases
    fold_dice_std: float  # the fold-to-fold spread
    threshold: float
    postprocess: str
    postprocess_steps: list[str]


def summarise_folds(folder: RunFolder, config: Config, items: Sequence[Item]) -> CrossValidationSummary:
    """Out-of-fold predictions of the dataset's ``items`` -> post-processing choice -> ensemble contract, per-image
    CSV and summary."""
    folds = config.data.folds
    cases = _out_of_fold_cases(folder, config, {item.id: item for item in items})
    choice = choose_postprocessing([case for _, case in cases], config.data.n_classes, config.inference.threshold)
    _ensemble_contract([folder.fold(k).read_contract() for k in range(folds)], choice).save(folder.contract)
    accumulator = MetricAccumulator(n_classes=config.data.n_classes)
    rows = [(fold, score_predicted(case, accumulator, choice.threshold, choice.postprocess)[1])
            for fold, case in cases]
    atomic_write_csv(folder.cv_per_image, [{"fold": fold, **row.columns()} for fold, row in rows])
    fold_dice = [float(np.nanmean([row.dice for fold, row in rows if fold == k])) for k in range(folds)]
    summary = CrossValidationSummary(
        folds=folds, n_images=len(rows), metrics=accumulator.summary(), fold_dice=fold_dice,
        fold_dice_std=float(np.std(fold_dice)), threshold=choice.threshold,
        postprocess=choice.postprocess.describe(), postprocess_steps=list(choice.steps))
    atomic_write_json(folder.cv_summary, asdict(summary))
    dice = summary.metrics["dice"]
    get_logger().info("cross-validation (%d folds, %d images): Dice %.4f +/- %.4f (pooled %.4f); fold means %s; "
                      "post-processing %s", summary.folds, summary.n_images, dice["mean"], dice["std"],
                      dice["pooled"], ", ".join(f"{d:.3f}" for d in fold_dice), summary.postprocess)
    return summary


def _out_of_fold_cases(folder: RunFolder, config: Config, items: dict[str, Item]) -> list[tuple[int, PredictedCase]]:
    """``(fold, case)`` of each fold's validation cases predicted by that fold's selected weights (no
    post-processing; compact probabilities); a volume's slices as one case, in 3D."""
    cases = []
    with Reader() as reader:
        for fold in range(config.data.folds):
            predictor = Predictor.from_run(folder.fold(fold).path, postprocess=PostprocessSpec())
            validated = predictor.contract.data.splits.val
            missing = [i for i in validated if i not in items]
            if missing:
                raise MedsegError(config.data.root, f"fold {fold} validated on ids the dataset no longer has "
                                                    f"(e.g. {missing[0]!r})")
            spec = predictor.spec
            for case in load_cases([items[i] for i in validated], spec, reader):
                cases.append((fold, predict_case(predictor, case).compact()))
    return cases


def _ensemble_contract(contracts: Sequence[RunContract], choice: PostprocessChoice) -> RunContract:
    """Fold 0's contract with every fold's training images, no validation images, and the post-processing
    chosen out of fold."""
    first = contracts[0]
    splits = first.data.splits
    trained = tuple(dict.fromkeys(i for c in contracts for i in c.data.splits.train + c.data.splits.val))
    data = replace(first.data, splits=replace(splits, train=trained, val=()))
    return replace(first.with_inference(threshold=choice.threshold, postprocess=choice.postprocess), data=data)


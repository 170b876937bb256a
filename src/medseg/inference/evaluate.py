"""Evaluation: predict a split of a dataset with a trained run and score it.

The split is the one the run recorded, recognised by the dataset's ids and hash wherever the dataset lives now; a
different dataset is evaluated on its own split. Writes ``per_image.csv`` (every metric per image),
``summary.json`` (mean, std and pooled value per metric, and what was applied) and ``overlays.png`` into ``out``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medseg.data.datasets import Item, load_items
from medseg.data.fingerprint import dataset_hash
from medseg.data.readers import Reader
from medseg.run.contract import RunContract
from medseg.inference.predictor import Predictor
from medseg.inference.scoring import Case, ScoredCase, case_groups, load_cases, score_cases
from medseg.visualize import ERROR_LEGEND, GridRow, image_grid, overlay, png_bytes, to_display
from medseg.errors import MedsegError
from medseg.files import atomic_write_bytes, atomic_write_csv, atomic_write_json
from medseg.log import get_logger, progress
from medseg.metrics import EmptyRule, MetricAccumulator


@dataclass(frozen=True)
class EvaluationSummary:
    """What ``summary.json`` holds: per metric ``mean``, ``std``, ``n`` and ``pooled``, and how it was made."""

    metrics: dict[str, dict[str, float]]
    n_images: int  # images scored, a volume counting once (scored in 3D)
    class_names: tuple[str, ...]
    split: str
    data: str
    dataset: str  # how the images were chosen (the run's recorded split, or the dataset's own)
    run: str
    threshold: float
    postprocess: str
    tta: bool
    members: int  # models averaged (folds of a cross-validation run)
    empty_rule: str
    prune_depth: int | None
    labelled_fraction: float = 1.0  # the scored pixels' share of the images (inside their regions): partial labels
    # count their labelled pixels only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def per_class(self) -> str:
        """Mean Dice of each foreground class and of their mean, as one line."""
        parts = [f"{name} {self.metrics[f'dice_c{k}']['mean']:.4f}" for k, name in enumerate(self.class_names)
                 if k and f"dice_c{k}" in self.metrics]
        return ", ".join(parts + [f"mean foreground {self.metrics['dice']['mean']:.4f}"])


def select_items(items: list[Item], contract: RunContract, split: str, data: Path) -> tuple[list[Item], str]:
    """The items to evaluate and a note saying how they were chosen. A dataset holding every recorded id is the
    run's dataset (its hash says whether the files are the same); its recorded ``split`` is used and may never
    overlap the training images. Any other dataset is evaluated on its own split."""
    log = get_logger()
    recorded = contract.data.splits
    by_id = {item.id: item for item in items}
    items = [item for item in items if item.labelled]  # an image without a mask cannot be scored
    if split == "all":
        return items, "all images"
    known = set(recorded.train) | set(recorded.val) | set(recorded.test)
    if known and known <= set(by_id):
        if dataset_hash([by_id[i] for i in known]) != contract.data.hash:
            log.warning("%s holds the ids the run was trained with, but the files differ (hash); using the "
                        "recorded %s split", data, split)
        chosen = [by_id[i] for i in getattr(recorded, split) if by_id[i].labelled]
        trained = set(recorded.train) | (set(recorded.val) if split == "test" else set())
        if split != "train" and {i.id for i in chosen} & trained:
            raise MedsegError(data, f"the {split} split overlaps the model's training images")
        return chosen, f"the run's recorded {split} split"
    chosen = [item for item in items if item.split == split] or (items if split == "test" else [])
    overlap = {i.id for i in chosen} & set(recorded.train)
    if overlap:
        log.warning("%s is not the dataset the run was trained on, but %d of its ids match training ids (e.g. %s)",
                    data, len(overlap), sorted(overlap)[0])
    note = f"the dataset's own {split} split" if any(i.split == split for i in items) else "all images (no split)"
    log.info("%s is not the dataset the run was trained on: evaluating %s", data, note)
    return chosen, note


def evaluate(run: str | Path, data: str | Path, out: str | Path, split: str = "test", fmt: str = "auto",
             empty: EmptyRule = "perfect", max_overlays: int = 12, backend: str = "torch", device: str = "cpu",
             folds: Sequence[int] | None = None, prune_depth: int | None = None, items: list[Item] | None = None,
             **overrides: Any) -> EvaluationSummary:
    """Evaluate a run folder (or weights file) on ``split`` of ``data``; the function `medseg evaluate` calls.
    ``items`` are the dataset's, when the caller has listed them; ``overrides`` replace inference settings
    (``threshold``, ``tta``, ``postprocess``, ...)."""
    predictor = Predictor.from_run(run, backend, device, folds, prune_depth, **overrides)
    data = Path(data)
    recorded = predictor.contract.data
    if fmt == "auto" and recorded.root and Path(recorded.root).resolve() == data.resolve():
        fmt = recorded.format  # the format the run was trained with, on the same folder
    if items is None:
        items = load_items(data, fmt, predictor.spec.slice_axis)
    return evaluate_predictor(predictor, items, data, out, split, empty, max_overlays, str(run), prune_depth)


def evaluate_predictor(predictor: Predictor, items: list[Item], data: str | Path, out: str | Path,
                       split: str = "test", empty: EmptyRule = "perfect", max_overlays: int = 12, run: str = "",
                       prune_depth: int | None = None) -> EvaluationSummary:
    """:func:`evaluate` with a loaded ``predictor`` (``run`` names it in the summary) on the dataset's listed
    ``items``."""
    data, out = Path(data), Path(out)
    chosen, note = select_items(items, predictor.contract, split, data)
    if not chosen:
        raise MedsegError(data, f"the {split!r} split is empty")
    spec = predictor.spec
    accumulator = MetricAccumulator(n_classes=spec.n_classes, empty=empty)
    grid_rows, coverage = _score(predictor, chosen, accumulator, max_overlays)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out / "per_image.csv", [{**row.columns(), "labelled_fraction": round(counted / total, 5)}
                                             for row, (counted, total) in zip(accumulator.rows(), coverage)])
    counted, total = np.sum(coverage, axis=0)
    summary = EvaluationSummary(
        metrics=accumulator.summary(), n_images=len(accumulator.rows()), class_names=spec.class_names, split=split,
        data=str(data), dataset=note, run=run, threshold=spec.threshold, postprocess=spec.postprocess.describe(),
        tta=spec.tta, members=len(predictor.backends), empty_rule=empty, prune_depth=prune_depth,
        labelled_fraction=round(float(counted / total), 5))
    atomic_write_json(out / "summary.json", summary.to_dict())
    if grid_rows:
        atomic_write_bytes(out / "overlays.png", png_bytes(image_grid(grid_rows, tile=192)))
    dice = summary.metrics["dice"]
    unit = "cases (3D)" if any(item.case for item in chosen) else "images"
    get_logger().info("%s split: Dice %.4f +/- %.4f (pooled %.4f) over %d %s (threshold %.2f, post-processing: "
                      "%s); report in %s", split, dice["mean"], dice["std"], dice["pooled"], summary.n_images, unit,
                      spec.threshold, summary.postprocess, out)
    if summary.labelled_fraction < 1:
        get_logger().warning("the %s split's masks are partial: scored on their labelled pixels, %.1f%% of the "
                             "pixels", split, 100 * summary.labelled_fraction)
    if spec.n_classes > 2:
        get_logger().info("Dice per class: %s", summary.per_class())
    return summary


def _score(predictor: Predictor, chosen: list[Item], accumulator: MetricAccumulator,
           max_overlays: int) -> tuple[list[GridRow], list[tuple[int, int]]]:
    """Score every case of ``chosen`` into ``accumulator``, decoding one case at a time; the overlay rows of the
    first ``max_overlays`` cases, and each case's scored pixels and pixels (inside its region)."""
    spec, grid_rows, coverage, total = predictor.spec, [], [], len(case_groups(chosen))
    with Reader() as reader:
        cases = load_cases(chosen, spec, reader)
        for scored in progress(score_cases(predictor, cases, accumulator), desc="evaluate", total=total, unit="case"):
            coverage.append(_coverage(scored.case))
            if len(grid_rows) < max_overlays:
                grid_rows.append(_overlay_row(scored))
    return grid_rows, coverage


def _coverage(case: Case) -> tuple[int, int]:
    """The pixels of a case that are scored (labelled, inside the region) and its pixels inside the region."""
    counted = sum(int(s.counted().sum()) if s.counted() is not None else s.mask.size for s in case.samples)
    total = sum(int(s.region.sum()) if s.region is not None else s.mask.size for s in case.samples)
    return counted, max(total, 1)


def _overlay_row(scored: ScoredCase) -> GridRow:
    """The overlay row of a scored case: the image, or a volume's slice with the most foreground."""
    case = scored.case
    shown = int(np.argmax([(s.mask > 0).sum() for s in case.samples])) if case.volume else 0
    sample, labels = case.samples[shown], scored.labels[shown] if case.volume else scored.labels
    name, dice = case.name, scored.row.dice
    caption = f"{name}  Dice {dice:.3f}" if not math.isnan(dice) else name
    return GridRow(caption, [("image", to_display(sample.image)), ("truth", overlay(sample.image, sample.mask)),
                             (ERROR_LEGEND, overlay(sample.image, labels, sample.mask))])

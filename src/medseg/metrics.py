"""Segmentation metrics on label maps: Dice, IoU, pixel accuracy, precision, recall, specificity, HD95.

Inputs are ``H x W`` integer arrays of class ids (binary: {0, 1}) and an optional boolean region (field of view)
outside which pixels do not count. Binary tasks report class 1; multi-class tasks report every foreground class
(1..K-1) and their mean.

Empty-mask rule (``empty``): a score whose denominator is zero (e.g. Dice when prediction and truth are both
empty) is perfect when the prediction makes no error in that class -- 1 for the overlap scores and 0 for HD95 under
``empty="perfect"`` (the default, as MONAI's ``ignore_empty=False``), NaN under ``empty="nan"`` (the image is
left out of means for that metric) -- and 0 when it does make errors (e.g. precision of an empty prediction of a
non-empty truth). HD95 when exactly one of prediction and truth is empty is the image diagonal (times spacing),
the largest possible distance, so missed or hallucinated objects are penalised rather than skipped.

Aggregation: per image (or volume) a :class:`MetricRow`, then mean/std (NaN-skipping), and pooled (confusion
counts summed over every pixel of the set; pooled HD95 is the 95th percentile of all surface distances of images
where both masks have foreground).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal, Sequence

import numpy as np
from scipy import ndimage

EmptyRule = Literal["perfect", "nan"]


def confusion_counts(
    pred: np.ndarray, truth: np.ndarray, n_classes: int, region: np.ndarray | None = None
) -> np.ndarray:
    """Per-class ``[tp, fp, fn, tn]`` as a ``n_classes x 4`` int64 array, counting only pixels in ``region``."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    pred, truth = np.asarray(pred).ravel(), np.asarray(truth).ravel()
    if region is not None:
        keep = np.asarray(region, dtype=bool).ravel()
        pred, truth = pred[keep], truth[keep]
    matrix = np.bincount(
        truth.astype(np.int64) * n_classes + pred.astype(np.int64), minlength=n_classes * n_classes
    ).reshape(n_classes, n_classes)
    tp = np.diag(matrix)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    tn = matrix.sum() - tp - fp - fn
    return np.stack([tp, fp, fn, tn], axis=1).astype(np.int64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray, errors: np.ndarray, empty: EmptyRule) -> np.ndarray:
    perfect = 1.0 if empty == "perfect" else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        value = numerator / denominator
    fallback = np.where(errors == 0, perfect, 0.0)
    return np.where(denominator == 0, fallback, value)


def scores_from_counts(counts: np.ndarray, empty: EmptyRule = "perfect") -> dict[str, np.ndarray]:
    """Overlap metrics from ``... x 4`` confusion counts (last axis tp, fp, fn, tn)."""
    counts = counts.astype(np.float64)
    tp, fp, fn, tn = counts[..., 0], counts[..., 1], counts[..., 2], counts[..., 3]
    errors = fp + fn
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, errors, empty),
        "iou": _ratio(tp, tp + fp + fn, errors, empty),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn, errors, empty),
        "precision": _ratio(tp, tp + fp, errors, empty),
        "recall": _ratio(tp, tp + fn, errors, empty),
        "specificity": _ratio(tn, tn + fp, errors, empty),
    }


def _edges(mask: np.ndarray) -> np.ndarray:
    return mask ^ ndimage.binary_erosion(mask)


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each prediction edge pixel to the truth edge, and from each truth edge pixel to the
    prediction edge (both boolean masks must have foreground). Edges are ``mask XOR erosion(mask)``, as in MONAI.
    """
    pred_edges, truth_edges = _edges(pred), _edges(truth)
    sampling = tuple(spacing) if spacing is not None else None
    to_truth = ndimage.distance_transform_edt(~truth_edges, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_edges, sampling=sampling)
    return to_truth[pred_edges], to_pred[truth_edges]


def hd95(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float] | None = None,
    empty: EmptyRule = "perfect",
) -> float:
    """Symmetric 95th-percentile Hausdorff distance between two boolean masks, in pixels (or spacing units).

    Both empty: 0 (``empty="perfect"``) or NaN; exactly one empty: the image diagonal.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    has_pred, has_truth = pred.any(), truth.any()
    if not has_pred and not has_truth:
        return 0.0 if empty == "perfect" else math.nan
    if has_pred != has_truth:
        scale = np.asarray(spacing if spacing is not None else (1.0,) * pred.ndim, dtype=np.float64)
        return float(np.linalg.norm(np.asarray(pred.shape) * scale))
    forward, backward = surface_distances(pred, truth, spacing)
    return float(max(np.percentile(forward, 95), np.percentile(backward, 95)))


@dataclass(frozen=True)
class Scores:
    """Every metric of one foreground class, or their mean over the foreground classes; ``hd95`` is None when
    not computed."""

    dice: float
    iou: float
    accuracy: float
    precision: float
    recall: float
    specificity: float
    hd95: float | None = None

    def values(self) -> dict[str, float]:
        """Metric name -> value, of every computed metric, in report order."""
        return {name: getattr(self, name) for name in METRICS if getattr(self, name) is not None}


METRICS = tuple(f.name for f in fields(Scores))


@dataclass(frozen=True, kw_only=True)
class MetricRow(Scores):
    """One image's (or volume's) scores: the mean over foreground classes, and ``per_class[k - 1]`` for class
    ``k`` (a binary task has one class, equal to the mean)."""

    id: str
    per_class: tuple[Scores, ...]

    def columns(self) -> dict[str, str | float]:
        """The row as ``per_image.csv`` writes it: ``id``, then per metric ``<metric>_c<k>`` for each class of a
        multi-class task and ``<metric>`` (the mean)."""
        columns: dict[str, str | float] = {"id": self.id}
        for name, mean in self.values().items():
            if len(self.per_class) > 1:
                columns.update({f"{name}_c{k}": s.values()[name] for k, s in enumerate(self.per_class, 1)})
            columns[name] = mean
        return columns


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if not np.all(np.isnan(values)) else math.nan


def metric_row(row_id: str, scores: dict[str, np.ndarray]) -> MetricRow:
    """A row from per-class arrays (foreground classes in order) of each metric name."""
    per_class = tuple(Scores(**{name: float(values[i]) for name, values in scores.items()})
                      for i in range(len(scores["dice"])))
    return MetricRow(id=row_id, per_class=per_class, **{name: _nanmean(values) for name, values in scores.items()})


@dataclass
class MetricAccumulator:
    """Collects per-image scores and pooled counts over a set of images.

    ``add(image_id, pred, truth, region)`` per image returns its :class:`MetricRow`; then :meth:`rows` (every row
    so far) and :meth:`summary` (per column of :meth:`MetricRow.columns`: mean, std, n, pooled).
    """

    n_classes: int = 2
    empty: EmptyRule = "perfect"
    with_hd95: bool = True
    spacing: Sequence[float] | None = None
    _rows: list[MetricRow] = field(default_factory=list)
    _pooled: np.ndarray | None = None
    _distances: dict[int, list[np.ndarray]] = field(default_factory=dict)

    @property
    def classes(self) -> list[int]:
        return list(range(1, self.n_classes))

    def add(self, image_id: str, pred: np.ndarray, truth: np.ndarray, region: np.ndarray | None = None,
            spacing: Sequence[float] | None = None) -> MetricRow:
        """Score one image or volume (any number of dimensions; HD95 in ``spacing`` units, else the
        accumulator's)."""
        counts = confusion_counts(pred, truth, self.n_classes, region)
        self._pooled = counts if self._pooled is None else self._pooled + counts
        scores = scores_from_counts(counts[1:], self.empty)
        if self.with_hd95:
            spacing = spacing if spacing is not None else self.spacing
            scores["hd95"] = np.array([self._hd95(pred, truth, region, c, spacing) for c in self.classes])
        row = metric_row(image_id, scores)
        self._rows.append(row)
        return row

    def _hd95(self, pred: np.ndarray, truth: np.ndarray, region: np.ndarray | None, cls: int,
              spacing: Sequence[float] | None) -> float:
        p, t = pred == cls, truth == cls
        if region is not None:
            p, t = p & region, t & region
        if p.any() and t.any():
            forward, backward = surface_distances(p, t, spacing)
            self._distances.setdefault(cls, []).extend([forward, backward])
        return hd95(p, t, spacing, self.empty)

    def rows(self) -> list[MetricRow]:
        return list(self._rows)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per column of the rows (``id`` aside): ``mean``, ``std`` (population), ``n`` (images with a defined
        value) and ``pooled``."""
        if not self._rows:
            return {}
        pooled_scores = scores_from_counts(self._pooled[1:], self.empty)
        if self.with_hd95:
            pooled_scores["hd95"] = np.array([self._pooled_hd95(c) for c in self.classes])
        pooled = metric_row("pooled", pooled_scores).columns()
        columns = [row.columns() for row in self._rows]
        result = {}
        for column in (k for k in columns[0] if k != "id"):
            values = np.array([row[column] for row in columns], dtype=np.float64)
            defined = values[~np.isnan(values)]
            result[column] = {
                "mean": float(defined.mean()) if defined.size else math.nan,
                "std": float(defined.std()) if defined.size else math.nan,
                "n": int(defined.size),
                "pooled": pooled[column],
            }
        return result

    def _pooled_hd95(self, cls: int) -> float:
        parts = self._distances.get(cls)
        if not parts:
            return math.nan
        return float(np.percentile(np.concatenate(parts), 95))

"""Post-processing of label maps, and choosing it on data (as nnU-Net's ``determine_postprocessing``): the
threshold, keep-largest-component (per class for multi-class tasks), small-object removal and hole filling are each
tried on validation (or out-of-fold) predictions and kept only when they raise mean Dice. A volume is
post-processed whole, in 3D."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy import ndimage

from medseg.run.contract import PostprocessSpec
from medseg.metrics import confusion_counts, scores_from_counts

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.3, 0.71, 0.05))
MIN_SIZES = (10, 25, 50, 100, 250, 500, 1000)


def postprocess(labels: np.ndarray, spec: PostprocessSpec) -> np.ndarray:
    """Per foreground class of an ``H x W`` label map (or ``Z x H x W`` volume): keep the largest connected
    component, drop components under ``min_size`` pixels, fill holes."""
    if not spec.active:
        return labels
    out = labels.copy()
    for cls in np.unique(labels):
        if cls == 0:
            continue
        region = labels == cls
        components, count = ndimage.label(region)
        if count:
            sizes = np.bincount(components.ravel())[1:]
            keep = np.zeros(count + 1, bool)
            keep[1:] = sizes >= spec.min_size
            if spec.keeps_largest(int(cls)):
                keep[1:] &= sizes == sizes.max()
            cleaned = keep[components]
        else:
            cleaned = region
        if spec.fill_holes:
            cleaned = ndimage.binary_fill_holes(cleaned)
        out[region & ~cleaned] = 0
        out[cleaned & (out == 0)] = cls
    return out


def to_labels(probabilities: np.ndarray, threshold: float, n_classes: int) -> np.ndarray:
    """Class ids (uint8) of one image or a volume's stacked slices: foreground probability (``[Z x] H x W``)
    above ``threshold`` for a binary task, else the argmax of class probabilities (``K x [Z x] H x W``)."""
    if n_classes == 2:
        return (probabilities > threshold).astype(np.uint8)
    return probabilities.argmax(axis=0).astype(np.uint8)


@dataclass(frozen=True)
class ValidationCase:
    """A validation image's predicted probabilities (``H x W`` or ``K x H x W``), truth, the pixels that count
    (``region``: labelled, inside the field of view; None: all), and whether its label is ``dense`` (every pixel
    labelled: only such an image can judge a threshold or a component)."""

    probabilities: np.ndarray
    truth: np.ndarray
    region: np.ndarray | None
    dense: bool


@dataclass(frozen=True)
class PostprocessChoice:
    threshold: float
    postprocess: PostprocessSpec
    dice_before: float
    dice_after: float
    steps: tuple[str, ...]  # one line per candidate tried, saying whether it was kept
    images: int  # the densely labelled images it was chosen on


def mean_dice(cases: Sequence[ValidationCase], n_classes: int, threshold: float, spec: PostprocessSpec) -> float:
    """Mean per-image Dice (mean over foreground classes; both empty = 1)."""
    scores = []
    for case in cases:
        labels = postprocess(to_labels(case.probabilities, threshold, n_classes), spec)
        counts = confusion_counts(labels, case.truth, n_classes, case.region)
        scores.append(float(np.mean(scores_from_counts(counts[1:])["dice"])))
    return float(np.mean(scores))


def choose_postprocessing(cases: Sequence[ValidationCase], n_classes: int, threshold: float = 0.5,
                          min_gain: float = 1e-3) -> PostprocessChoice:
    """Try each candidate in turn on the densely labelled ``cases``; keep it only if mean Dice rises by more than
    ``min_gain``. A partial label cannot judge them (an unlabelled pixel may hold any component), so without a
    dense case nothing is chosen."""
    spec = PostprocessSpec()
    cases = [case for case in cases if case.dense]
    if not cases:
        return PostprocessChoice(threshold, spec, math.nan, math.nan,
                                 ("no densely labelled image to judge a threshold or a component on: none chosen",), 0)
    best = before = mean_dice(cases, n_classes, threshold, spec)
    steps: list[str] = []

    def consider(label: str, new_threshold: float, new_spec: PostprocessSpec) -> bool:
        nonlocal best, threshold, spec
        score = mean_dice(cases, n_classes, new_threshold, new_spec)
        kept = score > best + min_gain
        steps.append(f"{label}: Dice {best:.4f} -> {score:.4f} ({'kept' if kept else 'not kept'})")
        if kept:
            best, threshold, spec = score, new_threshold, new_spec
        return kept

    if n_classes == 2:
        scored = {t: mean_dice(cases, n_classes, t, spec) for t in THRESHOLDS if t != threshold}
        if scored:
            candidate = max(scored, key=lambda t: (scored[t], -abs(t - 0.5)))
            consider(f"threshold {threshold:g} -> {candidate:g}", candidate, spec)
    if n_classes > 2:
        for cls in range(1, n_classes):
            classes = spec.largest_component_classes + (cls,)
            consider(f"keep largest component of class {cls}", threshold,
                     replace(spec, largest_component_classes=classes))
        kept_largest = bool(spec.largest_component_classes)
    else:
        kept_largest = consider("keep largest component", threshold, replace(spec, largest_component=True))
    if not kept_largest:
        scored = {size: mean_dice(cases, n_classes, threshold, replace(spec, min_size=size)) for size in MIN_SIZES}
        size = max(scored, key=lambda s: (scored[s], -s))
        consider(f"remove objects < {size} px", threshold, replace(spec, min_size=size))
    consider("fill holes", threshold, replace(spec, fill_holes=True))
    return PostprocessChoice(threshold, spec, before, best, tuple(steps), len(cases))

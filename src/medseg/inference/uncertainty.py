"""Where a model is unsure: the per-pixel entropy of its mean probability (averaged over the flips of test-time
augmentation and the members of a fold ensemble, as the predictor gives it), scaled to [0, 1], and an image's
score, the mean of that map over the pixels asked about."""

from __future__ import annotations

import math

import numpy as np

UNSURE = 0.5  # a pixel whose scaled entropy is at least this is counted as unsure (p within ~0.11..0.89, binary)


def entropy_map(probabilities: np.ndarray, n_classes: int) -> np.ndarray:
    """The entropy of each pixel's class distribution over its maximum, float32 in [0, 1] (0: certain, 1: every
    class equally likely). ``probabilities``: the foreground probability ``[Z x] H x W`` of a binary task, or class
    probabilities ``K x [Z x] H x W``; the result has the pixels' shape."""
    p = np.clip(probabilities.astype(np.float32, copy=False), 1e-7, 1 - 1e-7)
    if n_classes == 2:
        entropy = -(p * np.log(p) + (1 - p) * np.log1p(-p))
        return (entropy / np.float32(math.log(2))).astype(np.float32)
    entropy = -(p * np.log(p)).sum(axis=0)
    return np.clip(entropy / np.float32(math.log(n_classes)), 0, 1).astype(np.float32)


def uncertainty_score(entropy: np.ndarray, where: np.ndarray | None = None) -> float:
    """The mean scaled entropy over ``where`` (every pixel if None; NaN where it is empty)."""
    values = entropy if where is None else entropy[where]
    return float(values.mean()) if values.size else math.nan


def unsure_fraction(entropy: np.ndarray, where: np.ndarray | None = None) -> float:
    """The share of the pixels of ``where`` whose scaled entropy is at least :data:`UNSURE`."""
    values = entropy if where is None else entropy[where]
    return float((values >= UNSURE).mean()) if values.size else math.nan


def entropy_pixels(entropy: np.ndarray) -> np.ndarray:
    """A scaled entropy map as 8-bit pixels (0 certain, 255 most unsure)."""
    return np.clip(np.rint(entropy * 255), 0, 255).astype(np.uint8)

"""Statistics for comparing models on the same test images: bootstrap confidence intervals (over images, and over
seeds when there are several), paired per-image differences with a Wilcoxon signed-rank test, Holm's correction
across pairs, and a ranking that ties models whose intervals overlap."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import numpy as np
from scipy import stats

RESAMPLES = 10_000
CONFIDENCE = 0.95


def bootstrap_mean_ci(scores: np.ndarray, resamples: int = RESAMPLES, seed: int = 0,
                      confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``scores``: a vector of per-image values, or a
    ``seeds x images`` matrix (seeds and images are resampled independently, then the mean over both taken).
    NaNs are left out."""
    matrix = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    rng = np.random.default_rng(seed)
    n_seeds, n_images = matrix.shape
    if n_images == 0 or np.all(np.isnan(matrix)):
        return float("nan"), float("nan")
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):
        count = min(1000, resamples - start)
        images = rng.integers(0, n_images, (count, n_images))
        seeds = rng.integers(0, n_seeds, (count, n_seeds)) if n_seeds > 1 else np.zeros((count, 1), int)
        picked = matrix[seeds[:, :, None], images[:, None, :]]  # count x seeds x images
        means[start : start + count] = np.nanmean(picked.reshape(count, -1), axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.nanpercentile(means, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedComparison:
    """Model ``a`` minus model ``b`` on the same images (per-image scores averaged over seeds first)."""

    a: str
    b: str
    n_images: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided Wilcoxon signed-rank
    p_holm: float = float("nan")  # Holm-adjusted over every pair of the study

    @property
    def significant(self) -> bool:
        return self.p_holm < 1 - CONFIDENCE


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (zero differences dropped, as Wilcoxon's
    original test; 1.0 when every difference is zero)."""
    nonzero = differences[differences != 0]
    if nonzero.size == 0:
        return 1.0
    return float(stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_comparison(a: str, b: str, scores_a: np.ndarray, scores_b: np.ndarray, seed: int = 0) -> PairedComparison:
    """Compare two models' ``seeds x images`` (or per-image) scores on the same images."""
    per_image_a = np.nanmean(np.atleast_2d(scores_a), axis=0)
    per_image_b = np.nanmean(np.atleast_2d(scores_b), axis=0)
    keep = ~(np.isnan(per_image_a) | np.isnan(per_image_b))
    differences = per_image_a[keep] - per_image_b[keep]
    if differences.size == 0:
        return PairedComparison(a, b, 0, float("nan"), float("nan"), float("nan"), float("nan"))
    low, high = bootstrap_mean_ci(differences, seed=seed)
    return PairedComparison(a, b, int(keep.sum()), float(differences.mean()), low, high, wilcoxon_p(differences))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def all_pairs(scores: dict[str, np.ndarray], seed: int = 0) -> list[PairedComparison]:
    """Every pair of models (in the given order), with Holm-adjusted p-values."""
    pairs = [paired_comparison(a, b, scores[a], scores[b], seed) for a, b in combinations(scores, 2)]
    adjusted = holm([pair.p_value for pair in pairs])
    return [PairedComparison(**{**pair.__dict__, "p_holm": p}) for pair, p in zip(pairs, adjusted)]


def smallest_holm_p(n_images: int, n_pairs: int) -> float:
    """The smallest Holm-adjusted p-value any of ``n_pairs`` comparisons on ``n_images`` paired differences can
    reach: ``n_pairs`` times the exact two-sided Wilcoxon minimum ``2 / 2**n_images`` (every difference of one
    sign)."""
    return min(1.0, n_pairs * 2.0 / 2.0 ** n_images)


def rank_with_ties(means: dict[str, float], intervals: dict[str, tuple[float, float]]) -> dict[str, int]:
    """Rank 1 is best; a model's rank is one more than the number of models whose interval lies wholly above
    its own, so models with overlapping intervals share a rank."""
    return {name: 1 + sum(intervals[other][0] > intervals[name][1] for other in means if other != name)
            for name in means}

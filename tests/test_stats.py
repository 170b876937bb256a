"""Statistics: bootstrap intervals and Wilcoxon against scipy on fixed inputs, Holm on a hand-worked example,
paired comparisons and tied ranks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from medseg.stats import (all_pairs, bootstrap_mean_ci, holm, paired_comparison, rank_with_ties, smallest_holm_p,
                          wilcoxon_p)

DICE = np.array([0.91, 0.85, 0.78, 0.95, 0.66, 0.88, 0.72, 0.93, 0.81, 0.87, 0.59, 0.9])


def test_bootstrap_interval_matches_scipy_percentile_bootstrap():
    ours = bootstrap_mean_ci(DICE, resamples=20_000, seed=1)
    theirs = scipy_stats.bootstrap((DICE,), np.mean, n_resamples=20_000, method="percentile",
                                   random_state=np.random.default_rng(2)).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.006)  # Monte Carlo error of two bootstraps
    assert ours[0] < DICE.mean() < ours[1]


def test_seeds_widen_the_interval_when_they_disagree():
    agreeing = np.vstack([DICE, DICE, DICE])
    disagreeing = np.vstack([DICE - 0.1, DICE, DICE + 0.1])
    low_a, high_a = bootstrap_mean_ci(agreeing)
    low_d, high_d = bootstrap_mean_ci(disagreeing)
    assert (low_a, high_a) == pytest.approx(bootstrap_mean_ci(DICE), abs=0.003)
    assert high_d - low_d > high_a - low_a + 0.05


def test_wilcoxon_matches_scipy_and_handles_ties_with_zero():
    differences = np.array([0.05, 0.02, -0.01, 0.04, 0.0, 0.03, 0.06, -0.02, 0.01, 0.05])
    expected = scipy_stats.wilcoxon(differences[differences != 0]).pvalue
    assert wilcoxon_p(differences) == pytest.approx(expected)
    assert wilcoxon_p(np.zeros(5)) == 1.0


def test_holm_on_a_hand_worked_example():
    # sorted p: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06, monotone), 0.04 (x1 = 0.04 -> 0.06)
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_smallest_holm_p_is_what_scipy_gives_when_every_image_agrees():
    differences = np.linspace(0.01, 0.06, 6)  # 6 images, all of one sign: scipy's exact minimum
    assert wilcoxon_p(differences) == pytest.approx(smallest_holm_p(6, 1)) == pytest.approx(2 / 64)
    assert smallest_holm_p(6, 15) == pytest.approx(15 * 2 / 64)  # > 0.05: no pair can be significant
    assert smallest_holm_p(16, 15) < 0.05
    assert smallest_holm_p(2, 3) == 1.0


def test_paired_comparison_and_all_pairs():
    better = DICE + 0.04 + np.linspace(-0.01, 0.01, DICE.size)
    pair = paired_comparison("b", "a", better, DICE)
    assert pair.mean_difference == pytest.approx(0.04) and pair.ci_low > 0 and pair.p_value < 0.01
    pairs = all_pairs({"a": DICE, "b": better, "c": DICE + 0.001 * (-1) ** np.arange(DICE.size)})
    assert [(p.a, p.b) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert [p.p_holm for p in pairs] == pytest.approx(holm([p.p_value for p in pairs]))
    assert pairs[0].significant and not pairs[1].significant


def test_ranks_tie_where_intervals_overlap():
    intervals = {"a": (0.80, 0.90), "b": (0.85, 0.95), "c": (0.60, 0.70), "d": (0.65, 0.82)}
    means = {k: sum(v) / 2 for k, v in intervals.items()}
    assert rank_with_ties(means, intervals) == {"a": 1, "b": 1, "c": 3, "d": 2}

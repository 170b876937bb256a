"""Post-processing chosen on data: a step is kept only when it raises validation Dice."""

from __future__ import annotations

import numpy as np

from medseg.inference.postprocess import ValidationCase, choose_postprocessing


def _case(truth: np.ndarray, probabilities: np.ndarray) -> ValidationCase:
    return ValidationCase(probabilities.astype(np.float32), truth.astype(np.int64), None, True)


def test_largest_component_is_kept_when_it_removes_false_positives():
    truth = np.zeros((40, 40))
    truth[10:25, 10:25] = 1
    probabilities = truth * 0.9 + 0.05
    probabilities[32:35, 32:35] = 0.8  # a false-positive speck
    choice = choose_postprocessing([_case(truth, probabilities)] * 3, n_classes=2)
    assert choice.postprocess.largest_component and choice.dice_after > choice.dice_before
    assert any("keep largest component" in step and "(kept)" in step for step in choice.steps)


def test_largest_component_is_refused_when_objects_are_many():
    truth = np.zeros((40, 40))
    truth[5:12, 5:12] = truth[25:35, 25:35] = 1  # two true objects
    choice = choose_postprocessing([_case(truth, truth * 0.9 + 0.05)] * 3, n_classes=2)
    assert not choice.postprocess.largest_component and choice.postprocess.min_size == 0
    assert choice.dice_after == choice.dice_before == 1.0
    assert any("keep largest component" in step and "not kept" in step for step in choice.steps)


def test_threshold_moves_only_when_it_helps_and_holes_are_filled_when_they_are_errors():
    truth = np.zeros((30, 30))
    truth[5:25, 5:25] = 1
    probabilities = np.where(truth > 0, 0.45, 0.05)  # under-confident: 0.5 misses everything, 0.4 gets it
    choice = choose_postprocessing([_case(truth, probabilities)], n_classes=2)
    assert choice.threshold < 0.45 and choice.dice_after == 1.0
    holed = truth * 0.9 + 0.05
    holed[12:16, 12:16] = 0.1  # a hole the truth does not have
    choice = choose_postprocessing([_case(truth, holed)], n_classes=2)
    assert choice.postprocess.fill_holes and choice.threshold == 0.5


def test_largest_component_is_chosen_per_class_in_3d():
    """Class 1 has a stray speck in another slice (removed); class 2 is truly two objects (kept whole)."""
    truth = np.zeros((5, 30, 30))
    truth[1:4, 5:15, 5:15] = 1
    truth[1:4, 20:25, 5:10] = truth[1:4, 20:25, 20:25] = 2
    probabilities = np.stack([(truth == k) * 0.9 + 0.05 for k in range(3)])
    probabilities[1, 4, 25:28, 25:28], probabilities[0, 4, 25:28, 25:28] = 0.95, 0.0  # a class-1 false positive
    choice = choose_postprocessing([_case(truth, probabilities)] * 2, n_classes=3)
    assert choice.postprocess.largest_component_classes == (1,) and not choice.postprocess.largest_component
    assert choice.dice_after > choice.dice_before


def test_only_densely_labelled_cases_choose_post_processing():
    truth = np.zeros((40, 40))
    truth[10:25, 10:25] = 1
    probabilities = truth * 0.9 + 0.05
    probabilities[32:35, 32:35] = 0.8  # a speck the largest component would remove
    partial = ValidationCase(probabilities.astype(np.float32), truth.astype(np.int64), None, False)
    choice = choose_postprocessing([partial] * 3, n_classes=2)
    assert not choice.postprocess.active and choice.threshold == 0.5 and choice.images == 0
    assert "no densely labelled image" in choice.steps[0]
    choice = choose_postprocessing([partial, _case(truth, probabilities)], n_classes=2)
    assert choice.images == 1 and choice.postprocess.largest_component

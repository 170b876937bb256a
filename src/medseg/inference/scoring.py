"""The one scoring loop: predict cases with a Predictor and score them against their masks."""

from __future__ import annotations

from typing import Any

import numpy as np

from medseg.data.store import SampleStore
from medseg.inference.postprocess import ValidationCase, stack_cases
from medseg.inference.predictor import Predictor
from medseg.metrics import MetricAccumulator


def score_samples(predictor: Predictor, store: SampleStore, indices: list[int], keep_cases: bool = False
                  ) -> tuple[list[tuple[int, dict[str, Any]]], list[ValidationCase]]:
    """Per-image metric rows ``(index, row)`` of ``store[indices]`` (whole images, predicted as ``medseg predict``
    does). ``keep_cases`` also returns the probabilities (float16, to halve the memory): one case per image, or per
    volume with its slices stacked, so post-processing is chosen in 3D."""
    accumulator = MetricAccumulator(n_classes=predictor.spec.n_classes, with_hd95=False)
    rows, slices = [], []
    for index in indices:
        sample = store[index]
        probabilities = predictor.probabilities(sample.image, sample.statistics)
        rows.append((index, accumulator.add(sample.id, predictor.labels(probabilities), sample.mask, sample.region)))
        if keep_cases:
            slices.append((store.items[index].group, probabilities.astype(np.float16), sample))
    return rows, [case for _, case in stack_cases(slices, predictor.spec.n_classes)]

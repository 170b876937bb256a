"""The one scoring loop of validation, out-of-fold scoring and evaluation: cases (an image, or a volume's slices in
slice order) -> predicted probabilities -> labels -> a :class:`MetricRow` per case (a volume scored in 3D)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Iterator, Sequence

import numpy as np

from medseg.data.datasets import Item, Sample, load_sample
from medseg.data.readers import Reader
from medseg.data.store import SampleStore
from medseg.errors import MedsegError
from medseg.inference.postprocess import ValidationCase, postprocess, to_labels
from medseg.inference.predictor import Predictor
from medseg.metrics import MetricAccumulator, MetricRow
from medseg.run.contract import InferenceSpec, PostprocessSpec


@dataclass(frozen=True)
class Case:
    """What is scored as one: an image, or a volume's slices in slice order (``volume``), with the volume's voxel
    spacing ``(slice, height, width)`` in mm for HD95 (None: pixels)."""

    name: str
    samples: tuple[Sample, ...]
    volume: bool
    spacing: tuple[float, ...] | None = None


@dataclass(frozen=True)
class PredictedCase(ValidationCase):
    """A case's probabilities (a volume's slices stacked after the class axis), truth and the pixels that count
    (labelled, inside the region), with its name and spacing: what post-processing is chosen on, and what is
    scored."""

    name: str
    spacing: tuple[float, ...] | None = None

    def compact(self) -> "PredictedCase":
        """The case with float16 probabilities (half the memory), to keep for later scoring."""
        return replace(self, probabilities=self.probabilities.astype(np.float16))


@dataclass(frozen=True)
class ScoredCase:
    """A case as the loop leaves it: predicted, labelled and scored."""

    case: Case
    predicted: PredictedCase
    labels: np.ndarray  # H x W, or Z x H x W for a volume
    row: MetricRow


def case_groups(items: Sequence[Item]) -> list[list[int]]:
    """Positions in ``items`` grouped by case: a volume's slices together in slice order, every other image
    alone; cases in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for position, item in enumerate(items):
        groups.setdefault(item.group, []).append(position)
    return [sorted(group, key=lambda p: items[p].slice_index) for group in groups.values()]


def make_case(items: Sequence[Item], samples: Sequence[Sample], spacing: tuple[float, ...] | None = None) -> Case:
    """The case of one group's items and their decoded samples; every sample needs its mask."""
    if any(sample.mask is None for sample in samples):
        raise MedsegError(items[0].image, "no ground-truth mask to score against")
    return Case(items[0].group, tuple(samples), items[0].case is not None, spacing)


def load_cases(items: Sequence[Item], spec: InferenceSpec, reader: Reader) -> Iterator[Case]:
    """The cases of ``items`` decoded from disk one at a time as ``spec``'s model takes them (its channels, its
    classes, its cases' statistics), a volume with its spacing in mm."""
    for group in case_groups(items):
        members = [items[p] for p in group]
        first = members[0]
        spacing = reader.volume(first.image).stacked_spacing(first.slice.axis) if first.case is not None else None
        samples = [load_sample(item, spec.channels, spec.n_classes, reader, spec.normalize) for item in members]
        yield make_case(members, samples, spacing)


def predict_case(predictor: Predictor, case: Case) -> PredictedCase:
    """The case's probabilities, each slice predicted from its own spacing, and its truth and region."""
    samples = case.samples
    probabilities = [predictor.probabilities(s.image, s.statistics, s.spacing) for s in samples]
    dense = not any(s.partial for s in samples)
    if not case.volume:
        return PredictedCase(probabilities[0], samples[0].mask, samples[0].counted(), dense, case.name, case.spacing)
    counted = [s.counted() for s in samples]
    if all(c is None for c in counted):
        region = None
    else:
        region = np.stack([np.ones(s.mask.shape, bool) if c is None else c for s, c in zip(samples, counted)])
    return PredictedCase(np.stack(probabilities, axis=0 if predictor.spec.n_classes == 2 else 1),
                         np.stack([s.mask for s in samples]), region, dense, case.name, case.spacing)


def score_predicted(case: PredictedCase, accumulator: MetricAccumulator, threshold: float,
                    spec: PostprocessSpec) -> tuple[np.ndarray, MetricRow]:
    """The case's labels (threshold or argmax, then post-processing; a volume in 3D) and its metric row."""
    labels = postprocess(to_labels(case.probabilities, threshold, accumulator.n_classes), spec)
    return labels, accumulator.add(case.name, labels, case.truth, case.region, case.spacing)


def score_cases(predictor: Predictor, cases: Iterable[Case], accumulator: MetricAccumulator) -> Iterator[ScoredCase]:
    """Predict, label (as the predictor's spec says) and score each case in turn."""
    spec = predictor.spec
    for case in cases:
        predicted = predict_case(predictor, case)
        labels, row = score_predicted(predicted, accumulator, spec.threshold, spec.postprocess)
        yield ScoredCase(case, predicted, labels, row)


def score_store(predictor: Predictor, store: SampleStore, indices: Sequence[int], shard: tuple[int, int] = (0, 1),
                keep_cases: bool = False) -> tuple[list[tuple[int, MetricRow]], list[PredictedCase]]:
    """Rows ``(position, row)`` of shard ``(rank, world_size)`` of the cases of ``store[indices]`` (the
    position of the case among all of them; no HD95). ``keep_cases`` also returns the compact predicted cases."""
    items = [store.items[i] for i in indices]
    groups = list(enumerate(case_groups(items)))[shard[0] :: shard[1]]
    cases = (make_case([items[p] for p in group], [store[indices[p]] for p in group]) for _, group in groups)
    accumulator = MetricAccumulator(n_classes=predictor.spec.n_classes, with_hd95=False)
    rows, kept = [], []
    for (position, _), scored in zip(groups, score_cases(predictor, cases, accumulator)):
        rows.append((position, scored.row))
        if keep_cases:
            kept.append(scored.predicted.compact())
    return rows, kept

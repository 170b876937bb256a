"""Validation during training: a model's scores on the run's validation images, predicted whole as inference
predicts them (without TTA, before post-processing is chosen), and what one pass should cost."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import torch

from medseg.data.datasets import Sample
from medseg.data.store import SampleStore
from medseg.data.transforms import scaled_shape
from medseg.inference.postprocess import ValidationCase, to_labels
from medseg.inference.predictor import Predictor, TorchBackend
from medseg.inference.scoring import score_store
from medseg.inference.sliding_window import tile_starts
from medseg.run.contract import InferenceSpec, PostprocessSpec
from medseg.distributed import DistributedContext


def validate(predictor: Predictor, store: SampleStore, indices: list[int], context: DistributedContext,
             keep_cases: bool = False) -> tuple[dict[str, float], list[ValidationCase]]:
    """Mean per-case Dice, IoU and accuracy of whole validation images (a volume's slices scored together, in 3D).
    Under DDP each rank scores a shard of the cases and the scores are gathered, so every rank gets the
    single-process result. ``keep_cases``: this rank's cases too."""
    rows, cases = score_store(predictor, store, indices, (context.rank, context.world_size), keep_cases)
    rows = [row for _, row in sorted(s for shard in context.all_gather(rows) for s in shard)]
    scores = np.array([(row.dice, row.iou, row.accuracy) for row in rows], dtype=np.float64).reshape(-1, 3)
    dice, iou, accuracy = np.nanmean(scores, axis=0)
    return {"dice": float(dice), "iou": float(iou), "accuracy": float(accuracy)}, cases


@dataclass(frozen=True)
class ValidationPicture:
    """A validation image with its predicted labels and its mask (for overlays)."""

    id: str
    image: np.ndarray
    labels: np.ndarray
    truth: np.ndarray


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode for the block, then back in the mode it was in."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


class Validator:
    """A run's validation images (``indices`` of ``store``) and how they are predicted: as inference predicts,
    without TTA (cheaper) and without post-processing (not chosen yet)."""

    def __init__(self, store: SampleStore, indices: list[int], spec: InferenceSpec, device: torch.device,
                 batch_size: int, context: DistributedContext) -> None:
        self.store, self.indices, self.device = store, indices, device
        self.spec = replace(spec, tta=False, postprocess=PostprocessSpec())
        self.batch_size, self.context = batch_size, context

    def predictor(self, model: torch.nn.Module) -> Predictor:
        return Predictor([TorchBackend(model, self.device)], self.spec, batch_size=self.batch_size)

    def scores(self, model: torch.nn.Module, keep_cases: bool) -> tuple[dict[str, float], list[ValidationCase]]:
        """:func:`validate` over every rank; ``keep_cases``: this rank's predictions too."""
        with evaluating(model):
            return validate(self.predictor(model), self.store, self.indices, self.context, keep_cases)

    def cases(self, model: torch.nn.Module) -> list[ValidationCase]:
        """Every validation image's prediction, made by this process alone."""
        with evaluating(model):
            return validate(self.predictor(model), self.store, self.indices, DistributedContext(), True)[1]

    def pictures(self, model: torch.nn.Module, count: int) -> list[ValidationPicture]:
        """The first ``count`` validation images with their predictions."""
        with evaluating(model):
            predictor = self.predictor(model)
            return [self._picture(predictor, self.store[index]) for index in self.indices[:count]]

    def _picture(self, predictor: Predictor, sample: Sample) -> ValidationPicture:
        probabilities = predictor.probabilities(sample.image, sample.statistics)
        labels = to_labels(probabilities, self.spec.threshold, self.spec.n_classes)
        return ValidationPicture(sample.id, sample.image, labels, sample.mask)

    def estimated_cost(self, seconds_per_pixel: float) -> float:
        """Seconds one pass should take: its pixels (tiles included) at a third of the training time per pixel (a
        forward pass without backward). NaN before the training speed is measured."""
        pixels = sum(self._pixels(*self.store.shapes[index]) for index in self.indices)
        return pixels * seconds_per_pixel / 3

    def _pixels(self, height: int, width: int) -> int:
        spec = self.spec
        if spec.resize:
            return spec.resize**2
        if spec.scale is not None:
            height, width = scaled_shape((height, width), spec.scale)
        if spec.patch_size:
            tile_h, tile_w = min(spec.patch_size, height), min(spec.patch_size, width)
            return (len(tile_starts(height, tile_h, spec.overlap)) * tile_h
                    * len(tile_starts(width, tile_w, spec.overlap)) * tile_w)
        return height * width

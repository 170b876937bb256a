"""The one scoring loop: cases grouped and ordered, a volume scored once in 3D, kept cases scored as the loop
scores them, validation shards that add up to the whole."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from medseg.data.datasets import Item, Sample, load_items
from medseg.data.store import SampleStore
from medseg.data.volumes import Slice
from medseg.errors import MedsegError
from medseg.inference.predictor import Predictor
from medseg.inference.scoring import (Case, case_groups, make_case, predict_case, score_cases, score_predicted,
                                      score_store)
from medseg.metrics import MetricAccumulator, confusion_counts, scores_from_counts
from medseg.run.contract import InferenceSpec, PostprocessSpec
from tests.data import fixtures


class Pointwise:
    """Logits from the first channel alone: foreground where the image is bright (binary), or three classes."""

    device = torch.device("cpu")

    def __init__(self, n_classes: int = 2) -> None:
        self.n_classes = n_classes

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch[:, :1]
        if self.n_classes == 2:
            return 20 * (x - 0.5)
        return torch.cat([torch.ones_like(x), 4 * x - 2, -4 * x - 2], dim=1)


def predictor(n_classes: int = 2, **spec_options) -> Predictor:
    spec = InferenceSpec(n_classes=n_classes, channels=1, normalize="unit", patch_size=None, resize=None,
                         threshold=0.5, tta=False, tta_vflip=False, overlap=0.0, postprocess=PostprocessSpec(),
                         class_names=tuple(f"c{k}" for k in range(n_classes)))
    return Predictor([Pointwise(n_classes)], replace(spec, **spec_options))


def sample(name: str, image: np.ndarray, mask: np.ndarray) -> Sample:
    return Sample(name, image[..., None].astype(np.float32), mask.astype(np.int64))


def volume_case(rng) -> Case:
    """Three 8x9 slices whose masks differ from the (thresholded) images in a few pixels."""
    images = [(rng.random((8, 9)) > 0.6).astype(float) for _ in range(3)]
    masks = [np.where(rng.random((8, 9)) < 0.1, 1 - image, image) for image in images]
    return Case("vol", tuple(sample(f"vol_{z:03d}", i, m) for z, (i, m) in enumerate(zip(images, masks))), True,
                (3.0, 1.0, 1.0))


def test_cases_are_grouped_by_volume_in_slice_order():
    items = [Item("a_001", None, (), case="a", slice=Slice(2, 1)), Item("x", None, ()),
             Item("a_000", None, (), case="a", slice=Slice(2, 0)), Item("b_000", None, (), case="b", slice=Slice(2, 0))]
    assert case_groups(items) == [[2, 0], [1], [3]]


def test_a_volume_is_one_row_scored_in_3d(rng):
    case = volume_case(rng)
    accumulator = MetricAccumulator()
    (scored,) = score_cases(predictor(), [case], accumulator)
    truth = np.stack([s.mask for s in case.samples])
    assert scored.labels.shape == truth.shape == scored.predicted.truth.shape
    expected = scores_from_counts(confusion_counts(scored.labels, truth, 2)[1])["dice"]
    assert scored.row.id == "vol" and scored.row.dice == pytest.approx(expected)
    assert [row.id for row in accumulator.rows()] == ["vol"]
    assert np.array_equal(scored.labels, (np.stack([s.image[..., 0] for s in case.samples]) > 0.5))


def test_an_image_case_is_scored_alone_and_missing_masks_are_refused():
    image = np.eye(6)
    case = make_case([Item("img", None, ())], [sample("img", image, image)])
    (scored,) = score_cases(predictor(), [case], MetricAccumulator())
    assert not case.volume and scored.row.id == "img" and scored.row.dice == 1 and scored.labels.shape == (6, 6)
    with pytest.raises(MedsegError, match="no ground-truth mask"):
        make_case([Item("img", None, ())], [Sample("img", image[..., None], None)])


def test_kept_cases_are_scored_as_the_loop_scores_them(rng):
    """Out-of-fold scoring keeps compact probabilities and applies a threshold and post-processing later: the
    rows are the loop's with that threshold and post-processing."""
    case, threshold, spec = volume_case(rng), 0.3, PostprocessSpec(largest_component=True)
    kept = predict_case(predictor(), case).compact()
    assert kept.probabilities.dtype == np.float16 and kept.name == "vol" and kept.spacing == (3.0, 1.0, 1.0)
    labels, later = score_predicted(kept, MetricAccumulator(), threshold, spec)
    (scored,) = score_cases(predictor(threshold=threshold, postprocess=spec), [case], MetricAccumulator())
    assert np.array_equal(labels, scored.labels) and later == scored.row


def test_validation_shards_add_up_to_the_whole(tmp_path):
    root = fixtures.make_msd(tmp_path / "task", n=3)
    items = [item for item in load_items(root) if item.split != "test"]
    store = SampleStore(items, 1, 3, cache_gb=1.0)
    indices = list(range(len(items)))[1:]  # a subset: the first volume loses a slice
    whole, kept = score_store(predictor(3), store, indices, keep_cases=True)
    assert [row.id for _, row in whole] == ["case_000", "case_001", "case_002"]
    assert [case.name for case in kept] == ["case_000", "case_001", "case_002"]
    assert kept[0].truth.shape[0] == sum(item.case == "case_000" for item in items) - 1
    shards = [score_store(predictor(3), store, indices, (rank, 2))[0] for rank in range(2)]
    assert sorted(row for shard in shards for row in shard) == whole


def test_a_partial_label_is_scored_on_its_labelled_pixels_only():
    """Wrong predictions at unlabelled pixels cost nothing; the case is marked not dense (it cannot judge
    post-processing)."""
    image = np.zeros((6, 6))
    image[:, 3:] = 1  # the predictor says foreground on the right half
    truth = np.zeros((6, 6))
    truth[:, 3:5] = 1  # the truth's column 5 is background, but it is unlabelled
    labelled = np.ones((6, 6), bool)
    labelled[:, 5] = False
    partial = Sample("img", image[..., None].astype(np.float32), truth.astype(np.int64), labelled=labelled)
    (scored,) = score_cases(predictor(), [make_case([Item("img", None, ())], [partial])], MetricAccumulator())
    assert scored.row.dice == 1 and not scored.predicted.dense
    dense = sample("img", image, truth)
    (scored,) = score_cases(predictor(), [make_case([Item("img", None, ())], [dense])], MetricAccumulator())
    assert scored.row.dice == pytest.approx(2 * 12 / (18 + 12)) and scored.predicted.dense


def test_a_volume_of_other_channels_is_one_line_before_any_slice():
    from medseg.data.volumes import Volume
    from medseg.inference.predict import predict_volume

    volume = Volume.canonical(np.zeros((6, 5, 4, 1), np.float32), (1.0, 1.0, 1.0), np.eye(4))
    with pytest.raises(MedsegError, match=r"scan.nii.gz: has 1 channel\(s\), the run takes 2"):
        predict_volume(predictor(channels=2, normalize="nonzero"), volume, "scan.nii.gz")

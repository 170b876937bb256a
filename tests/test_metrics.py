"""Metrics against MONAI as an independent oracle, edge cases and aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medseg.metrics import METRICS, MetricAccumulator, Scores, confusion_counts, hd95, scores_from_counts

monai_metrics = pytest.importorskip("monai.metrics")


def _random_masks(rng, n, shape, classes=2, density=0.3):
    masks = []
    for _ in range(n):
        blobs = rng.random(shape) < density
        labels = rng.integers(1, classes, shape) if classes > 2 else np.ones(shape, int)
        masks.append(np.where(blobs, labels, 0))
    return masks


def _onehot(masks, classes):
    t = torch.as_tensor(np.stack(masks)).long()
    return torch.nn.functional.one_hot(t, classes).permute(0, 3, 1, 2).float()


def _binary_cases(rng):
    shape = (23, 31)
    preds = _random_masks(rng, 6, shape)
    truths = _random_masks(rng, 6, shape)
    empty = np.zeros(shape, int)
    full = np.ones(shape, int)
    preds += [empty, empty, full, truths[0]]
    truths += [empty, truths[1], truths[2], truths[0]]
    return preds, truths


def test_dice_and_iou_match_monai(rng):
    preds, truths = _binary_cases(rng)
    ours = scores_from_counts(np.stack([confusion_counts(p, t, 2)[1] for p, t in zip(preds, truths)]))
    dice = monai_metrics.DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    iou = monai_metrics.MeanIoU(include_background=False, reduction="none", ignore_empty=False)
    p, t = _onehot(preds, 2), _onehot(truths, 2)
    np.testing.assert_allclose(ours["dice"], dice(p, t)[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(ours["iou"], iou(p, t)[:, 0].numpy(), atol=1e-6)


def test_multiclass_dice_matches_monai(rng):
    preds = _random_masks(rng, 5, (20, 20), classes=4, density=0.6)
    truths = _random_masks(rng, 5, (20, 20), classes=4, density=0.6)
    ours = scores_from_counts(np.stack([confusion_counts(p, t, 4)[1:] for p, t in zip(preds, truths)]))
    dice = monai_metrics.DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    np.testing.assert_allclose(ours["dice"], dice(_onehot(preds, 4), _onehot(truths, 4)).numpy(), atol=1e-6)


def test_confusion_metrics_match_monai(rng):
    preds, truths = _binary_cases(rng)
    idx = slice(0, 6)  # non-degenerate cases; degenerate ones follow our documented rule
    ours = scores_from_counts(np.stack([confusion_counts(p, t, 2)[1] for p, t in zip(preds[idx], truths[idx])]))
    names = {"accuracy": "accuracy", "precision": "precision", "recall": "sensitivity", "specificity": "specificity"}
    p, t = _onehot(preds[idx], 2), _onehot(truths[idx], 2)
    for ours_name, monai_name in names.items():
        metric = monai_metrics.ConfusionMatrixMetric(include_background=False, metric_name=monai_name,
                                                     reduction="none")
        metric(p, t)
        np.testing.assert_allclose(ours[ours_name], metric.aggregate()[0][:, 0].numpy(), atol=1e-6)


@pytest.mark.parametrize("spacing", [None, (0.5, 2.0)])
def test_hd95_matches_monai(rng, spacing):
    for _ in range(8):
        pred = np.zeros((40, 50), bool)
        truth = np.zeros((40, 50), bool)
        for mask in (pred, truth):
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, 35), rng.integers(0, 45)
                mask[y : y + rng.integers(2, 12), x : x + rng.integers(2, 12)] = True
            mask |= rng.random(mask.shape) < 0.01
        expected = monai_metrics.compute_hausdorff_distance(
            _onehot([pred.astype(int)], 2), _onehot([truth.astype(int)], 2), percentile=95, spacing=spacing
        )[0, 0].item()
        assert hd95(pred, truth, spacing) == pytest.approx(expected, abs=1e-5)


def test_empty_mask_rules():
    empty = np.zeros((4, 5), int)
    some = empty.copy()
    some[1, 1] = 1
    both_empty = scores_from_counts(confusion_counts(empty, empty, 2)[1])
    assert both_empty["dice"] == 1 and both_empty["iou"] == 1 and both_empty["precision"] == 1
    as_nan = scores_from_counts(confusion_counts(empty, empty, 2)[1], empty="nan")
    assert math.isnan(as_nan["dice"]) and as_nan["accuracy"] == 1
    missed = scores_from_counts(confusion_counts(empty, some, 2)[1])
    assert missed["dice"] == 0 and missed["precision"] == 0 and missed["recall"] == 0
    assert hd95(empty, empty) == 0 and math.isnan(hd95(empty, empty, empty="nan"))
    assert hd95(empty, some) == pytest.approx(math.hypot(4, 5))


def test_region_restricts_every_metric():
    pred = np.array([[1, 1, 0, 0]])
    truth = np.array([[1, 0, 0, 1]])
    region = np.array([[True, True, True, False]])
    tp, fp, fn, tn = confusion_counts(pred, truth, 2, region)[1]
    assert (tp, fp, fn, tn) == (1, 1, 0, 1)
    acc = MetricAccumulator()
    row = acc.add("a", pred, truth, region)
    # HD95: percentile 95 of the distances [0, 1]
    assert row.dice == pytest.approx(2 / 3) and row.hd95 == pytest.approx(0.95)


def test_accumulator_per_image_and_pooled():
    acc = MetricAccumulator(with_hd95=False)
    acc.add("a", np.array([[1, 1, 0, 0]]), np.array([[1, 1, 0, 0]]))
    acc.add("b", np.array([[0, 0, 0, 0]]), np.array([[1, 1, 1, 1]]))
    summary = acc.summary()
    assert summary["dice"]["mean"] == pytest.approx(0.5)
    assert summary["dice"]["std"] == pytest.approx(0.5)
    assert summary["dice"]["pooled"] == pytest.approx(2 * 2 / (2 * 2 + 4))
    assert [r.id for r in acc.rows()] == ["a", "b"]


def test_accumulator_multiclass_columns():
    acc = MetricAccumulator(n_classes=3, with_hd95=False)
    row = acc.add("a", np.array([[1, 2, 2]]), np.array([[1, 2, 0]]))
    assert row.per_class[0].dice == 1 and row.per_class[1].dice == pytest.approx(2 / 3)
    assert row.dice == pytest.approx((1 + 2 / 3) / 2)

    assert list(row.columns()) == ["id", "dice_c1", "dice_c2", "dice", "iou_c1", "iou_c2", "iou", "accuracy_c1",
                                   "accuracy_c2", "accuracy", "precision_c1", "precision_c2", "precision",
                                   "recall_c1", "recall_c2", "recall", "specificity_c1", "specificity_c2",
                                   "specificity"]
    assert list(acc.summary()) == list(row.columns())[1:]


def test_binary_row_columns_have_no_class_suffix_and_hd95_last():
    row = MetricAccumulator().add("a", np.array([[1, 0]]), np.array([[1, 1]]))
    assert len(row.per_class) == 1 and row.per_class[0] == Scores(**{k: getattr(row, k) for k in METRICS})
    assert list(row.columns()) == ["id", *METRICS] and row.columns()["dice"] == pytest.approx(2 / 3)


def test_per_case_3d_dice_matches_monai_on_volumes(rng):
    """A volume is scored as one case in 3D (per class), as MONAI's DiceMetric scores a 3D volume."""
    preds = _random_masks(rng, 4, (6, 12, 14), classes=3, density=0.5)
    truths = _random_masks(rng, 4, (6, 12, 14), classes=3, density=0.5)
    accumulator = MetricAccumulator(n_classes=3, with_hd95=False)
    for index, (pred, truth) in enumerate(zip(preds, truths)):
        accumulator.add(f"case{index}", pred, truth, spacing=(2.0, 0.9, 0.9))
    onehot = [torch.nn.functional.one_hot(torch.as_tensor(np.stack(m)).long(), 3).permute(0, 4, 1, 2, 3).float()
              for m in (preds, truths)]
    expected = monai_metrics.DiceMetric(include_background=False, reduction="none", ignore_empty=False)(*onehot)
    rows = accumulator.rows()
    for cls in (1, 2):
        np.testing.assert_allclose([row.per_class[cls - 1].dice for row in rows], expected[:, cls - 1].numpy(),
                                   atol=1e-6)
    np.testing.assert_allclose([row.dice for row in rows], expected.mean(dim=1).numpy(), atol=1e-6)

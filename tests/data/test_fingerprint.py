"""Fingerprint values on small synthetic sets with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.data.datasets import Sample
from medseg.data.fingerprint import Fingerprint, compute_fingerprint, object_widths, structure_widths


def _sample(image: np.ndarray, mask: np.ndarray, region: np.ndarray | None = None) -> Sample:
    return Sample("x", image[..., None].astype(np.float32), mask.astype(np.int64), region)


def test_sizes_intensities_foreground_and_objects():
    square = np.zeros((40, 40), np.int64)
    square[5:16, 5:16] = 1  # one 11 x 11 object: 121 px
    two = square.copy()
    two[25:36, 25:36] = 1
    samples = [_sample(np.full((40, 40), 0.25), square), _sample(np.full((40, 40), 0.75), two),
               _sample(np.full((40, 60), 0.5), np.zeros((40, 60))), _sample(np.full((20, 40), 0.5), square[:20])]
    fingerprint = compute_fingerprint(samples, n_classes=2)
    assert (fingerprint.n_images, fingerprint.channels) == (4, 1)
    assert fingerprint.height == (20, 40, 40) and fingerprint.width == (40, 40, 60)
    assert fingerprint.intensity_mean[0] == pytest.approx((0.25 * 1600 + 0.75 * 1600 + 0.5 * 3200) / 6400)
    assert fingerprint.empty_mask_share == 0.25 and fingerprint.components_per_image == 1.0
    assert fingerprint.component_area == 121.0
    assert fingerprint.foreground_fraction == pytest.approx(np.mean([121 / 1600, 242 / 1600, 0, 121 / 800]),
                                                            abs=1e-5)


def test_structure_width_of_lines_and_discs():
    stripe = np.zeros((20, 40), bool)
    stripe[8:11, 5:35] = True  # 3 px thick
    assert np.median(structure_widths(stripe)) == 3
    ys, xs = np.mgrid[:41, :41]
    disc = (ys - 20) ** 2 + (xs - 20) ** 2 <= 15**2
    assert abs(np.median(structure_widths(disc)) - 31) <= 2  # about its diameter
    vessels = np.zeros((60, 60), np.int64)
    vessels[:, 10:13] = vessels[:, 30:33] = 1
    fingerprint = compute_fingerprint([_sample(np.zeros((60, 60)), vessels)], 2)
    assert fingerprint.foreground_width == 3 and fingerprint.background_width > 2 * fingerprint.foreground_width


def test_widths_are_measured_per_class_and_per_object():
    ys, xs = np.mgrid[:80, :80]
    mask = np.zeros((80, 80), np.int64)
    mask[(ys - 40) ** 2 + (xs - 40) ** 2 <= 24**2] = 2  # a rim, 4 px thick ...
    mask[(ys - 40) ** 2 + (xs - 40) ** 2 <= 20**2] = 1  # ... around a disc 41 px wide
    fingerprint = compute_fingerprint([_sample(np.zeros((80, 80)), mask)], 3)
    assert abs(fingerprint.class_widths[0] - 41) <= 2 and 3 <= fingerprint.class_widths[1] <= 5
    assert fingerprint.foreground_width > 40  # the union alone would hide the rim
    widths, areas = object_widths(mask == 1)
    assert abs(widths[0] - 41) <= 2 and areas[0] == (mask == 1).sum() and abs(fingerprint.object_width - 41) <= 2
    specks = mask.copy()
    grid = np.zeros_like(mask, bool)
    grid[::7, ::7] = True
    specks[grid & (mask == 0)] = 3  # 1-px specks around them: many objects, little area
    assert abs(compute_fingerprint([_sample(np.zeros((80, 80)), specks)], 4).object_width - 41) <= 2


def test_region_restricts_statistics_and_orientation_is_measured():
    image = np.zeros((40, 40))
    image[:20] = 1.0  # bright top half
    region = np.ones((40, 40), bool)
    region[:, 30:] = False
    mask = np.zeros((40, 40))
    mask[:, 25:] = 1  # 5 of the 30 columns inside the region
    fingerprint = compute_fingerprint([_sample(image, mask, region)], 2)
    assert fingerprint.foreground_fraction == pytest.approx(5 / 30, abs=1e-5)
    assert fingerprint.region_fraction == pytest.approx(0.75)
    assert fingerprint.updown_contrast == pytest.approx(2.0) and fingerprint.leftright_contrast == 0.0


def test_fingerprint_file_round_trip(tmp_path):
    mask = np.zeros((10, 10))
    mask[2:5, 2:5] = 1
    fingerprint = compute_fingerprint([_sample(np.random.default_rng(0).random((10, 10)), mask)], 2)
    fingerprint.save(tmp_path / "fingerprint.json")
    assert Fingerprint.load(tmp_path / "fingerprint.json") == fingerprint


def test_objects_are_measured_on_dense_masks_only():
    """A partial mask's unlabelled pixels may hold any object: its class shares count (on labelled pixels), its
    objects do not."""
    square = np.zeros((40, 40), np.int64)
    square[5:16, 5:16] = 1
    scribble = np.zeros((40, 40), np.int64)
    scribble[20, 2:38] = 1  # a 1-px stroke: as an object it would be 1 px wide
    labelled = np.zeros((40, 40), bool)
    labelled[18:23] = True
    partial = Sample("p", np.zeros((40, 40, 1), np.float32), scribble, labelled=labelled)
    fingerprint = compute_fingerprint([_sample(np.zeros((40, 40)), square), partial], n_classes=2)
    dense_only = compute_fingerprint([_sample(np.zeros((40, 40)), square)], n_classes=2)
    assert (fingerprint.n_partial, fingerprint.n_dense) == (1, 1)
    assert fingerprint.foreground_width == dense_only.foreground_width == 11
    assert fingerprint.components_per_image == 1 and fingerprint.foreground_fraction == pytest.approx(121 / 1600, abs=1e-5)
    assert fingerprint.class_fractions[1] == pytest.approx((121 + 36) / (1600 + 200), abs=1e-5)

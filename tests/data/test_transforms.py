"""Augmentation keeps image and mask aligned; patches oversample foreground and mark padding outside the region."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.data.datasets import Sample
from medseg.data.intensity import normalize
from medseg.data.transforms import (AugmentConfig, GridElasticDeformation, augment, build_augmentation, random_patch,
                                    rescale_sample)


def _mask_shaped_sample(rng, size=64):
    mask = np.zeros((size, size), np.int64)
    for _ in range(5):
        y, x = rng.integers(0, size - 12, 2)
        mask[y : y + rng.integers(4, 12), x : x + rng.integers(4, 12)] = 1
    image = mask.astype(np.float32)[..., None]
    return Sample("s", image, mask, None)


@pytest.mark.parametrize("seed", range(6))
def test_geometric_augmentation_keeps_image_and_mask_aligned(seed):
    rng = np.random.default_rng(seed)
    sample = _mask_shaped_sample(rng)
    config = AugmentConfig(affine_p=1.0, elastic_p=1.0, intensity_p=0, gamma_p=0, blur_p=0, noise_p=0)
    out = augment(build_augmentation(config), sample, seed)
    # The image was the mask: after the same warp, thresholding the (linearly interpolated) image gives the
    # (nearest-neighbour) mask except on a thin band along edges.
    disagreement = ((out.image[..., 0] > 0.5) != (out.mask > 0)).mean()
    assert disagreement < 0.03
    assert out.region.dtype == bool and out.region.shape == out.mask.shape


def test_augmentation_is_reproducible_from_its_seed():
    sample = _mask_shaped_sample(np.random.default_rng(0))
    pipeline = build_augmentation(AugmentConfig())
    a, b = augment(pipeline, sample, 7), augment(pipeline, sample, 7)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)


def test_elastic_deformation_moves_pixels_smoothly():
    image = np.tile(np.linspace(0, 1, 50, dtype=np.float32), (40, 1))[..., None]
    transform = GridElasticDeformation(grid=3, sigma=8.0, p=1.0)
    transform.set_random_seed(0)
    params = transform.get_params_dependent_on_data({"shape": image.shape}, {})
    warped = transform.apply(image, **params)
    assert warped.shape == image.shape and not np.allclose(warped, image)
    displacement = params["map_x"] - np.arange(50)[None, :]
    assert np.abs(np.diff(displacement, axis=1)).max() < 1.5  # smooth, not per-pixel noise


def test_random_patch_pads_small_images_and_marks_padding():
    sample = Sample("s", np.ones((10, 12, 1), np.float32), np.ones((10, 12), np.int64), None)
    patch = random_patch(sample, 16, np.random.default_rng(0))
    assert patch.image.shape == (16, 16, 1)
    assert patch.region.sum() == 120 and (patch.mask[~patch.region] == 0).all()


def test_random_patch_oversamples_foreground():
    mask = np.zeros((200, 200), np.int64)
    mask[190:195, 5:10] = 1
    sample = Sample("s", mask.astype(np.float32)[..., None], mask, None)
    rng = np.random.default_rng(0)
    hits = sum(random_patch(sample, 32, rng, foreground_p=1.0).mask.any() for _ in range(20))
    assert hits == 20


def test_zscore_normalisation():
    image = np.random.default_rng(0).random((8, 8, 2)).astype(np.float32)
    out = normalize(image, "zscore")
    np.testing.assert_allclose(out.mean(axis=(0, 1)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 1)), 1, atol=1e-4)
    assert normalize(np.full((4, 4, 1), 0.3, np.float32), "zscore").max() == 0


def test_intensity_augmentation_keeps_stored_intensities_in_their_range():
    """A volume's slice (intensities as stored, here 100..900) is augmented on its own range: gamma and noise
    act as they do on [0, 1] images instead of blowing the values up."""
    image = np.linspace(100, 900, 32 * 32, dtype=np.float32).reshape(32, 32, 1)
    only_gamma = AugmentConfig(flip=False, vflip=False, rotate90=False, affine_p=0, elastic_p=0, intensity_p=0,
                               gamma=0.5, gamma_p=1.0, blur_p=0, noise_p=0)
    out = augment(build_augmentation(only_gamma), Sample("a", image, np.zeros((32, 32), np.int64)), seed=1)
    assert out.image.min() >= 100 - 1e-3 and out.image.max() <= 900 + 1e-3 and not np.allclose(out.image, image)


def test_transforms_of_equal_probability_fire_independently():
    """Horizontal and vertical flips (p = 0.5 each) give all four outcomes, mirror images included."""
    image = np.arange(12, dtype=np.float32).reshape(3, 4, 1) / 12
    flips_only = AugmentConfig(rotate90=False, affine_p=0, elastic_p=0, intensity_p=0, gamma_p=0, blur_p=0,
                               noise_p=0)
    pipeline = build_augmentation(flips_only)
    outcomes = {"identity": image[..., 0], "horizontal": image[:, ::-1, 0], "vertical": image[::-1, :, 0],
                "both": image[::-1, ::-1, 0]}
    seen = set()
    for seed in range(40):
        out = augment(pipeline, Sample("a", image, np.zeros((3, 4), np.int64)), seed).image[..., 0]
        seen |= {name for name, expected in outcomes.items() if np.array_equal(out, expected)}
    assert seen == set(outcomes)


def test_rescaling_keeps_labels_and_leaves_volume_slices_to_their_spacing():
    mask = np.zeros((40, 60), np.int64)
    mask[10:30, 20:40] = 2
    sample = Sample("a", np.random.default_rng(0).random((40, 60, 1)).astype(np.float32), mask, None)
    scaled = rescale_sample(sample, 0.5)
    assert scaled.image.shape == (20, 30, 1) and scaled.mask.shape == (20, 30) and set(np.unique(scaled.mask)) == {0, 2}
    assert rescale_sample(Sample("s", sample.image, mask, None, spacing=(1.0, 1.0)), 0.5).mask.shape == (40, 60)


@pytest.mark.parametrize("scale", [0.37, 0.5, 0.71])
def test_a_label_resampled_down_and_up_stays_centred(scale):
    """Bug: labels were resized with OpenCV's INTER_NEAREST, whose grid is shifted towards the top-left: every
    resized mask moved up to half a pixel against its image."""
    from medseg.data.transforms import _resized, rescale_sample, scaled_shape

    ys, xs = np.mgrid[:101, :97]
    disc = ((ys - 50.0) ** 2 + (xs - 48.0) ** 2 < 20**2).astype(np.int64)
    sample = Sample("x", disc[..., None].astype(np.float32), disc)
    down = rescale_sample(sample, scale)
    assert down.mask.shape == scaled_shape(disc.shape, scale)
    up = _resized(down, disc.shape)
    for before, after in zip(ndimage.center_of_mass(disc), ndimage.center_of_mass(up.mask)):
        assert abs(before - after) < 0.5
    image_centre = ndimage.center_of_mass(down.image[..., 0].clip(0, 1))
    mask_centre = ndimage.center_of_mass(down.mask)
    assert all(abs(a - b) < 0.25 for a, b in zip(image_centre, mask_centre))  # the mask lies on its image

"""The sample store and the per-epoch keys: order, determinism, the cache bound, exact compact storage."""

from __future__ import annotations

import numpy as np

from medseg.data.datasets import load_items, load_sample
from medseg.config import AugmentConfig, DataConfig
from medseg.data.store import PatchDataset, SampleStore, epoch_keys
from tests.data import fixtures


def test_epoch_keys_are_seeded_reshuffled_passes():
    keys = epoch_keys(5, steps=4, batch_size=3, seed=7, epoch=2)
    assert len(keys) == 12 and keys == epoch_keys(5, 4, 3, 7, 2)
    indices = [index for index, _ in keys]
    assert sorted(indices[:5]) == list(range(5)) and sorted(indices[5:10]) == list(range(5))  # whole passes
    assert keys != epoch_keys(5, 4, 3, 7, 3) and keys != epoch_keys(5, 4, 3, 8, 2)
    assert len({seed for _, seed in keys}) == 12


def test_cache_holds_what_fits_and_reads_the_rest(tmp_path):
    root = fixtures.make_folder(tmp_path, n=6, split=False)
    items = load_items(root)
    one = 20 * 24 * 2  # uint8 image + uint8 mask of a 20 x 24 fixture
    store = SampleStore(items, None, 2, cache_gb=3.5 * one / 2**30)
    assert store.cached == 3 and len(store) == 6 and store.shapes == [(20, 24)] * 6
    for index, item in enumerate(items):
        expected = load_sample(item, None, 2)
        np.testing.assert_array_equal(store[index].image, expected.image)  # 8-bit kept exactly
        np.testing.assert_array_equal(store[index].mask, expected.mask)
    assert store[0].image.dtype == np.float32 and store[0].mask.dtype == np.int64


def test_a_patch_is_normalised_with_its_whole_image_statistics(tmp_path):
    """A crop is scaled as the same pixels are at inference, where the whole image is normalised."""
    from PIL import Image

    from medseg.config import AugmentConfig, DataConfig
    from medseg.data.store import PatchDataset

    image = np.zeros((32, 64), np.uint8)
    image[:, 32:] = 200  # dark left half, bright right half
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(tmp_path / "masks" / "a.png")
    store = SampleStore(load_items(tmp_path), None, 2, cache_gb=1)
    off = AugmentConfig(flip=False, vflip=False, rotate90=False, affine_p=0, elastic_p=0, intensity_p=0, gamma_p=0,
                        blur_p=0, noise_p=0)
    patches = PatchDataset(store, DataConfig(patch_size=16, foreground_p=0), off, [(0, seed) for seed in range(20)])
    crops = [patches[i]["image"][0].numpy() for i in range(20)]
    bright = [c for c in crops if c.min() > 0]  # crops wholly inside the bright half
    assert bright and all(np.allclose(c, 1.0) for c in bright)  # (200/255 - mean) / std of the whole image = 1


def test_volume_slices_are_oversampled_towards_foreground(tmp_path):
    """With foreground_p = 1 every example of a volume comes from a slice that holds foreground; 2D images and
    foreground_p = 0 keep the slice the key names."""
    items = load_items(fixtures.make_msd(tmp_path, n=2))
    store = SampleStore(items, None, 3, cache_gb=1)
    keys = epoch_keys(len(store), steps=20, batch_size=2, seed=0, epoch=0)
    quiet = AugmentConfig(flip=False, vflip=False, rotate90=False, affine_p=0, elastic_p=0, intensity_p=0,
                          gamma_p=0, blur_p=0, noise_p=0)
    with_foreground = PatchDataset(store, DataConfig(patch_size=32, foreground_p=1.0), quiet, keys)
    assert all(with_foreground[k]["mask"].any() for k in range(len(keys)))
    plain = PatchDataset(store, DataConfig(patch_size=32, foreground_p=0.0), quiet, keys)
    assert not all(plain[k]["mask"].any() for k in range(len(keys)))  # slices 0 and 5 of each volume are empty


def test_2d_images_are_resampled_by_the_scale(tmp_path):
    items = load_items(fixtures.make_folder(tmp_path, n=2, split=False))
    store = SampleStore(items, None, 2, cache_gb=1, scale=0.5)
    assert store.shapes == [(10, 12)] * 2 and store[0].image.shape == (10, 12, 1)
    assert set(np.unique(store[0].mask)) <= {0, 1}  # labels stay labels (nearest neighbour)

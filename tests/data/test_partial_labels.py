"""Partial labels through the data layer: the folder format's unlabelled value and nnU-Net's ignore label decoded
to one meaning, unlabelled images listed but in no split, and training crops and losses that never count an
unlabelled pixel as background."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg.config import AugmentConfig, DataConfig
from PIL import Image

from medseg.data.datasets import Sample, check_dataset, find_classes, load_items, load_sample, split_items
from medseg.data.readers import UNLABELLED, Reader, mask_pixels
from medseg.data.store import PatchDataset, SampleStore
from medseg.data.transforms import random_patch
from medseg.errors import MedsegError
from medseg.losses import build_loss
from tests.data import fixtures

NO_AUGMENTATION = AugmentConfig(flip=False, vflip=False, rotate90=False, affine_p=0, elastic_p=0, intensity_p=0,
                                gamma_p=0, blur_p=0, noise_p=0)


def trimap(foreground: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """A binary mask as the folder format stores a partial label: 0 background, 255 foreground, 128 unlabelled."""
    return np.where(labelled, np.where(foreground, 255, 0), 128).astype(np.uint8)


def scribbled_folder(root, n: int = 4, size: int = 64):
    """Images whose right half is bright foreground; masks labelled only in a 6-px band at the left and right
    edges (so the unlabelled middle holds foreground and background alike)."""
    foreground = np.zeros((size, size), bool)
    foreground[:, size // 2:] = True
    labelled = np.zeros((size, size), bool)
    labelled[:, :6] = labelled[:, -6:] = True
    for i in range(n):
        fixtures._png(root / "images" / f"case{i}.png", np.where(foreground, 200, 40).astype(np.uint8))
        fixtures._png(root / "masks" / f"case{i}.png", trimap(foreground, labelled))
    return root, foreground, labelled


def test_the_unlabelled_value_decodes_to_one_meaning(tmp_path):
    binary, three = tmp_path / "binary.png", tmp_path / "three.png"
    fixtures._png(binary, np.array([[0, 255, 128]], np.uint8))
    fixtures._png(three, np.array([[0, 1, 2, 128]], np.uint8))
    with Reader() as reader:
        assert reader.mask(binary, 2, unlabelled=128).tolist() == [[0, 1, UNLABELLED]]
        assert reader.mask(three, 3, unlabelled=128).tolist() == [[0, 1, 2, UNLABELLED]]
        with pytest.raises(MedsegError, match="unexpected mask values"):  # without the convention, 128 is wrong
            reader.mask(binary, 2)
    assert mask_pixels(np.array([[0, 1, UNLABELLED]]), 2).tolist() == [[0, 255, 128]]  # written back as stored
    assert mask_pixels(np.array([[0, 2, UNLABELLED]]), 3).tolist() == [[0, 2, 128]]


def test_a_partial_mask_is_a_sample_with_its_labelled_pixels(tmp_path):
    root, foreground, labelled = scribbled_folder(tmp_path)
    items = load_items(root)
    sample = load_sample(items[0], None, 2)
    assert sample.partial and np.array_equal(sample.labelled, labelled)
    assert np.array_equal(sample.mask, foreground & labelled)  # an unlabelled pixel's class id reads 0
    assert np.array_equal(sample.counted(), labelled)
    assert find_classes(root, items).count == 2  # 128 is not a class


def test_multi_class_masks_with_unlabelled_pixels_keep_their_classes(tmp_path):
    root = fixtures.make_three_class_folder(tmp_path)
    mask = np.asarray(Image.open(root / "masks" / "case0.png")).copy()
    mask[0, :] = 128
    fixtures._png(root / "masks" / "case0.png", mask)
    items = load_items(root)
    classes = find_classes(root, items)
    assert classes.count == 3 and classes.source == "masks hold the values 0..2"
    sample = load_sample(items[0], None, 3)
    assert not sample.labelled[0].any() and sample.labelled[1:].all()


def test_nnunet_ignore_label_is_read_from_dataset_json(tmp_path):
    root = fixtures.make_nnunet(tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "x": 1, "ignore": 2}
    (root / "dataset.json").write_text(json.dumps(meta))
    label = np.asarray(Image.open(root / "labelsTr" / "case_000.png")).copy()
    label[:, :3] = 2
    fixtures._png(root / "labelsTr" / "case_000.png", label)
    items = load_items(root)
    classes = find_classes(root, items)
    assert classes.names == ("background", "x")  # "ignore" is not a third class
    sample = load_sample(items[0], None, classes.count)
    assert sample.partial and not sample.labelled[:, :3].any() and sample.labelled[:, 3:].all()
    meta["labels"] = {"background": 0, "ignore": 1, "x": 2}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(MedsegError, match="'ignore' label .* must have the highest id"):
        load_items(root)


def test_a_mixed_dataset_lists_unlabelled_images_in_no_split(tmp_path):
    root, *_ = scribbled_folder(tmp_path, n=3)
    fixtures.make_folder(root, n=2, split=False)  # case0, case1 dense (their 20x24 images replace the scribbled)
    (root / "masks" / "case2.png").unlink()
    fixtures._png(root / "images" / "extra.png", np.zeros((20, 24), np.uint8))
    items = load_items(root)
    assert {item.id: item.labelled for item in items} == {"case0": True, "case1": True, "case2": False,
                                                           "extra": False}
    splits = split_items(items, val_fraction=0.5)
    assert {item.id for item in splits.train + splits.val + splits.test} == {"case0", "case1"}
    report = check_dataset(root)
    assert report.labels == {"dense": 2, "partial": 0, "none": 2} and report.unlabelled == ["case2", "extra"]


def test_partial_crops_are_centred_on_labelled_pixels(tmp_path):
    """Crops of a large image labelled in one corner only: every crop holds labelled pixels, where uniform crops
    would mostly hold none."""
    size = 256
    labelled = np.zeros((size, size), bool)
    labelled[:12, :12] = True
    mask = np.zeros((size, size), np.int64)
    sample = Sample("x", np.zeros((size, size, 1), np.float32), mask, region=labelled)
    rng = np.random.default_rng(0)
    within = [random_patch(sample, 32, rng, 0.0, within_region=True).region.any() for _ in range(50)]
    uniform = [random_patch(sample, 32, rng, 0.0).region.any() for _ in range(50)]
    assert all(within) and sum(uniform) < 10


def test_training_examples_count_only_labelled_pixels(tmp_path):
    """The loss of a training example ignores unlabelled pixels: it does not change when the network's output
    changes there, and it differs from the loss with those pixels read as background."""
    root, foreground, labelled = scribbled_folder(tmp_path, n=1)
    store = SampleStore(load_items(root), 1, 2, cache_gb=1)
    data = DataConfig(patch_size=64, foreground_p=0.0)
    example = PatchDataset(store, data, NO_AUGMENTATION, [(0, 1)])[0]
    assert np.array_equal(example["region"].numpy(), labelled)
    loss = build_loss("bce_dice", 1)
    mask, region = example["mask"][None], example["region"][None]
    logits = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    changed = logits.clone()
    changed[0, 0][~region[0]] += 5.0  # change the output only where nothing is labelled
    assert loss(logits, mask, region).item() == pytest.approx(loss(changed, mask, region).item(), abs=1e-6)
    as_background = loss(logits, mask, torch.ones_like(region))
    assert abs(as_background.item() - loss(logits, mask, region).item()) > 1e-2

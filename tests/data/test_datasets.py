"""Adapters (each on a fixture in its layout), conversion, checks and split rules."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.data.datasets import check_dataset, convert, load_items, load_sample, reslice, split_items
from medseg.errors import MedsegError
from tests.data import fixtures


def test_folder_format_with_split(tmp_path):
    items = load_items(fixtures.make_folder(tmp_path))
    assert [i.id for i in items] == [f"case{i}" for i in range(6)]
    assert items[0].split == "test" and items[1].split == "train"
    sample = load_sample(items[0], None, 2)
    assert sample.image.shape == (20, 24, 1) and set(np.unique(sample.mask)) == {0, 1}


def test_nnunet_adapter_lists_labelled_cases_only(tmp_path):
    items = load_items(fixtures.make_nnunet(tmp_path))
    assert {i.id for i in items} == {"case_000", "case_001", "case_002"}  # imagesTs without labels: for predict
    assert load_sample(items[0], 1, 2).mask.sum() == 80


def test_tiff_stack_adapter_slices(tmp_path):
    items = load_items(fixtures.make_tiff_stack(tmp_path), "tiff-stack")
    assert [i.id for i in items] == [f"train-volume_{z:03d}" for z in range(4)]
    sample = load_sample(items[2], None, 2)
    assert sample.image.shape == (20, 24, 1) and sample.mask.sum() == 80


def test_drive_adapter_carries_field_of_view(tmp_path):
    items = load_items(fixtures.make_drive(tmp_path))
    assert {i.split for i in items} == {"train", "test"}
    sample = load_sample(items[0], None, 2)
    assert sample.image.shape[2] == 3 and sample.region is not None and not sample.region[:2].any()


def test_isic_adapter(tmp_path):
    items = load_items(fixtures.make_isic(tmp_path), "isic")
    assert [i.id for i in items] == ["ISIC_0000000", "ISIC_0000001"]


def test_busi_adapter_merges_mask_files(tmp_path):
    items = load_items(fixtures.make_busi(tmp_path), "busi")
    assert [i.id for i in items] == ["benign_001", "normal_003"]
    sample = load_sample(items[0], 1, 2)
    assert sample.mask.sum() == 80 + 12  # both mask files OR-merged
    assert load_sample(items[1], 1, 2).mask.sum() == 0


@pytest.mark.parametrize("fmt", ["drive", "busi", "tiff-stack"])
def test_convert_writes_the_folder_format(tmp_path, fmt):
    make = {"drive": fixtures.make_drive, "busi": fixtures.make_busi, "tiff-stack": fixtures.make_tiff_stack}[fmt]
    source = make(tmp_path / "src")
    count = convert(source, fmt, tmp_path / "out")
    converted = load_items(tmp_path / "out", "folder")
    assert len(converted) == count
    by_id = {item.id: item for item in converted}
    for original in load_items(source, fmt):
        copy = by_id[original.id]
        a, b = load_sample(original, None, 2), load_sample(copy, None, 2)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.image, b.image, atol=1 / 255)


def test_check_dataset_report(tmp_path):
    report = check_dataset(fixtures.make_folder(tmp_path))
    assert report.n_items == 6 and report.splits == {"test": 1, "train": 5}
    assert report.sizes == {"24x20": 6} and report.mask_values == [0, 1]
    assert report.foreground_fraction == pytest.approx(80 / 480)


def test_mask_size_mismatch_and_missing_mask(tmp_path):
    root = fixtures.make_folder(tmp_path, n=2, split=False)
    fixtures._png(root / "masks" / "case1.png", np.zeros((5, 5), np.uint8))
    items = load_items(root)
    with pytest.raises(MedsegError, match="does not match image size"):
        load_sample(items[1], None, 2)
    (root / "masks" / "case1.png").unlink()
    items = load_items(root)  # an image without a mask is listed as unlabelled, in no split
    assert [item.labelled for item in items] == [True, False]
    assert split_items(items, val_fraction=0).train == items[:1]


def test_empty_folder_and_unknown_layout(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(MedsegError, match="no images found"):
        load_items(tmp_path)
    with pytest.raises(MedsegError, match="unrecognised dataset layout"):
        load_items(tmp_path / "images")


def test_split_csv_errors(tmp_path):
    root = fixtures.make_folder(tmp_path, n=3, split=False)
    (root / "split.csv").write_text("id,split\ncase0,train\ncase1,val\n")
    with pytest.raises(MedsegError, match="no split for: case2"):
        load_items(root)
    (root / "split.csv").write_text("id,split\ncase0,train\ncase1,val\ncase2,train\ncase9,test\n")
    with pytest.raises(MedsegError, match="ids with no image: case9"):
        load_items(root)
    (root / "split.csv").write_text("id,split\ncase0,train\ncase0,val\ncase1,val\ncase2,train\n")
    with pytest.raises(MedsegError, match="listed twice"):
        load_items(root)


def test_seeded_split_is_disjoint_and_reproducible(tmp_path):
    items = load_items(fixtures.make_folder(tmp_path, n=20, split=False))
    a = split_items(items, val_fraction=0.2, test_fraction=0.1, seed=3)
    b = split_items(items, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert a == b
    assert (len(a.train), len(a.val), len(a.test)) == (14, 4, 2)
    ids = [i.id for split in (a.train, a.val, a.test) for i in split]
    assert len(ids) == len(set(ids)) == 20


def test_source_split_kept_and_val_carved_from_train(tmp_path):
    items = load_items(fixtures.make_folder(tmp_path, n=6))
    splits = split_items(items, val_fraction=0.2)
    assert [i.id for i in splits.test] == ["case0"]
    assert len(splits.val) == 1 and len(splits.train) == 4


def test_k_fold_validation_sets_partition_the_pool(tmp_path):
    items = load_items(fixtures.make_folder(tmp_path, n=10, split=False))
    folds = [split_items(items, fold=k, folds=5, seed=1) for k in range(5)]
    val_ids = [i.id for f in folds for i in f.val]
    assert sorted(val_ids) == sorted(i.id for i in items) and len(val_ids) == len(set(val_ids))
    for f in folds:
        assert not {i.id for i in f.val} & {i.id for i in f.train}
        assert len(f.train) + len(f.val) == 10
    everything = split_items(items, fold="all", folds=5, seed=1)
    assert everything.val == [] and len(everything.train) == 10


def test_convert_keeps_16_bit_images_lossless(tmp_path):
    from PIL import Image

    root = fixtures.make_folder(tmp_path / "src", n=2, split=False)
    deep = np.tile(np.array([0, 1, 40000, 65535], np.uint16), (20, 6))  # 20 x 24, like the fixture masks
    Image.fromarray(deep).save(root / "images" / "case1.png")
    convert(root, "folder", tmp_path / "out")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "images" / "case1.png")), deep)
    assert np.asarray(Image.open(tmp_path / "out" / "images" / "case0.png")).dtype == np.uint8


def test_split_csv_as_excel_saves_it(tmp_path):
    """Bug: a split.csv with a UTF-8 byte-order mark and CRLF line ends was refused."""
    root = fixtures.make_folder(tmp_path, n=3, split=False)
    (root / "split.csv").write_bytes("id,split\r\ncase0,train\r\ncase1,val\r\ncase2,test\r\n".encode("utf-8-sig"))
    assert [item.split for item in load_items(root)] == ["train", "val", "test"]


@pytest.mark.parametrize("suffix", ["_mask", "_segmentation", "_label"])
def test_masks_named_by_common_conventions(tmp_path, suffix):
    """Bug: masks named <id>_mask.png (BUSI, Kaggle), <id>_segmentation.png (ISIC), <id>_label.png were not found."""
    root = fixtures.make_folder(tmp_path, n=2, split=False)
    for mask in (root / "masks").iterdir():
        mask.rename(mask.with_name(f"{mask.stem}{suffix}.png"))
    items = load_items(root)
    assert [item.masks[0].name for item in items] == [f"case0{suffix}.png", f"case1{suffix}.png"]
    (root / "masks" / f"case1{suffix}.png").rename(root / "masks" / "other.png")
    with pytest.raises(MedsegError, match=r"no mask found for id 'case1' .*\(tried case1.<ext>, case1_mask.<ext>"):
        load_items(root)


def test_mask_errors_say_what_the_values_suggest(tmp_path):
    """Bug: multi-class and lossy masks got a bare 'unexpected mask values' (with 256 values for a JPEG)."""
    from PIL import Image

    from medseg.data.readers import read_mask

    three = tmp_path / "three.png"
    Image.fromarray(np.array([[0, 1, 2]], np.uint8)).save(three)
    with pytest.raises(MedsegError, match=r"if these are 3 classes, use --set data.n_classes=3"):
        read_mask(three)
    lossy = tmp_path / "lossy.jpg"
    ys, xs = np.mgrid[:64, :64]
    disc = np.where((ys - 30) ** 2 + (xs - 33) ** 2 < 15**2, 255, 0).astype(np.uint8)
    Image.fromarray(disc).save(lossy, quality=50)
    with pytest.raises(MedsegError, match=r"lossy JPEG file .* saved losslessly \(PNG or TIFF\)") as info:
        read_mask(lossy)
    assert "[" not in str(info.value)  # no list of 256 values


def test_reslicing_listed_items_gives_what_listing_along_that_axis_gives(tmp_path):
    root = fixtures.make_folder(tmp_path / "mixed", n=2, split=False)  # 2D images stay as they are
    image, labels = fixtures.blob_volume(0)
    fixtures.write_nifti(root / "images" / "volume.nii.gz", image)
    fixtures.write_nifti(root / "masks" / "volume.nii.gz", labels)
    listed = load_items(root)
    for axis in (0, 1, 2):
        assert reslice(listed, axis) == load_items(root, axis=axis)


def test_a_dataset_without_any_mask_is_refused(tmp_path):
    from medseg.config import Config
    from medseg.data.datasets import dataset_items

    root = fixtures.make_folder(tmp_path, n=2, split=False)
    for path in (root / "masks").iterdir():
        path.unlink()
    config = Config()
    config.data.root = str(root)
    with pytest.raises(MedsegError, match="no image has a mask"):
        dataset_items(config)

"""Volumes: NIfTI in and out, the MSD and nnU-Net NIfTI layouts, classes, slicing, resampling and bad input."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medseg.data.datasets import (Sample, check_dataset, detect_format, find_classes, load_items, load_sample,
                                  split_items)
from medseg.data.readers import Reader
from medseg.data.transforms import resample_sample
from medseg.data.volumes import read_nifti, write_nifti_labels
from medseg.errors import MedsegError
from tests.data import fixtures


def test_nifti_read_keeps_values_spacing_and_affine(tmp_path):
    image, _ = fixtures.blob_volume(0)
    path = fixtures.write_nifti(tmp_path / "a.nii.gz", image)
    volume = read_nifti(path)  # the file is LAS: its first axis runs to the left, so it is reversed
    assert volume.data.shape == (20, 24, 6, 1) and np.array_equal(volume.data[..., 0], image[::-1])
    assert np.array_equal(volume.to_file(volume.data)[..., 0], image)
    canonical = fixtures.AFFINE.copy()
    canonical[0] = [0.9, 0, 0, 10.0 - 0.9 * 19]
    assert volume.spacing == pytest.approx((0.9, 0.9, 2.0)) and np.allclose(volume.affine, canonical)
    assert volume.info.slice_axis() == 2 and volume.info.in_plane_spacing(2) == pytest.approx((0.9, 0.9))



def test_a_pixdim_that_disagrees_with_the_affine_is_a_warning_and_the_affine_wins(tmp_path, medseg_log):
    image, _ = fixtures.blob_volume(0)
    nifti = nib.Nifti1Image(image, fixtures.AFFINE)
    nifti.header.set_qform(None, code=0)  # only the sform: pixdim is free to disagree, as some writers leave it
    nifti.header["pixdim"][1:4] = [1.0, 1.0, 1.0]
    path = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(image, None, header=nifti.header), str(path))
    assert nib.load(str(path)).header.get_zooms()[:3] == (1.0, 1.0, 1.0)

    volume = read_nifti(path)
    read_nifti(path)  # warned once per file

    assert volume.spacing == pytest.approx((0.9, 0.9, 2.0))
    assert medseg_log == [f"WARNING {path}: the affine's voxel sizes (0.9 x 0.9 x 2 mm) differ from pixdim "
                          "(1 x 1 x 1); using the affine's"]

def test_written_labels_load_with_the_image_shape_and_affine(tmp_path):
    image_path = fixtures.write_nifti(tmp_path / "a.nii.gz", fixtures.blob_volume(0)[0])
    labels = fixtures.blob_volume(0)[1]
    write_nifti_labels(tmp_path / "out" / "a.nii.gz", labels[::-1], read_nifti(image_path))  # canonical, as the image
    written = nib.load(str(tmp_path / "out" / "a.nii.gz"))
    assert written.shape == labels.shape and np.allclose(written.affine, fixtures.AFFINE)
    assert np.array_equal(np.asarray(written.dataobj), labels) and written.get_data_dtype() == np.uint8


@pytest.mark.parametrize("suffix, fmt, nnunet_labels", [("", "msd", False), ("_0000", "nnunet", True)])
def test_decathlon_layouts_are_detected_and_listed_as_slices(tmp_path, suffix, fmt, nnunet_labels):
    root = fixtures.make_msd(tmp_path, n=4, suffix=suffix, nnunet_labels=nnunet_labels)
    assert detect_format(root) == fmt
    items = load_items(root)
    assert len(items) == 4 * 6 and {item.case for item in items} == {f"case_{i:03d}" for i in range(4)}
    assert items[0].id == "case_000_000" and items[0].slice.axis == 2  # the coarsest spacing (2 mm)
    assert find_classes(root, items).names == ("background", "anterior", "posterior")
    sample = load_sample(items[3], None, 3)
    assert sample.image.shape == (20, 24, 1) and set(np.unique(sample.mask)) == {0, 1, 2}
    assert sample.spacing == pytest.approx((0.9, 0.9)) and sample.statistics[0].shape == (1, 1, 1)


def test_splits_keep_a_volume_s_slices_together(tmp_path):
    items = load_items(fixtures.make_msd(tmp_path, n=6))
    splits = split_items(items, val_fraction=0.34, test_fraction=0.2, seed=3)
    cases = [{item.case for item in part} for part in (splits.train, splits.val, splits.test)]
    assert all(cases) and not (cases[0] & cases[1] or cases[0] & cases[2] or cases[1] & cases[2])
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(items)


def test_data_check_names_the_classes(tmp_path):
    report = check_dataset(fixtures.make_msd(tmp_path, n=2))
    assert report.classes.names == ("background", "anterior", "posterior") and report.classes.source == "dataset.json"
    assert report.n_cases == 2 and report.mask_values == [0, 1, 2]


def test_masks_holding_0_to_k_minus_1_are_k_classes_and_0_255_stays_binary(tmp_path):
    root = fixtures.make_three_class_folder(tmp_path / "three", n=3)
    assert find_classes(root, load_items(root)).count == 3
    binary = fixtures.make_folder(tmp_path / "binary", n=3, split=False)
    assert find_classes(binary, load_items(binary)).names == ("background", "foreground")


def test_slices_are_resampled_to_the_target_spacing():
    image = np.arange(20 * 30, dtype=np.float32).reshape(20, 30, 1)
    mask = np.zeros((20, 30), np.int64)
    mask[5:15, 10:20] = 2
    sample = Sample("a", image, mask, spacing=(1.0, 0.5))
    resampled = resample_sample(sample, (1.0, 1.0))
    assert resampled.image.shape == (20, 15, 1) and resampled.mask.shape == (20, 15)
    assert set(np.unique(resampled.mask)) == {0, 2} and resampled.spacing == (1.0, 1.0)
    assert resample_sample(sample, (1.0, 0.5)) is sample


def _one_line_error(call) -> str:
    with pytest.raises(MedsegError) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


def _item(tmp_path, label: np.ndarray, affine=fixtures.AFFINE, n_classes: int = 3):
    root = fixtures.make_msd(tmp_path, n=1)
    fixtures.write_nifti(root / "labelsTr" / "case_000.nii.gz", label, affine)
    return lambda: [load_sample(item, None, n_classes, Reader()) for item in load_items(root)]


def test_label_with_another_shape_is_named(tmp_path):
    message = _one_line_error(_item(tmp_path, np.zeros((20, 24, 5), np.uint8)))
    assert "labelsTr/case_000.nii.gz" in message and "label shape (20, 24, 5) differs" in message


def test_label_with_another_affine_is_named(tmp_path):
    shifted = fixtures.AFFINE.copy()
    shifted[0, 3] += 5
    message = _one_line_error(_item(tmp_path, fixtures.blob_volume(0)[1], shifted))
    assert "labelsTr/case_000.nii.gz" in message and "affine differs" in message


def test_4d_label_is_named(tmp_path):
    message = _one_line_error(_item(tmp_path, np.zeros((20, 24, 6, 2), np.uint8)))
    assert "labelsTr/case_000.nii.gz" in message and "must be 3D" in message


def test_non_integer_labels_are_named(tmp_path):
    labels = fixtures.blob_volume(0)[1].astype(np.float32)
    labels[3, 3, 3] = 0.5
    message = _one_line_error(_item(tmp_path, labels))
    assert "labelsTr/case_000.nii.gz" in message and "non-integer" in message


def test_label_value_missing_from_dataset_json_is_named(tmp_path):
    labels = fixtures.blob_volume(0)[1]
    labels[0, 0, 0] = 3
    message = _one_line_error(_item(tmp_path, labels))
    assert "labelsTr/case_000.nii.gz" in message and "dataset.json" in message


def test_dataset_json_with_gaps_in_its_label_ids_is_named(tmp_path):
    root = fixtures.make_msd(tmp_path, n=1)
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "2": "posterior"}}))
    message = _one_line_error(lambda: find_classes(root, load_items(root)))
    assert "dataset.json" in message and "0..K-1" in message


def test_single_slices_and_2d_nifti_are_2d_images(tmp_path):
    """A 2D NIfTI, (W, H) or (W, H, 1) as nnU-Net writes them, and a single thin CT slice (0.7 mm pixels, 0.625 mm
    thick) are one 2D image each, in their files' own rows and columns; the slice is never cut into strips."""
    import pydicom
    from pydicom.data import get_testdata_file

    image, labels = fixtures.blob_volume(0, shape=(20, 24, 1))
    fixtures.write_nifti(tmp_path / "images" / "flat.nii.gz", image[..., 0])
    fixtures.write_nifti(tmp_path / "masks" / "flat.nii.gz", labels[..., 0])
    fixtures.write_nifti(tmp_path / "images" / "one.nii.gz", image)
    fixtures.write_nifti(tmp_path / "masks" / "one.nii.gz", labels)
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ct.PixelSpacing, ct.SliceThickness = [0.7, 0.7], 0.625
    ct.save_as(tmp_path / "images" / "thin.dcm")
    fixtures._png(tmp_path / "masks" / "thin.png", (ct.pixel_array > 1100).astype(np.uint8) * 255)
    items = {item.id: item for item in load_items(tmp_path)}
    assert set(items) == {"flat", "one", "thin"} and all(item.case is None for item in items.values())
    for name in ("flat", "one"):
        sample = load_sample(items[name], None, 3)
        assert sample.image.shape == (20, 24, 1) and np.array_equal(sample.image[..., 0], image[..., 0])
        assert np.array_equal(sample.mask, labels[..., 0])
    thin = load_sample(items["thin"], None, 2)
    assert thin.image.shape == (128, 128, 1) and thin.spacing == pytest.approx((0.7, 0.7))
    assert np.array_equal(thin.mask, ct.pixel_array > 1100)  # the PNG mask lies on the slice as stored


def test_nnunet_raw_with_a_file_per_channel_is_read_as_channels(tmp_path):
    """Bug: several channel files per case (BraTS, prostate T2 + ADC) were refused, or, once a _0001 file was
    there, detected as the MSD with a misleading error."""
    root = fixtures.make_msd(tmp_path / "task", n=3, suffix="_0000")
    for case in range(3):
        image, _ = fixtures.blob_volume(case)
        for channel in (1, 2):
            fixtures.write_nifti(root / "imagesTr" / f"case_{case:03d}_{channel:04d}.nii.gz", image * channel + 7)
    meta = json.loads((root / "dataset.json").read_text())
    meta.pop("modality")
    meta["channel_names"] = {"0": "T2", "1": "ADC", "2": "DWI"}
    (root / "dataset.json").write_text(json.dumps(meta))
    (root / "imagesTs" / "case_100_0000.nii.gz").unlink()
    assert detect_format(root) == "nnunet"
    items = load_items(root)
    sample = load_sample(items[0], None, 3)
    image = fixtures.blob_volume(0)[0][::-1]  # LAS files: the canonical first axis is reversed
    assert sample.image.shape == (20, 24, 3)
    assert np.allclose(sample.image[..., 2], image[:, :, 0] * 2 + 7) and sample.statistics[0].shape == (1, 1, 3)
    (root / "imagesTr" / "case_001_0002.nii.gz").unlink()
    with pytest.raises(MedsegError, match=r"case_001_0000.nii.gz: no channel file case_001_0002.<ext> \(dataset.json"):
        load_items(root)

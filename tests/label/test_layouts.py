"""The labelling workspace on nnU-Net raw and the MSD layout: masks written where and as the layout keeps them
(``labelsTr/<case><file_ending>``, class ids), a partial label in nnU-Net v2's convention (the ``ignore`` label,
declared in ``dataset.json`` at the first partial save), and training reading them back."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medseg.data.datasets import dataset_json_labels, load_items, load_sample
from medseg.data.readers import UNLABELLED
from medseg.errors import MedsegError
from medseg.label.workspace import NONE, WIRE_UNLABELLED, Workspace
from tests.data import fixtures


def nnunet_2d(root):
    """nnU-Net raw, 2D PNG: 3 labelled cases and 2 without a label."""
    fixtures.make_nnunet(root)
    for i in (3, 4):
        fixtures._png(root / "imagesTr" / f"case_{i:03d}_0000.png", fixtures.image_and_mask(i)[0])
    return root


def test_an_nnunet_case_without_a_label_is_unlabelled_and_a_misnamed_label_is_named(tmp_path):
    root = nnunet_2d(tmp_path / "raw")
    items = {item.id: item for item in load_items(root)}
    assert not items["case_003"].labelled and items["case_000"].labelled

    (root / "labelsTr" / "case_000.png").rename(root / "labelsTr" / "case-000.png")
    with pytest.raises(MedsegError, match=r"case_000_0000.png: no label case_000.<ext> in .*labelsTr, and "
                                          r"case-000.png belongs to no case"):
        load_items(root)


def test_nnunet_saves_are_class_ids_and_a_scribble_declares_ignore(tmp_path):
    root = nnunet_2d(tmp_path / "raw")
    workspace = Workspace(root)
    assert set(workspace.entries) >= {"case_000", "case_003"} and workspace.status("case_003") == "unlabelled"
    height, width = workspace.sample("case_003").image.shape[:2]
    dense = np.zeros((height, width), np.uint8)
    dense[2:8, 3:9] = 1

    workspace.save("case_003", 0, dense, NONE, dense=True)

    written = np.asarray(Image.open(root / "labelsTr" / "case_003.png"))
    assert np.array_equal(written, dense)  # class ids, as nnU-Net reads them (not the folder format's 0/255)
    assert dataset_json_labels(root) == (("background", "x"), None)  # a dense save declares nothing

    scribble = np.full((height, width), WIRE_UNLABELLED, np.uint8)
    scribble[0, :5], scribble[5, 5] = 0, 1
    workspace.save("case_004", 0, scribble, NONE, dense=False)

    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "x": 1, "ignore": 2} and meta["file_ending"] == ".png"
    written = np.asarray(Image.open(root / "labelsTr" / "case_004.png"))
    assert (written == 2).sum() == height * width - 6 and written[5, 5] == 1
    assert workspace.status("case_004") == "partial"
    item = next(item for item in load_items(root) if item.id == "case_004")  # training reads it as partial
    sample = load_sample(item, 1, 2)
    assert sample.labelled.sum() == 6 and sample.mask[5, 5] == 1
    assert Workspace(root).labels("case_004")[0][0, 7] == WIRE_UNLABELLED  # a restarted server reads it back


def test_a_slice_of_an_unlabelled_msd_volume_leaves_the_others_unlabelled(tmp_path):
    root = fixtures.make_msd(tmp_path / "task", n=3)
    (root / "labelsTr" / "case_002.nii.gz").unlink()
    workspace = Workspace(root)
    entry = workspace.entries["case_002"]
    assert entry.volume and workspace.status("case_002") == "unlabelled"
    height, width = workspace.sample("case_002", 2).image.shape[:2]
    labels = np.zeros((height, width), np.uint8)
    labels[4:9, 4:9] = 2

    workspace.save("case_002", 2, labels, NONE, dense=True)

    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"]["3"] == "ignore"  # the MSD's {"id": "name"} form, the highest id
    stored = workspace._reader.volume(root / "labelsTr" / "case_002.nii.gz", label=True)
    image = workspace._reader.volume(entry.image)
    assert stored.data.shape == image.data.shape[:3]
    assert np.allclose(nib.load(str(root / "labelsTr" / "case_002.nii.gz")).affine,
                       nib.load(str(entry.image)).affine)  # in the image's own voxel order and affine
    axis = entry.items[0].slice.axis
    np.testing.assert_array_equal(np.take(stored.data, 2, axis=axis), labels)
    others = np.delete(stored.data, 2, axis=axis)
    assert (others == 3).all()  # every other slice still unlabelled
    assert workspace.status("case_002") == "partial"
    assert [load_sample(item, 1, 3).labelled is None for item in workspace.entries["case_002"].items][:3] == [
        False, False, True]
    assert (load_sample(workspace.entries["case_002"].items[0], 1, 3).mask == 0).all()
    assert UNLABELLED not in load_sample(workspace.entries["case_002"].items[2], 1, 3).mask


def test_a_layout_it_cannot_label_is_one_line(tmp_path):
    fixtures.make_tiff_stack(tmp_path / "stack")
    with pytest.raises(MedsegError, match=r"works on the folder format .* not this one \(tiff-stack\)"):
        Workspace(tmp_path / "stack")


def test_a_slice_of_a_dicom_series_is_saved_as_a_nifti_mask_on_its_grid(tmp_path):
    from tests.data.test_dicom import ct_series

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    ct_series(root / "images" / "ct", count=3)  # a series folder: one volume, files without position order
    (root / "images" / "ct" / "README").unlink()
    workspace = Workspace(root)
    entry = workspace.entries["ct"]
    assert entry.volume and entry.slices == 3 and entry.mask == root / "masks" / "ct.nii.gz"
    labels = np.zeros(workspace.sample("ct", 1).image.shape[:2], np.uint8)
    labels[10:40, 20:50] = 1

    workspace.save("ct", 1, labels, NONE, dense=True)

    items = [item for item in load_items(root) if item.group == "ct"]  # training reads it, aligned with the series
    samples = [load_sample(item, 1, 2) for item in sorted(items, key=lambda item: item.slice_index)]
    np.testing.assert_array_equal(samples[1].mask, labels)
    assert samples[1].labelled is None and samples[0].labelled is not None and not samples[0].labelled.any()


def test_a_single_slice_nifti_is_saved_as_a_nifti_mask_and_read_back(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    pixels = np.random.default_rng(0).normal(size=(40, 32, 1)).astype(np.float32)
    nib.save(nib.Nifti1Image(pixels, np.diag([0.7, 0.7, 0.625, 1.0])), str(root / "images" / "ct.nii.gz"))
    workspace = Workspace(root)
    entry = workspace.entries["ct"]
    assert entry.volume and entry.slices == 1 and entry.mask == root / "masks" / "ct.nii.gz"
    labels = np.full((40, 32), WIRE_UNLABELLED, np.uint8)
    labels[5:15, 5:15] = 1

    workspace.save("ct", 0, labels, NONE, dense=False)

    assert nib.load(str(entry.mask)).shape == (40, 32, 1)
    sample = load_sample(load_items(root)[0], 1, 2)
    assert (sample.mask[5:15, 5:15] == 1).all() and sample.labelled.sum() == 100

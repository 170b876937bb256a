"""Volumes and multi-class tasks end to end: train with no class flag, score per case in 3D, predict NIfTI and
DICOM outputs aligned with their sources."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medseg.run.folder import run_contract
from medseg.inference.evaluate import evaluate
from medseg.inference.predictor import Predictor
from medseg.inference.predict import predict_paths
from medseg.workflow import train
from tests.conftest import shared_dataset
from tests.data import fixtures
from tests.helpers import tiny_config


def test_msd_task_trains_with_classes_from_dataset_json_and_is_scored_per_case(tmp_path):
    root = fixtures.make_msd(tmp_path / "task", n=6)
    config = tiny_config(root, epochs=1, steps=2)
    config.data.test_fraction = 0.34
    train(config, tmp_path / "run")
    contract = run_contract(tmp_path / "run")
    assert contract.inference.class_names == ("background", "anterior", "posterior")
    assert contract.model.out_channels == 3
    summary = evaluate(tmp_path / "run", root, tmp_path / "eval")
    test_cases = {i.rsplit("_", 1)[0] for i in contract.data.splits.test}
    assert summary.n_images == len(test_cases) == 2  # one row per case, not per slice
    with open(tmp_path / "eval" / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["id"] for row in rows} == test_cases and {"dice_c1", "dice_c2", "hd95_c1"} <= set(rows[0])
    assert "dice_c2" in summary.metrics and "posterior" in summary.per_class()


def test_prediction_of_a_nifti_volume_is_a_nifti_aligned_with_it(tmp_path):
    root = fixtures.make_msd(tmp_path / "task", n=4)
    train(tiny_config(root, epochs=1, steps=1), tmp_path / "run")
    written = predict_paths(Predictor.from_run(tmp_path / "run"), [root / "imagesTs"], tmp_path / "out",
                            save_uncertainty=True)
    assert [path.name for path in written] == ["case_100.nii.gz"]
    mask, image = nib.load(str(written[0])), nib.load(str(root / "imagesTs" / "case_100.nii.gz"))
    assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
    unsure = nib.load(str(tmp_path / "out" / "case_100_uncertainty.nii.gz"))  # the volume's map, aligned with it
    assert unsure.shape == image.shape and np.allclose(unsure.affine, image.affine)
    values = np.asarray(unsure.dataobj)
    assert values.dtype == np.float32 and 0 <= values.min() and values.max() <= 1


def test_three_class_png_masks_train_with_no_flag(tmp_path):
    root = fixtures.make_three_class_folder(tmp_path / "three")
    train(tiny_config(root, epochs=1, steps=1), tmp_path / "run")
    contract = run_contract(tmp_path / "run")
    assert contract.inference.n_classes == 3 and contract.model.out_channels == 3


def _dicom_folder(root):
    """A folder-format set of 2D DICOM images (CT slices, modality LUT applied) with PNG masks."""
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    for i in range(6):
        ds = source.copy()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PixelData = np.roll(source.pixel_array, 7 * i, axis=1).astype(source.pixel_array.dtype).tobytes()
        (root / "images").mkdir(parents=True, exist_ok=True)
        ds.save_as(root / "images" / f"scan{i}.dcm")
        mask = (np.roll(source.pixel_array, 7 * i, axis=1) > 1100).astype(np.uint8) * 255
        fixtures._png(root / "masks" / f"scan{i}.png", mask)
    return root


def test_dicom_folder_trains_and_predicts_a_png_and_a_dicom_seg(tmp_path):
    root = _dicom_folder(tmp_path / "dicom")
    train(tiny_config(root, epochs=1, steps=1), tmp_path / "run")
    written = predict_paths(Predictor.from_run(tmp_path / "run"), [root / "images" / "scan0.dcm"], tmp_path / "out")
    assert [path.name for path in written] == ["scan0.png"]
    seg = pydicom.dcmread(tmp_path / "out" / "scan0_seg.dcm")
    source = pydicom.dcmread(root / "images" / "scan0.dcm")
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert seg.Modality == "SEG" and referenced == source.SOPInstanceUID


@pytest.mark.slow
def test_msd_hippocampus_trains_end_to_end_in_a_minute(tmp_path):
    """`medseg train --data ../shared/data/msd_hippocampus --budget 1m` with nothing else."""
    from medseg.cli import main

    data = shared_dataset("msd_hippocampus", marker="dataset.json")
    assert main(["train", "--data", str(data), "--budget", "1m", "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "eval" / "summary.json").read_text())
    assert summary["class_names"] == ["background", "Anterior", "Posterior"]
    assert summary["n_images"] == 52  # 20% of the 260 labelled cases, held out and scored in 3D
    # Measured: mean foreground Dice 0.38 after 250 steps (classes 0.15 and 0.62); a broken pipeline scores ~0.
    assert summary["metrics"]["dice"]["mean"] > 0.25


def test_cross_validation_scores_each_held_out_volume_once_in_3d(tmp_path):
    from medseg.workflow import train_folds

    root = fixtures.make_msd(tmp_path / "task", n=4)
    config = tiny_config(root, epochs=1, steps=1)
    config.data.folds = 2
    summary = train_folds(config, tmp_path / "cv")
    with open(tmp_path / "cv" / "cv_per_image.csv", newline="") as handle:
        ids = [row["id"] for row in csv.DictReader(handle)]
    assert sorted(ids) == [f"case_{i:03d}" for i in range(4)] and summary.n_images == 4


def _channel_files(root, cases, channels=3):
    for case in cases:
        image, _ = fixtures.blob_volume(int(case.split("_")[1]))
        for channel in range(channels):
            folder = "imagesTs" if case == "case_100" else "imagesTr"
            fixtures.write_nifti(root / folder / f"{case}_{channel:04d}.nii.gz", image * (channel + 1) - 20 * channel)


def test_nnunet_raw_with_three_channel_files_trains_and_predicts(tmp_path):
    from medseg.errors import MedsegError

    root = fixtures.make_msd(tmp_path / "task", n=4, suffix="_0000")
    _channel_files(root, [f"case_{i:03d}" for i in range(4)] + ["case_100"])
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T2", "1": "ADC", "2": "DWI"}
    (root / "dataset.json").write_text(json.dumps(meta))
    train(tiny_config(root, epochs=1, steps=1), tmp_path / "run")
    assert run_contract(tmp_path / "run").inference.channels == 3
    predictor = Predictor.from_run(tmp_path / "run")
    written = predict_paths(predictor, [root / "imagesTs"], tmp_path / "out")
    assert [path.name for path in written] == ["case_100.nii.gz"]  # one mask for the case's three files
    mask, image = nib.load(str(written[0])), nib.load(str(root / "imagesTs" / "case_100_0000.nii.gz"))
    assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
    (root / "imagesTs" / "case_100_0002.nii.gz").unlink()
    with pytest.raises(MedsegError, match=r"case_100_0000.nii.gz: no channel file case_100_0002.* takes 3 channels"):
        predict_paths(predictor, [root / "imagesTs"], tmp_path / "out2")
    other = fixtures.write_nifti(tmp_path / "other" / "scan.nii.gz", fixtures.blob_volume(7)[0])
    with pytest.raises(MedsegError, match=r"scan.nii.gz: has 1 channel\(s\), the run takes 3"):
        predict_paths(predictor, [other], tmp_path / "out3")

"""One orientation whatever the file's: a labelled MSD hippocampus case written six ways -- NIfTI as given, NIfTI
reoriented to LPS, NIfTI with two axes transposed, a DICOM series of suffix-less files written in shuffled order,
one multi-frame DICOM, and a series with two echoes -- gets the same mask from one run (Dice >= 0.99 once mapped
back), each written in its input's own orientation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from medseg.cli import main
from medseg.inference.predict import predict_paths
from medseg.inference.predictor import Predictor
from medseg.metrics import confusion_counts, scores_from_counts
from tests.conftest import shared_dataset

pytestmark = pytest.mark.slow
TINY = ["--set", "model.widths=[8,16,32]", "--patch-size", "48", "--batch-size", "8", "--iterations", "150",
        "--set", "train.tensorboard=false", "--no-plan", "--set", "data.val_fraction=0.2"]


@pytest.fixture(scope="module")
def run_and_case(tmp_path_factory):
    """A short run on 16 hippocampus cases, and a 17th case's image and labels."""
    source = shared_dataset("msd_hippocampus", "labelsTr")
    root = tmp_path_factory.mktemp("hippocampus") / "task"
    cases = sorted(p.name for p in (source / "labelsTr").glob("hippocampus_*.nii.gz"))[:17]
    for kind in ("imagesTr", "labelsTr"):
        (root / kind).mkdir(parents=True)
        for name in cases[:16]:
            shutil.copy(source / kind / name, root / kind / name)
    meta = json.loads((source / "dataset.json").read_text())
    meta.update(training=[], test=[], numTraining=16)
    (root / "dataset.json").write_text(json.dumps(meta))
    run = root.parent / "run"
    assert main(["train", "--data", str(root), "--out", str(run), *TINY]) == 0
    return run, source / "imagesTr" / cases[16]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(scores_from_counts(confusion_counts(a, b, 3)[1:])["dice"]))


def dicom_slices(image: nib.Nifti1Image, folder: Path, echo: int | None = None, series: str | None = None) -> None:
    """The volume as single-frame MR files, one per axial slice (NIfTI axis 2), named by UID without a suffix and
    written in shuffled order: pixel (row r, column c) of slice k is voxel (c, r, k)."""
    data = np.asarray(image.dataobj)
    affine = np.diag([-1.0, -1.0, 1, 1]) @ image.affine  # to LPS
    along_row, down_column = affine[:3, 0], affine[:3, 1]
    series = series or generate_uid()
    for k in np.random.default_rng(0).permutation(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.3", series, "1.2.3.4"
        ds.Modality, ds.PatientID, ds.PatientName, ds.InstanceNumber = "MR", "x", "x", int(k) + 1
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "", "", "20260101", "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName, ds.SeriesNumber = "1", "", "", 1
        ds.ImageOrientationPatient = [*(along_row / np.linalg.norm(along_row)),
                                      *(down_column / np.linalg.norm(down_column))]
        ds.ImagePositionPatient = [float(v) for v in (affine @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [float(np.linalg.norm(down_column)), float(np.linalg.norm(along_row))]
        ds.SliceThickness = float(np.linalg.norm(affine[:3, 2]))
        if echo is not None:
            ds.EchoNumbers = echo
        pixels = np.ascontiguousarray(data[:, :, k].T).astype(np.uint16)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.tobytes()
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / str(generate_uid()), enforce_file_format=True)


def test_the_same_case_gets_the_same_mask_however_it_is_stored(run_and_case, tmp_path):
    import highdicom as hd

    run, case = run_and_case
    image = nib.load(str(case))
    data, affine = np.asarray(image.dataobj), image.affine
    flip = np.diag([-1.0, -1.0, 1, 1])
    flip[:3, 3] = [data.shape[0] - 1, data.shape[1] - 1, 0]
    swap = np.eye(4)[:, [1, 0, 2, 3]]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(data, affine), str(inputs / "given.nii.gz"))
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data[::-1, ::-1]), affine @ flip), str(inputs / "lps.nii.gz"))
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose(1, 0, 2)), affine @ swap),
             str(inputs / "transposed.nii.gz"))
    assert nib.aff2axcodes(affine @ flip) == ("L", "P", "S")
    dicom_slices(image, inputs / "series")
    series = generate_uid()
    for echo in (1, 2):
        dicom_slices(image, inputs / "echoes", echo, series)
    frames = [pydicom.dcmread(p) for p in np.random.default_rng(1).permutation(sorted((inputs / "series").iterdir()))]
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(frames, series_instance_uid=generate_uid(), series_number=2,
                                                        sop_instance_uid=generate_uid(), instance_number=1)
    enhanced.save_as(inputs / "multiframe.dcm", enforce_file_format=True)

    out = tmp_path / "out"
    predict_paths(Predictor.from_run(run), sorted(inputs.iterdir()), out)
    reference = np.asarray(nib.load(str(out / "given.nii.gz")).dataobj)
    assert {1, 2} <= set(np.unique(reference))  # the run segments something: agreement is not of empty masks
    lps = nib.load(str(out / "lps.nii.gz"))
    transposed = nib.load(str(out / "transposed.nii.gz"))
    assert np.allclose(lps.affine, affine @ flip) and np.allclose(transposed.affine, affine @ swap)  # as given
    as_dicom = {name: tifffile.imread(out / f"{name}.tif").transpose(2, 1, 0) for name in  # slices x rows x cols
                ("series", "multiframe", "echoes_EchoNumbers1", "echoes_EchoNumbers2")}
    mapped = {"lps": np.asarray(lps.dataobj)[::-1, ::-1], "transposed": np.asarray(transposed.dataobj).transpose(1, 0, 2),
              **{name: labels for name, labels in as_dicom.items()}}
    for name, labels in mapped.items():
        assert labels.shape == reference.shape, name
        assert dice(labels, reference) >= 0.99, name
    assert (out / "series_seg.dcm").is_file() and (out / "echoes_EchoNumbers2_seg.dcm").is_file()

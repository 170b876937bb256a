"""DICOM decoding (pydicom's own test files and files written here) and DICOM Segmentation writing. Volumes are read
into the canonical orientation; ``file_order`` turns them back, to compare with what pydicom decodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from medseg.data.dicom import dicom_info, read_dicom, read_dicom_bytes, read_dicom_parts, write_dicom_seg
from medseg.errors import MedsegError


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)  # never download: these ship with pydicom
    assert path is not None, name
    return Path(path)


def file_order(volume) -> np.ndarray:
    """A volume's voxels in its file's order (``rows x cols x slices x C``), and its file-order affine in LPS."""
    return volume.to_file(volume.data)


def lps_affine(volume) -> np.ndarray:
    """The file-order voxel-to-LPS affine of a volume read from DICOM."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.orientation.affine


def expected(path: Path) -> np.ndarray:
    """pydicom's pixels after the modality LUT, as ``rows x cols x frames x C``."""
    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames") or 1)
    pixels = apply_modality_lut(ds.pixel_array, ds).reshape(frames, ds.Rows, ds.Columns, -1)
    return np.moveaxis(pixels, 0, 2).astype(np.float32)


def assert_one_line_error(exc_info, where: Path | str, *parts: str) -> None:
    message = str(exc_info.value)
    assert "\n" not in message and message.startswith(f"{where}: ")
    for part in parts:
        assert part in message
    error = exc_info.value  # raised ``from None``: no chained pydicom traceback
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def ct_series(folder: Path, count: int = 3, step: float = 2.5) -> list[pydicom.Dataset]:
    """``count`` single-slice CT files at z = k * step, written in an order that is neither their position nor
    their name order nor their InstanceNumber order; returns them sorted by position."""
    folder.mkdir()
    series = generate_uid()
    datasets = []
    for k in range(count):
        ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [-158.1, -179.0, k * step]
        ds.InstanceNumber = count - k
        ds.PixelData = (ds.pixel_array + 100 * k).astype(ds.pixel_array.dtype).tobytes()
        datasets.append(ds)
    names = ["b.dcm", "IM0003", "a.dcm", "c.DICOM", "d.dcm"]  # by position
    for k in [count - 1, *range(count - 1)]:
        datasets[k].save_as(folder / names[k])
    (folder / "README").write_text("not a DICOM file")
    return datasets


def test_ct_modality_lut_spacing_and_affine(tmp_path):
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
    path = tmp_path / "ct.dcm"
    ds.save_as(path)

    volume = read_dicom(path)

    assert volume.data.dtype == np.float32 and volume.data.shape == (128, 128, 1, 1)
    np.testing.assert_array_equal(file_order(volume)[:, :, 0, 0], apply_modality_lut(ds.pixel_array, ds))
    assert volume.data.min() < -500  # HU, not stored values
    assert dicom_info(path) == volume.info
    assert volume.spacing == pytest.approx((0.661468, 0.661468, 5.0))
    position = np.array([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(lps_affine(volume) @ [3, 7, 0, 1], [*(position + [7 * 0.661468, 3 * 0.661468, 0]), 1])
    marker = np.zeros((128, 128, 1))
    marker[3, 7, 0] = 1  # the same voxel in canonical axes lies at the same point of the patient
    canonical = np.argwhere(volume.orientation.to_canonical(marker))[0]
    np.testing.assert_allclose(volume.affine @ [*canonical, 1], volume.orientation.affine @ [3, 7, 0, 1])
    in_memory = read_dicom_bytes(path.read_bytes(), "upload.dcm")
    np.testing.assert_array_equal(in_memory.data, volume.data)
    np.testing.assert_array_equal(in_memory.affine, volume.affine)


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "mono1.dcm"
    ds.save_as(path)

    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    np.testing.assert_array_equal(file_order(read_dicom(path))[:, :, 0, 0], values.max() + values.min() - values)


@pytest.mark.parametrize("name, shape", [
    ("MR_small.dcm", (64, 64, 1, 1)),
    ("SC_rgb_rle_2frame.dcm", (100, 100, 2, 3)),  # multi-frame RGB, RLE
    ("SC_rgb_jpeg_dcmtk.dcm", (100, 100, 1, 3)),  # JPEG baseline, YBR_FULL
    ("SC_rgb_jpeg_gdcm.dcm", (100, 100, 1, 3)),  # JPEG lossless
    ("MR_small_jp2klossless.dcm", (64, 64, 1, 1)),
    ("MR_small_RLE.dcm", (64, 64, 1, 1)),
    ("MR_small_jpeg_ls_lossless.dcm", (64, 64, 1, 1)),
])
def test_decodes_like_pydicom(name, shape):
    path = pydicom_file(name)
    volume = read_dicom(path)

    assert file_order(volume).shape == shape
    np.testing.assert_array_equal(file_order(volume), expected(path))
    assert dicom_info(path) == volume.info


def test_ybr_is_converted_to_rgb():
    red = file_order(read_dicom(pydicom_file("SC_rgb_jpeg_dcmtk.dcm")))[0, 0, 0]  # the first rows are pure red
    np.testing.assert_allclose(red, [255, 0, 0], atol=2)


def test_series_folder_is_sorted_by_position(tmp_path):
    datasets = ct_series(tmp_path / "series")

    volume = read_dicom(tmp_path / "series")

    assert volume.data.shape == (128, 128, 3, 1)
    for k, ds in enumerate(datasets):
        np.testing.assert_array_equal(file_order(volume)[:, :, k, 0], apply_modality_lut(ds.pixel_array, ds))
    assert volume.spacing == pytest.approx((0.661468, 0.661468, 2.5))
    np.testing.assert_allclose(lps_affine(volume)[:3, 2], [0, 0, 2.5])
    np.testing.assert_allclose(lps_affine(volume)[:3, 3], [-158.1, -179.0, 0.0])
    assert dicom_info(tmp_path / "series") == volume.info


def test_enhanced_multi_frame_keeps_frame_order_and_reads_functional_groups(tmp_path):
    import highdicom as hd

    datasets = ct_series(tmp_path / "series")
    for ds in datasets:
        ds.RescaleSlope = 2
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(  # frames from the highest z down; rescale in the groups
        datasets[::-1], series_instance_uid=generate_uid(), series_number=2, sop_instance_uid=generate_uid(),
        instance_number=1)
    assert "RescaleSlope" not in enhanced and "ImagePositionPatient" not in enhanced
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path, enforce_file_format=True)

    volume = read_dicom(path)

    for k, ds in enumerate(datasets):  # the frames sorted by their own positions, not as stored
        np.testing.assert_array_equal(file_order(volume)[:, :, k, 0], apply_modality_lut(ds.pixel_array, ds))
    assert volume.spacing == pytest.approx((0.661468, 0.661468, 2.5))
    np.testing.assert_allclose(lps_affine(volume)[:3, 2:], [[0, -158.1], [0, -179.0], [2.5, 0.0]])
    assert dicom_info(path) == volume.info

    labels = np.zeros((128, 128, 3), np.uint8)
    labels[5:9, 5:9, 0] = 1  # on the lowest slice, which the file stores last
    write_dicom_seg(tmp_path / "seg.dcm", labels, path, ["background", "spot"])
    back = hd.seg.segread(tmp_path / "seg.dcm")
    frames = back.get_pixels_by_source_frame(enhanced.SOPInstanceUID, [1, 2, 3], combine_segments=True)
    np.testing.assert_array_equal(np.moveaxis(frames, 0, 2), labels[..., ::-1])


def test_a_folder_of_two_series_is_two_parts_and_refused_for_training(tmp_path):
    ct_series(tmp_path / "mixed", count=2)
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.save_as(tmp_path / "mixed" / "other.dcm")

    with pytest.raises(MedsegError) as exc_info:
        dicom_info(tmp_path / "mixed")
    assert_one_line_error(exc_info, tmp_path / "mixed", "holds 2 volumes (series 1, series 2)")
    assert [(name, volume.data.shape[:3]) for name, volume in read_dicom_parts(tmp_path / "mixed")] == [
        ("series 1", (128, 128, 2)), ("series 2", (128, 128, 1))]


def test_slices_of_different_sizes_are_an_error(tmp_path):
    ct_series(tmp_path / "series", count=2)
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    small = pydicom.dcmread(tmp_path / "series" / "b.dcm")
    small.Rows = small.Columns = 64
    small.PixelData = ds.pixel_array[:64, :64].copy().tobytes()
    small.save_as(tmp_path / "series" / "b.dcm")

    with pytest.raises(MedsegError) as exc_info:
        read_dicom(tmp_path / "series")
    assert_one_line_error(exc_info, tmp_path / "series", "slices of different sizes", "64x64x1", "128x128x1")


def test_no_pixel_data_and_not_dicom_are_one_line_errors(tmp_path):
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    del ds.PixelData
    path = tmp_path / "header.dcm"
    ds.save_as(path)
    with pytest.raises(MedsegError) as exc_info:
        read_dicom(path)
    assert_one_line_error(exc_info, path, "has no pixel data (PixelData)")

    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x89PNG not a dicom file at all")
    with pytest.raises(MedsegError) as exc_info:
        dicom_info(junk)
    assert_one_line_error(exc_info, junk, "not a DICOM file")
    with pytest.raises(MedsegError) as exc_info:
        read_dicom_bytes(b"nope", "upload.dcm")
    assert_one_line_error(exc_info, "upload.dcm", "not a DICOM file")


def test_missing_decoder_names_syntax_and_package(monkeypatch):
    monkeypatch.setattr(get_decoder(JPEGBaseline8Bit), "_available", {})  # as if no JPEG plugin were installed
    path = pydicom_file("SC_rgb_jpeg_dcmtk.dcm")

    with pytest.raises(MedsegError) as exc_info:
        read_dicom(path)
    assert_one_line_error(exc_info, path, "JPEG Baseline (Process 1)", JPEGBaseline8Bit, "pylibjpeg-libjpeg",
                          "no decoder")


def test_failing_decoder_names_syntax_and_package(monkeypatch):
    def broken(src, runner):
        raise RuntimeError("corrupt JPEG stream")

    monkeypatch.setattr(get_decoder(JPEGBaseline8Bit), "_available", {"broken": broken})
    path = pydicom_file("SC_rgb_jpeg_dcmtk.dcm")

    with pytest.raises(MedsegError) as exc_info:
        read_dicom_bytes(path.read_bytes(), "upload.dcm")
    assert_one_line_error(exc_info, "upload.dcm", "JPEG Baseline (Process 1)", JPEGBaseline8Bit,
                          "pylibjpeg-libjpeg", "cannot decode")


def read_seg(path: Path, sources: list[pydicom.Dataset]) -> np.ndarray:
    """The SEG's labels per source image (``rows x cols x slices``), checking what it references."""
    import highdicom as hd

    seg = pydicom.dcmread(path)
    assert seg.Modality == "SEG"
    referenced = [item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert sorted(referenced) == sorted(ds.SOPInstanceUID for ds in sources)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    back = hd.seg.segread(path)
    uids = [ds.SOPInstanceUID for ds in sources]
    return np.moveaxis(back.get_pixels_by_source_instance(uids, combine_segments=True), 0, 2)


@pytest.mark.parametrize("empty", [False, True])
def test_seg_two_classes_on_one_file(tmp_path, empty):
    source = pydicom_file("CT_small.dcm")
    labels = np.zeros((128, 128, 1), np.uint8)
    if not empty:
        labels[30:60, 40:90] = 1
    write_dicom_seg(tmp_path / "seg.dcm", labels, source, ["background", "lesion"])

    np.testing.assert_array_equal(read_seg(tmp_path / "seg.dcm", [pydicom.dcmread(source)]), labels)
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["background", "lesion"]  # kept even when absent
    assert seg.SegmentSequence[1].SegmentAlgorithmType == "AUTOMATIC"
    assert seg.SegmentSequence[1].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "medseg"


def test_seg_three_classes_on_a_series(tmp_path):
    datasets = ct_series(tmp_path / "series")
    labels = np.zeros((128, 128, 3), np.uint8)
    labels[10:50, 10:50, 0] = 1
    labels[60:100, 20:40, 1:] = 2
    labels[70:80, 70:80, 2] = 1

    write_dicom_seg(tmp_path / "out" / "seg.dcm", labels, tmp_path / "series", ["background", "liver", "tumour"])

    np.testing.assert_array_equal(read_seg(tmp_path / "out" / "seg.dcm", datasets), labels)
    seg = pydicom.dcmread(tmp_path / "out" / "seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["background", "liver", "tumour"]
    assert not list((tmp_path / "out").glob(".*"))  # no temp file left behind


def test_seg_on_a_secondary_capture_reads_back(tmp_path):
    source = pydicom_file("SC_rgb_jpeg_dcmtk.dcm")  # no frame of reference, no slice thickness
    labels = np.zeros((100, 100, 1), np.uint8)
    labels[:20, :30] = 1
    write_dicom_seg(tmp_path / "seg.dcm", labels, source, ["background", "object"])

    np.testing.assert_array_equal(read_seg(tmp_path / "seg.dcm", [pydicom.dcmread(source)]), labels)


@pytest.mark.filterwarnings("ignore:The string \"PLA\":UserWarning")  # the cine file's patient name
def test_seg_errors_name_the_file(tmp_path):
    cine = pydicom_file("examples_ybr_color.dcm")  # multi-frame ultrasound without a frame of reference
    with pytest.raises(MedsegError) as exc_info:
        write_dicom_seg(tmp_path / "seg.dcm", np.zeros((240, 320, 30), np.uint8), cine, ["background", "x"])
    assert_one_line_error(exc_info, cine, "highdicom cannot make a DICOM Segmentation")

    source = pydicom_file("CT_small.dcm")
    with pytest.raises(MedsegError) as exc_info:
        write_dicom_seg(tmp_path / "seg.dcm", np.zeros((128, 128, 2), np.uint8), source, ["background", "x"])
    assert_one_line_error(exc_info, tmp_path / "seg.dcm", "shape (128, 128, 2)")
    with pytest.raises(MedsegError) as exc_info:
        write_dicom_seg(tmp_path / "seg.dcm", np.full((128, 128, 1), 2, np.uint8), source, ["background", "x"])
    assert_one_line_error(exc_info, tmp_path / "seg.dcm", "class ids 0..1")
    assert not (tmp_path / "seg.dcm").exists()


def rewrite(path: Path, **tags) -> None:
    """Set DICOM ``tags`` on the file at ``path``."""
    ds = pydicom.dcmread(path)
    for tag, value in tags.items():
        setattr(ds, tag, value)
    ds.save_as(path)


def test_an_uneven_gap_is_refused_as_a_missing_slice(tmp_path):
    ct_series(tmp_path / "series", count=5)
    (tmp_path / "series" / "a.dcm").unlink()  # the slice at z = 5 of 0, 2.5, 5, 7.5, 10

    with pytest.raises(MedsegError) as exc_info:
        read_dicom(tmp_path / "series")
    assert_one_line_error(exc_info, tmp_path / "series", "uneven gaps", "2.5 mm apart, but 5 mm", "missing slice")


def test_mixed_orientations_are_refused(tmp_path):
    ct_series(tmp_path / "series")
    rewrite(tmp_path / "series" / "b.dcm", ImageOrientationPatient=[1, 0, 0, 0, 0, -1])  # a coronal slice

    with pytest.raises(MedsegError) as exc_info:
        read_dicom(tmp_path / "series")
    assert_one_line_error(exc_info, tmp_path / "series", "different orientations", "ImageOrientationPatient")


def test_gantry_tilt_is_refused_with_its_angle(tmp_path):
    ct_series(tmp_path / "series")
    for k, name in enumerate(("b.dcm", "IM0003", "a.dcm")):  # 2.5 mm along y per 2.5 mm in z: 45 degrees
        rewrite(tmp_path / "series" / name, ImagePositionPatient=[-158.1, -179.0 + 2.5 * k, 2.5 * k])

    with pytest.raises(MedsegError) as exc_info:
        read_dicom(tmp_path / "series")
    assert_one_line_error(exc_info, tmp_path / "series", "tilted 45.0 degrees", "gantry tilt")


def test_two_echoes_at_the_same_positions_are_two_parts(tmp_path):
    ct_series(tmp_path / "echoes", count=2)
    for name in ("b.dcm", "IM0003"):
        rewrite(tmp_path / "echoes" / name, EchoNumbers=1)
    for name in ("b.dcm", "IM0003"):  # the second echo: the same series, positions and sizes
        ds = pydicom.dcmread(tmp_path / "echoes" / name)
        ds.EchoNumbers = 2
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(tmp_path / "echoes" / f"echo2-{name}")

    parts = read_dicom_parts(tmp_path / "echoes")

    assert [(name, volume.data.shape[:3]) for name, volume in parts] == [
        ("EchoNumbers 1", (128, 128, 2)), ("EchoNumbers 2", (128, 128, 2))]
    with pytest.raises(MedsegError) as exc_info:
        dicom_info(tmp_path / "echoes")
    assert_one_line_error(exc_info, tmp_path / "echoes", "holds 2 volumes (EchoNumbers 1, EchoNumbers 2)")


def test_images_sharing_a_position_without_a_separating_tag_are_refused(tmp_path):
    ct_series(tmp_path / "series", count=2)
    ds = pydicom.dcmread(tmp_path / "series" / "b.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "series" / "copy.dcm")

    with pytest.raises(MedsegError) as exc_info:
        read_dicom_parts(tmp_path / "series")
    assert_one_line_error(exc_info, tmp_path / "series", "2 images share one position", "no tag tells them apart")


def test_every_part_is_checked_as_one_volume(tmp_path):
    """`medseg predict` reads each part; a part whose slices differ in size is one line, not a traceback."""
    ct_series(tmp_path / "series", count=2)
    ds = pydicom.dcmread(tmp_path / "series" / "b.dcm")
    ds.PixelData = ds.pixel_array[:64].tobytes()
    ds.Rows = 64
    ds.save_as(tmp_path / "series" / "b.dcm")

    with pytest.raises(MedsegError) as exc_info:
        read_dicom_parts(tmp_path / "series")
    assert_one_line_error(exc_info, tmp_path / "series", "slices of different sizes in one series")

"""DICOM decoding and DICOM Segmentation writing, through pydicom and highdicom.

A DICOM volume is one file (single or multi-frame, frames in stored order) or a folder holding one series (its
files sorted along the slice normal, else by InstanceNumber). Voxel axes are ``rows, columns, slices``; the affine
maps them to DICOM patient coordinates (LPS). Grey images get the modality LUT (CT in HU) and MONOCHROME1 is
inverted so that higher is brighter; YBR is converted to RGB (by pydicom) and PALETTE COLOR expanded to RGB.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.misc import is_dicom as has_dicom_preamble
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder

from medseg.data.volumes import DICOM_SUFFIXES, Volume, VolumeInfo
from medseg.errors import MedsegError
from medseg.files import atomic_write_bytes

DECODERS = {  # compressed transfer syntax -> the package that decodes it
    **dict.fromkeys([uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1],
                    "pylibjpeg-libjpeg"),
    **dict.fromkeys([uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K],
                    "pylibjpeg-openjpeg"),
    uid.RLELossless: "pylibjpeg-rle",
    **dict.fromkeys([uid.JPEGLSLossless, uid.JPEGLSNearLossless], "pyjpegls"),
}
FRAME_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "ImagerPixelSpacing",
              "SliceThickness", "SpacingBetweenSlices", "RescaleSlope", "RescaleIntercept")
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def dicom_info(path: Path) -> VolumeInfo:
    """Shape, spacing and channels of a DICOM file or one-series folder, from the headers alone."""
    return _info(_datasets(Path(path), headers_only=True))


def read_dicom(path: Path) -> Volume:
    """A DICOM file or one-series folder as a :class:`Volume` (float32 ``rows x cols x slices x C``)."""
    return _volume(_datasets(Path(path), headers_only=False), path)


def read_dicom_bytes(data: bytes, where: str) -> Volume:
    """One DICOM file's bytes (an upload) as a :class:`Volume`, decoded in memory; errors name ``where``."""
    dataset = _read(io.BytesIO(data), where, headers_only=False)
    _check_image(dataset, where)
    return _volume([dataset], where)


def write_dicom_seg(path: Path, labels: np.ndarray, source: Path, class_names: Sequence[str]) -> None:
    """Class ids (``rows x cols x slices``, shaped like ``source``) as a DICOM Segmentation referencing the
    source file or series, atomically.

    A LABELMAP segmentation (Label Map Segmentation Storage, pixel value = class id): one segment per class,
    labelled with its name; highdicom makes segment 0 the background (DCM Background codes), the others have
    generic property codes (SCT Tissue) and algorithm AUTOMATIC "medseg". Classes absent from ``labels`` keep their
    segment, and every slice is stored, empty or not, so each source image is referenced.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medseg import __version__

    source = Path(source)
    datasets = _datasets(source, headers_only=True)
    info = _info(datasets)
    labels = np.asarray(labels)
    if labels.shape != info.shape:
        raise MedsegError(path, f"labels have shape {labels.shape}, the source {source} has {info.shape}")
    low, high = int(labels.min(initial=0)), int(labels.max(initial=0))
    if not np.issubdtype(labels.dtype, np.integer) or low < 0 or high >= len(class_names) or len(class_names) < 2:
        raise MedsegError(path, f"labels must be class ids 0..{len(class_names) - 1} for the class names "
                                f"{list(class_names)} (background first, at least two), got {labels.dtype} values "
                                f"{low}..{high}")
    algorithm = hd.AlgorithmIdentificationSequence("medseg", codes.DCM.ArtificialIntelligence, __version__)
    segments = [hd.seg.SegmentDescription(number, str(name), codes.SCT.Tissue, codes.SCT.Tissue, "AUTOMATIC",
                                          algorithm) for number, name in enumerate(class_names[1:], start=1)]
    first, measures = datasets[0], None
    if "FrameOfReferenceUID" not in first and "PixelSpacing" in first and not _number(first.get("SliceThickness")):
        # highdicom writes no slice thickness for such a source (secondary capture), then cannot read it back
        measures = hd.PixelMeasuresSequence(pixel_spacing=first.PixelSpacing, slice_thickness=info.spacing[2])
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=np.moveaxis(labels.astype(np.uint8), 2, 0),
            segmentation_type=hd.seg.SegmentationTypeValues.LABELMAP, segment_descriptions=segments,
            series_instance_uid=hd.UID(), series_number=int(first.get("SeriesNumber") or 0) + 1000,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medseg", manufacturer_model_name="medseg",
            software_versions=__version__, device_serial_number="0", omit_empty_frames=False, pixel_measures=measures)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom's refusals of a source
        raise MedsegError(source, f"highdicom cannot make a DICOM Segmentation of this {first.get('Modality', '')} "
                                  f"image ({type(exc).__name__}: {exc})") from None
    seg.SegmentSequence[0].SegmentLabel = str(class_names[0])
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, seg, enforce_file_format=True)
    atomic_write_bytes(Path(path), buffer.getvalue())


def _read(source, where: str | Path, headers_only: bool) -> Dataset:
    try:
        return pydicom.dcmread(source, stop_before_pixels=headers_only)
    except InvalidDicomError:
        raise MedsegError(where, "not a DICOM file (no 'DICM' marker after the 128-byte preamble)") from None
    except Exception as exc:  # pydicom raises many types for corrupt files
        raise MedsegError(where, f"cannot read DICOM ({type(exc).__name__}: {exc})") from None


def _datasets(path: Path, headers_only: bool) -> list[Dataset]:
    """The datasets of a file, or of a one-series folder sorted along the slice normal (else by InstanceNumber)."""
    if path.is_file():
        dataset = _read(path, path, headers_only)
        _check_image(dataset, path, headers_only)
        return [dataset]
    if not path.is_dir():
        raise MedsegError(path, "file not found")
    files = [child for child in sorted(path.iterdir()) if child.is_file() and not child.name.startswith(".")
             and (child.suffix.lower() in DICOM_SUFFIXES or (not child.suffix and has_dicom_preamble(child)))]
    datasets = [ds for ds in (_read(f, f, headers_only) for f in files) if "DirectoryRecordSequence" not in ds]
    if not datasets:
        raise MedsegError(path, "holds no DICOM files (.dcm, .dicom, or DICOM files without a suffix)")
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if len(series) > 1:
        raise MedsegError(path, f"holds {len(series)} series ({', '.join(series[:3])}{', ...' * (len(series) > 3)}); "
                                f"put each series in its own folder")
    for dataset in datasets:
        _check_image(dataset, dataset.filename, headers_only)
        if len(datasets) > 1 and _frame_count(dataset) > 1:
            raise MedsegError(dataset.filename, "is a multi-frame file in a series folder; read the file alone")
        if _size(dataset) != _size(datasets[0]):
            raise MedsegError(path, f"slices of different sizes in one series (rows x columns x samples): "
                                    f"{Path(datasets[0].filename).name} is {_size(datasets[0])}, "
                                    f"{Path(dataset.filename).name} is {_size(dataset)}")
    return _sorted(datasets)


def _check_image(dataset: Dataset, where: str | Path, headers_only: bool = False) -> None:
    if "Rows" not in dataset or not (headers_only or any(tag in dataset for tag in PIXEL_TAGS)):
        raise MedsegError(where, "has no pixel data (PixelData)")


def _size(dataset: Dataset) -> str:
    return f"{dataset.Rows}x{dataset.Columns}x{dataset.get('SamplesPerPixel', 1)}"


def _sorted(datasets: list[Dataset]) -> list[Dataset]:
    """Along the first file's slice normal when every file has a position and orientation, then by
    InstanceNumber, then by file name."""
    axes = _axes(datasets[0])
    by_position = axes is not None and all(_position(ds) is not None for ds in datasets)
    return sorted(datasets, key=lambda ds: (float(axes[2] @ _position(ds)) if by_position else 0.0,
                                            int(ds.get("InstanceNumber") or 0)))


def _frame_count(dataset: Dataset) -> int:
    return int(dataset.get("NumberOfFrames") or 1)


def _frames(dataset: Dataset) -> list[Dataset]:
    """Each frame's geometry and rescale tags: the file's own, overridden by an enhanced multi-frame file's
    shared, then per-frame, functional groups."""
    shared = dataset.get("SharedFunctionalGroupsSequence") or []
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    frames = [Dataset() for _ in range(_frame_count(dataset))]
    for index, frame in enumerate(frames):
        groups = [*shared[:1], *per_frame[index:index + 1]]
        for item in [dataset, *(e.value[0] for group in groups for e in group if e.VR == "SQ" and e.value)]:
            for keyword in (k for k in FRAME_TAGS if k in item):
                setattr(frame, keyword, item[keyword].value)
    return frames


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _position(frame: Dataset) -> np.ndarray | None:
    value = frame.get("ImagePositionPatient")
    return np.array([float(v) for v in value]) if value is not None and len(value) == 3 else None


def _axes(frame: Dataset) -> np.ndarray | None:
    """Unit vectors (as rows) of the row, column and slice axes: down a column, along a row, and their normal."""
    value = frame.get("ImageOrientationPatient")
    if value is None or len(value) != 6:
        return None
    along_row, down_column = np.array(value, float).reshape(2, 3)
    return np.stack([down_column, along_row, np.cross(along_row, down_column)])


def _pixel_spacing(frame: Dataset) -> tuple[float, float]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = frame.get(keyword)
        if value is not None and len(value) == 2 and _number(value[0]) and _number(value[1]):
            return float(value[0]), float(value[1])
    return 1.0, 1.0


def _geometry(frames: list[Dataset]) -> tuple[tuple[float, float, float], np.ndarray]:
    """Spacing (row, column, slice) and the voxel-to-LPS affine of a stack of frames (identity axes, scaled by
    the spacing, when the orientation is missing)."""
    first = frames[0]
    axes = _axes(first)
    positions = [_position(frame) for frame in frames]
    step, direction = None, 1.0
    if len(frames) > 1 and all(p is not None for p in positions):
        along = np.array([(axes[2] if axes is not None else np.array([0.0, 0.0, 1.0])) @ p for p in positions])
        step = _number(np.median(np.abs(np.diff(along))))
        direction = -1.0 if along[-1] < along[0] else 1.0
    spacing = (*_pixel_spacing(first),
               step or _number(first.get("SpacingBetweenSlices")) or _number(first.get("SliceThickness")) or 1.0)
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if axes is None else axes.T) * np.array(spacing) * [1.0, 1.0, direction]
    if positions[0] is not None:
        affine[:3, 3] = positions[0]
    return spacing, affine


def _info(datasets: list[Dataset]) -> VolumeInfo:
    frames = [frame for dataset in datasets for frame in _frames(dataset)]
    first = datasets[0]
    channels = 3 if first.get("PhotometricInterpretation") == "PALETTE COLOR" else int(first.get("SamplesPerPixel", 1))
    return VolumeInfo((int(first.Rows), int(first.Columns), len(frames)), _geometry(frames)[0], channels)


def _volume(datasets: list[Dataset], where: str | Path) -> Volume:
    """Decoded frames (modality LUT, MONOCHROME1 inverted, colour as RGB) stacked as ``rows x cols x slices x C``."""
    planes, frames = [], []
    for dataset in datasets:
        pixels = _decode(dataset, getattr(dataset, "filename", None) or where)
        for index, frame in enumerate(_frames(dataset)):
            plane = pixels[index]
            if dataset.get("PhotometricInterpretation") == "PALETTE COLOR":
                plane = apply_color_lut(plane[..., 0], dataset)
            elif plane.shape[-1] == 1:
                lut = frame if "RescaleSlope" in frame and "RescaleIntercept" in frame else dataset
                plane = apply_modality_lut(plane[..., 0], lut)[..., None]
            planes.append(np.asarray(plane, np.float32))
            frames.append(frame)
    data = np.stack(planes, axis=2)
    if datasets[0].get("PhotometricInterpretation") == "MONOCHROME1":
        data = data.max() + data.min() - data
    if not np.isfinite(data).all():
        raise MedsegError(where, "image contains NaN or infinite values")
    spacing, affine = _geometry(frames)
    return Volume(data, spacing, affine)


def _decode(dataset: Dataset, where: str | Path) -> np.ndarray:
    """Stored pixels as ``frames x rows x cols x samples`` (pydicom converts YBR to RGB, nothing else applied)."""
    try:
        pixels = dataset.pixel_array
    except Exception as exc:  # pydicom raises many types for missing decoders and corrupt data
        raise MedsegError(where, _decode_failure(dataset, exc)) from None
    return pixels.reshape(_frame_count(dataset), int(dataset.Rows), int(dataset.Columns), -1)


def _decode_failure(dataset: Dataset, exc: Exception) -> str:
    syntax = uid.UID(str(getattr(dataset, "file_meta", Dataset()).get("TransferSyntaxUID", "")))
    package = DECODERS.get(syntax)
    if package is None:
        return f"cannot decode the pixel data ({type(exc).__name__}: {exc})"
    install = f"pip install pylibjpeg {package}" if package.startswith("pylibjpeg-") else f"pip install {package}"
    if not get_decoder(syntax).is_available:
        return f"pixel data is compressed as {syntax.name} ({syntax}) and no decoder for it is installed ({install})"
    return (f"cannot decode the {syntax.name} ({syntax}) pixel data ({type(exc).__name__}: {exc}); it is decoded "
            f"by {package} ({install})")

"""DICOM decoding and DICOM Segmentation writing, through pydicom and highdicom.

A DICOM volume is one file (single or multi-frame) or a folder holding a series; files are found by their content
(``DICM`` after the preamble), so exports named by UID, without a suffix, are read. A folder's files are split by
``SeriesInstanceUID``, and images at the same position by the tag that separates them (:data:`SEPARATING_TAGS`:
echoes, temporal positions, acquisitions, b-values, trigger times) into *parts*; `medseg predict` segments each
part, training refuses a folder of several in one line naming them. Frames (files, or a multi-frame file's
frames) are sorted along the slice normal by their own positions; mixed orientations, gantry tilt and uneven gaps
between slices are refused in one line each, since one affine cannot describe them.

A volume's file order is ``rows, columns, slices`` in DICOM patient coordinates (LPS); it is read into medseg's
canonical orientation (:mod:`medseg.data.volumes`), and turned back for writing. Grey images get the modality LUT
(CT in HU) and MONOCHROME1 is inverted so that higher is brighter; YBR is converted to RGB (by pydicom) and PALETTE
COLOR expanded to RGB.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.misc import is_dicom as has_dicom_preamble
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder

from medseg.data.volumes import DICOM_SUFFIXES, LPS_TO_RAS, Orientation, Volume, VolumeInfo
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
SEPARATING_TAGS = ("EchoNumbers", "TemporalPositionIdentifier", "AcquisitionNumber", "DiffusionBValue",
                   "TriggerTime")  # what tells apart images at one position of one series, in this order
ORIENTATION_TOLERANCE = 1e-3  # direction cosines of one volume's frames differ by at most this
TILT_DEGREES = 0.5  # the slices' positions may leave their normal by at most this angle
GAP_TOLERANCE = 0.05  # a gap between slices may differ from the median one by this share (and 0.01 mm)


@dataclass(frozen=True)
class Part:
    """The images of a folder that make one volume: a series, or one echo (...) of it; ``name`` is empty for a
    folder holding one volume, else says what sets the part apart (``EchoNumbers 2``)."""

    name: str
    datasets: tuple[Dataset, ...]


def dicom_info(path: Path) -> VolumeInfo:
    """Shape, spacing and channels of a DICOM volume (file or folder of one part), in canonical axes, from the
    headers alone."""
    return _info(_one(Path(path), headers_only=True), path)


def dicom_modality(path: Path) -> str:
    """The ``Modality`` of a DICOM file or folder (its first part's first file), from the header."""
    return str(dicom_parts(Path(path), headers_only=True)[0].datasets[0].get("Modality", ""))


def read_dicom(path: Path) -> Volume:
    """A DICOM file or a folder of one part as a canonical :class:`Volume` (float32 ``X x Y x Z x C``)."""
    return _volume(_one(Path(path), headers_only=False), path)


def read_dicom_parts(path: Path) -> list[tuple[str, Volume]]:
    """Every part of a DICOM file or folder, named, as canonical volumes (`medseg predict` segments each)."""
    return [(part.name, _volume(_checked(list(part.datasets), Path(path)), path))
            for part in dicom_parts(Path(path), headers_only=False)]


def read_dicom_bytes(data: bytes, where: str) -> Volume:
    """One DICOM file's bytes (an upload) as a canonical :class:`Volume`, decoded in memory; errors name
    ``where``."""
    dataset = _read(io.BytesIO(data), where, headers_only=False)
    _check_image(dataset, where)
    return _volume([dataset], where)


def write_dicom_seg(path: Path, labels: np.ndarray, source: Path, class_names: Sequence[str],
                    part: str = "") -> None:
    """Class ids (``rows x cols x slices`` in the file order of ``source``'s ``part``) as a DICOM Segmentation
    referencing the source file or series, atomically.

    A LABELMAP segmentation (Label Map Segmentation Storage, pixel value = class id): one segment per class,
    labelled with its name; highdicom makes segment 0 the background (DCM Background codes), the others have
    generic property codes (SCT Tissue) and algorithm AUTOMATIC "medseg". Classes absent from ``labels`` keep their
    segment, and every slice is stored, empty or not, so each source image is referenced.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medseg import __version__

    source = Path(source)
    datasets = _sorted(list(next(p for p in dicom_parts(source, headers_only=True) if p.name == part).datasets))
    shape = (int(datasets[0].Rows), int(datasets[0].Columns), sum(_frame_count(ds) for ds in datasets))
    labels = np.asarray(labels)
    if labels.shape != shape:
        raise MedsegError(path, f"labels have shape {labels.shape}, the source {source} has {shape}")
    if len(datasets) == 1 and shape[2] > 1:  # a multi-frame source: its frames as stored, not in slice order
        stored = np.empty_like(labels)
        stored[..., _frame_order(_frames(datasets[0]))] = labels
        labels = stored
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
        slice_spacing = _geometry([f for ds in datasets for f in _frames(ds)], source)[0][2]
        measures = hd.PixelMeasuresSequence(pixel_spacing=first.PixelSpacing, slice_thickness=slice_spacing)
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


def _files(path: Path) -> list[Path]:
    """A folder's DICOM files, found by their content (a DICOMDIR aside)."""
    return [child for child in sorted(path.iterdir()) if child.is_file() and not child.name.startswith(".")
            and (child.suffix.lower() in DICOM_SUFFIXES or has_dicom_preamble(child))]


def dicom_parts(path: Path, headers_only: bool) -> list[Part]:
    """The volumes of a DICOM file (one) or folder: its files split by series, and images at one position split
    by the tag that separates them."""
    if path.is_file():
        dataset = _read(path, path, headers_only)
        _check_image(dataset, path, headers_only)
        return [Part("", (dataset,))]
    if not path.is_dir():
        raise MedsegError(path, "file not found")
    datasets = [ds for ds in (_read(f, f, headers_only) for f in _files(path)) if "DirectoryRecordSequence" not in ds]
    if not datasets:
        raise MedsegError(path, "holds no DICOM files (none with the DICM marker)")
    series: dict[str, list[Dataset]] = {}
    for dataset in datasets:
        _check_image(dataset, dataset.filename, headers_only)
        series.setdefault(str(dataset.get("SeriesInstanceUID", "")), []).append(dataset)
    parts = []
    for number, members in enumerate(series.values(), start=1):
        named = f"series {number}" if len(series) > 1 else ""
        parts += [Part(" ".join(filter(None, (named, name))), group) for name, group in _by_position(members, path)]
    return parts


def _by_position(datasets: list[Dataset], where: Path) -> list[tuple[str, tuple[Dataset, ...]]]:
    """One series' images as one group, or, where several share a position, one group per value of the first
    :data:`SEPARATING_TAGS` tag that leaves no position shared (a one-line error when none does)."""
    if len(_positions(datasets)) == len(datasets):
        return [("", tuple(datasets))]
    for tag in SEPARATING_TAGS:
        values: dict[str, list[Dataset]] = {}
        for dataset in datasets:
            values.setdefault(str(dataset.get(tag, "")), []).append(dataset)
        if len(values) > 1 and all(len(_positions(group)) == len(group) for group in values.values()):
            return [(f"{tag} {value}", tuple(group)) for value, group in sorted(values.items(), key=_natural)]
    shared = next(group for group in _positions(datasets).values() if len(group) > 1)
    names = ", ".join(Path(ds.filename).name for ds in shared[:2])
    raise MedsegError(where, f"{len(shared)} images share one position ({names}) and no tag tells them apart "
                             f"({', '.join(SEPARATING_TAGS)}); put each volume in its own folder")


def _positions(datasets: list[Dataset]) -> dict[tuple, list[Dataset]]:
    """Datasets by position (rounded to 0.01 mm; a multi-frame file or one without a position is its own)."""
    groups: dict[tuple, list[Dataset]] = {}
    for index, dataset in enumerate(datasets):
        position = _position(dataset)
        key = tuple(np.round(position, 2)) if position is not None and _frame_count(dataset) == 1 else ("file", index)
        groups.setdefault(key, []).append(dataset)
    return groups


def _natural(item: tuple[str, list]) -> tuple:
    value = item[0]
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _one(path: Path, headers_only: bool) -> list[Dataset]:
    """The datasets of a DICOM volume that is one part, sorted along the slice normal; several parts are a
    one-line error naming them."""
    parts = dicom_parts(path, headers_only)
    if len(parts) > 1:
        names = ", ".join(part.name for part in parts[:4]) + (", ..." if len(parts) > 4 else "")
        raise MedsegError(path, f"holds {len(parts)} volumes ({names}); `medseg predict` segments each, to train "
                                "put each in its own folder")
    return _checked(list(parts[0].datasets), path)


def _checked(datasets: list[Dataset], path: Path) -> list[Dataset]:
    """One part's datasets sorted along the slice normal, once they are one volume's: a multi-frame file alone,
    slices of one size."""
    for dataset in datasets:
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


def _frame_order(frames: list[Dataset]) -> list[int]:
    """The frames' order along their slice normal (by their own positions, when every frame has one; else as
    stored)."""
    axes = _axes(frames[0])
    positions = [_position(frame) for frame in frames]
    if axes is None or any(p is None for p in positions):
        return list(range(len(frames)))
    return sorted(range(len(frames)), key=lambda index: float(axes[2] @ positions[index]))


def _geometry(frames: list[Dataset], where: str | Path) -> tuple[tuple[float, float, float], np.ndarray]:
    """Spacing (row, column, slice) and the voxel-to-LPS affine of a stack of frames in slice order (identity axes,
    scaled by the spacing, when the orientation is missing). Frames one affine cannot describe -- of other
    orientations, tilted against their normal, or unevenly spaced -- are a one-line error."""
    first = frames[0]
    axes = _axes(first)
    positions = [_position(frame) for frame in frames]
    step = None
    if len(frames) > 1 and all(p is not None for p in positions):
        _check_orientations(frames, where)
        normal = axes[2] if axes is not None else np.array([0.0, 0.0, 1.0])
        along = np.array([normal @ p for p in positions])
        _check_tilt(positions, normal, where)
        step = _check_gaps(np.diff(along), where)
    spacing = (*_pixel_spacing(first),
               step or _number(first.get("SpacingBetweenSlices")) or _number(first.get("SliceThickness")) or 1.0)
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if axes is None else axes.T) * np.array(spacing)
    if positions[0] is not None:
        affine[:3, 3] = positions[0]
    return spacing, affine


def _check_orientations(frames: list[Dataset], where: str | Path) -> None:
    cosines = [frame.get("ImageOrientationPatient") for frame in frames]
    if any(c is not None for c in cosines) and any(
            c is None or np.abs(np.array(c, float) - np.array(cosines[0], float)).max() > ORIENTATION_TOLERANCE
            for c in cosines):
        raise MedsegError(where, "its slices have different orientations (ImageOrientationPatient): one volume "
                                 "cannot hold them; put each orientation in its own folder")


def _check_tilt(positions: list[np.ndarray], normal: np.ndarray, where: str | Path) -> None:
    """Positions that leave the slice normal: a gantry tilt (or a sheared stack)."""
    travel = positions[-1] - positions[0]
    length = float(np.linalg.norm(travel))
    if length > 0:
        angle = float(np.degrees(np.arccos(min(1.0, abs(float(normal @ travel)) / length))))
        if angle > TILT_DEGREES:
            raise MedsegError(where, f"its slices are tilted {angle:.1f} degrees against their normal (gantry tilt); "
                                     "resample it to an untilted grid first (e.g. dcm2niix)")


def _check_gaps(steps: np.ndarray, where: str | Path) -> float | None:
    """The slice spacing of evenly spaced slices; an uneven gap (a missing slice) is a one-line error."""
    distances = np.abs(steps)
    median = float(np.median(distances))
    worst = int(np.argmax(np.abs(distances - median)))
    if abs(distances[worst] - median) > max(0.01, GAP_TOLERANCE * median):
        raise MedsegError(where, f"uneven gaps between its slices: {median:g} mm apart, but {distances[worst]:g} mm "
                                 f"between slices {worst + 1} and {worst + 2} (a missing slice?)")
    return _number(median)


def _info(datasets: list[Dataset], where: str | Path) -> VolumeInfo:
    frames = [frame for dataset in datasets for frame in _frames(dataset)]
    frames = [frames[index] for index in _frame_order(frames)]
    first = datasets[0]
    channels = 3 if first.get("PhotometricInterpretation") == "PALETTE COLOR" else int(first.get("SamplesPerPixel", 1))
    spacing, affine = _geometry(frames, where)
    orientation = Orientation.of(LPS_TO_RAS @ affine, (int(first.Rows), int(first.Columns), len(frames)))
    return VolumeInfo(orientation.canonical((int(first.Rows), int(first.Columns), len(frames))),
                      orientation.canonical(spacing), channels)


def _volume(datasets: list[Dataset], where: str | Path) -> Volume:
    """Decoded frames (modality LUT, MONOCHROME1 inverted, colour as RGB) in slice order, as a canonical volume."""
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
    order = _frame_order(frames)
    data = np.stack([planes[index] for index in order], axis=2)
    if datasets[0].get("PhotometricInterpretation") == "MONOCHROME1":
        data = data.max() + data.min() - data
    if not np.isfinite(data).all():
        raise MedsegError(where, "image contains NaN or infinite values")
    spacing, affine = _geometry([frames[index] for index in order], where)
    return Volume.canonical(data, spacing, LPS_TO_RAS @ affine)


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

"""Volumes (NIfTI and DICOM) as the rest of medseg sees them: a :class:`Volume` of voxels with its spacing and
affine, the header facts needed to list its slices without decoding it, and NIfTI decoding and writing.

A volume's voxel axes are the file's own: NIfTI ``i, j, k``; DICOM ``rows, columns, slices`` (a series folder's
files sorted by position, or a multi-frame file's frames), so axis 2 is the acquisition's slice axis. Image
intensities are kept as stored after the modality LUT (MRI in scanner units, CT in HU), never rescaled to [0, 1]:
a volume is normalised per case, as nnU-Net does. DICOM decoding lives in :mod:`medseg.data.dicom`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import MedsegError
from medseg.files import atomic_write_bytes

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass(frozen=True)
class VolumeInfo:
    """Header facts of a volume: voxel ``shape`` (3 axes), ``spacing`` per axis in mm, ``channels``."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    channels: int

    def slice_axis(self) -> int:
        """The axis to slice along: the coarsest spacing (nnU-Net's 2D configuration), ties to the last axis."""
        coarsest = max(self.spacing)
        return max(axis for axis in range(3) if self.spacing[axis] >= coarsest * 0.999)

    def in_plane_spacing(self, axis: int) -> tuple[float, float]:
        first, second = (a for a in range(3) if a != axis)
        return self.spacing[first], self.spacing[second]


@dataclass(frozen=True)
class Volume:
    """A decoded volume: ``data`` float32 ``X x Y x Z x C`` (images) or int64 ``X x Y x Z`` (labels), ``spacing``
    in mm per voxel axis and the ``4 x 4`` voxel-to-world ``affine``."""

    data: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray

    @property
    def info(self) -> VolumeInfo:
        shape = self.data.shape[:3]
        return VolumeInfo((shape[0], shape[1], shape[2]), self.spacing,
                          self.data.shape[3] if self.data.ndim == 4 else 1)

    def plane(self, axis: int, index: int) -> np.ndarray:
        """Slice ``index`` along ``axis``: ``H x W [x C]`` (the two remaining axes, in order)."""
        return np.take(self.data, index, axis=axis)

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std over the whole image volume (shapes ``1 x 1 x C``): its slices are
        normalised with them, so a slice is scaled as in its case."""
        channels = self.data.reshape(-1, self.data.shape[3] if self.data.ndim == 4 else 1)
        return channels.mean(axis=0).reshape(1, 1, -1), channels.std(axis=0).reshape(1, 1, -1)

    def stacked_spacing(self, axis: int) -> tuple[float, float, float]:
        """The spacing of the volume's slices along ``axis`` stacked first: ``(slice, height, width)``."""
        return (self.spacing[axis], *self.info.in_plane_spacing(axis))


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_dicom(path: Path) -> bool:
    """A DICOM file by its suffix, or a folder holding one series (any ``.dcm`` file in it)."""
    if path.is_dir():
        return any(is_dicom(child) for child in path.iterdir() if child.is_file())
    return path.suffix.lower() in DICOM_SUFFIXES


def is_volume_file(path: Path) -> bool:
    return is_nifti(path) or is_dicom(path)


def volume_stem(path: Path) -> str:
    """The id part of a volume file's name (``case.nii.gz`` -> ``case``)."""
    name = path.name
    for suffix in NIFTI_SUFFIXES + DICOM_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _nifti(path: Path):
    import nibabel as nib

    if not path.is_file():
        raise MedsegError(path, "file not found")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt headers
        raise MedsegError(path, f"cannot read NIfTI header ({type(exc).__name__}: {exc})") from None


def nifti_info(path: Path) -> VolumeInfo:
    """Shape, spacing and channels from the header alone (a 4th axis holds channels, as in the MSD)."""
    image = _nifti(path)
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] < 1):
        raise MedsegError(path, f"expected a 2D or 3D volume (with channels in a 4th axis), got shape {shape}")
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3]) + (1.0,) * max(0, 3 - len(shape[:3]))
    return VolumeInfo((shape[0], shape[1], shape[2]), (zooms[0], zooms[1], zooms[2]),
                      shape[3] if len(shape) == 4 else 1)


def read_nifti(path: Path, label: bool = False) -> Volume:
    """A NIfTI file as a :class:`Volume`: images float32 ``X x Y x Z x C``; labels (``label``) int64 ``X x Y x Z``
    with whole-number values (anything else is an error naming the file)."""
    image = _nifti(path)
    info = nifti_info(path)
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as exc:
        raise MedsegError(path, f"cannot decode NIfTI data ({type(exc).__name__}: {exc})") from None
    data = data.reshape(*info.shape, -1) if data.ndim < 4 else data
    if label:
        if data.shape[3] != 1:
            raise MedsegError(path, f"a label volume must be 3D, got shape {tuple(image.shape)} (4D)")
        return Volume(label_values(data[..., 0], path), info.spacing, np.asarray(image.affine, np.float64))
    if not np.issubdtype(data.dtype, np.number):
        raise MedsegError(path, f"unsupported voxel type {data.dtype}")
    data = data.astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        raise MedsegError(path, "image contains NaN or infinite values")
    return Volume(data, info.spacing, np.asarray(image.affine, np.float64))


def label_values(data: np.ndarray, path: Path) -> np.ndarray:
    """A label array as int64 class ids; non-integer or negative values are an error naming the file."""
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all() or not np.equal(np.mod(data, 1), 0).all():
            raise MedsegError(path, "label volume has non-integer values")
    elif not np.issubdtype(data.dtype, np.integer) and data.dtype != np.bool_:
        raise MedsegError(path, f"unsupported label type {data.dtype}")
    labels = data.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise MedsegError(path, f"label volume has negative values ({int(labels.min())})")
    return labels


def write_nifti_labels(path: Path, labels: np.ndarray, like: Path) -> None:
    """Class ids ``X x Y x Z`` as a uint8 NIfTI with the affine and header of the image ``like`` (so it overlays
    in ITK-SNAP or 3D Slicer), atomically."""
    source = _nifti(like)
    atomic_write_bytes(path, nifti_label_bytes(labels, source.affine, source.header,
                                               gz=path.name.lower().endswith(".gz")))


def nifti_label_bytes(labels: np.ndarray, affine: np.ndarray, header: Any = None, gz: bool = True) -> bytes:
    """Class ids ``X x Y x Z`` as uint8 NIfTI bytes with ``affine``, in the format of an image's ``header`` if
    given (NIfTI-1 or -2; its data type and shape set for the labels, so an MSD channel axis is dropped)."""
    return nifti_volume_bytes(labels.astype(np.uint8), affine, header, gz)


def write_nifti_map(path: Path, values: np.ndarray, like: Path) -> None:
    """A float map ``X x Y x Z`` (e.g. uncertainty) as a float32 NIfTI with the affine and header of the image
    ``like``, atomically."""
    source = _nifti(like)
    atomic_write_bytes(path, nifti_volume_bytes(values.astype(np.float32), source.affine, source.header,
                                                gz=path.name.lower().endswith(".gz")))


def nifti_volume_bytes(data: np.ndarray, affine: np.ndarray, header: Any = None, gz: bool = True) -> bytes:
    """``data`` as NIfTI bytes with ``affine``, in the format of ``header`` if given (its data type and shape set
    for ``data``)."""
    import gzip

    import nibabel as nib

    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    if header is not None:
        header = header.copy()
        header.set_data_dtype(data.dtype)
        header.set_data_shape(data.shape)
    output = image_class(data, affine, header)
    output.header.set_slope_inter(1, 0)
    raw = output.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if gz else raw

"""Volumes (NIfTI and DICOM) as the rest of medseg sees them: a :class:`Volume` of voxels with its spacing and
affine, the header facts needed to list its slices without decoding it, and NIfTI decoding and writing.

Every volume of several slices is brought to one canonical orientation when it is read, whatever its file's voxel
order (a single slice is a 2D image and keeps its file's rows and columns): voxel axis
0 runs towards the patient's right, 1 towards anterior, 2 towards superior (RAS, nibabel's closest canonical), so
axis 0 indexes sagittal slices, 1 coronal and 2 axial ones (:data:`AXIS_NAMES`), and the affine maps canonical
voxels to RAS world coordinates (a DICOM's patient LPS turned into RAS). The :class:`Orientation` each volume keeps
maps its canonical voxels back to its file's order, so a prediction is written in its input's own orientation,
affine and header. Image intensities are kept as stored after the modality LUT (MRI in scanner units, CT in HU),
never rescaled to [0, 1]. DICOM decoding lives in :mod:`medseg.data.dicom`.

A NIfTI's geometry is its affine (the sform, else the qform, as nibabel chooses); a pixdim that disagrees with the
affine's voxel sizes gets a warning naming the value used (the affine's).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medseg.errors import MedsegError
from medseg.files import atomic_write_bytes
from medseg.log import get_logger

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")  # 2D image files, never DICOM
AXIS_NAMES = ("sagittal", "coronal", "axial")  # the slices along canonical axes 0, 1, 2
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM's patient coordinates to NIfTI's world coordinates
SPACING_TOLERANCE = 1e-3  # relative: a pixdim this close to the affine's voxel size agrees with it


@dataclass(frozen=True)
class Orientation:
    """How a file's voxels map to the canonical ones: file axis ``i`` becomes canonical axis ``ornt[i, 0]``,
    reversed where ``ornt[i, 1]`` is -1 (nibabel's orientation array); ``shape`` and ``affine`` (to RAS world) are
    the file's own."""

    ornt: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray

    @classmethod
    def of(cls, affine: np.ndarray, shape: tuple[int, ...]) -> "Orientation":
        """The orientation of a file whose voxel-to-RAS ``affine`` and voxel ``shape`` (3 axes) are given. A single
        slice is a 2D image: it keeps its file's rows and columns, as its 2D mask and any viewer have them."""
        from nibabel.orientations import io_orientation

        shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        single = 1 in shape
        ornt = np.array([[0, 1], [1, 1], [2, 1]], float) if single else io_orientation(affine)
        return cls(ornt, shape, np.asarray(affine, float))

    @property
    def identity(self) -> bool:
        return bool((self.ornt[:, 0] == np.arange(3)).all() and (self.ornt[:, 1] == 1).all())

    @property
    def spacing(self) -> tuple[float, float, float]:
        """The affine's voxel sizes (mm) along the file's own axes."""
        x, y, z = (float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))
        return x, y, z

    def to_canonical(self, data: np.ndarray) -> np.ndarray:
        """File-order voxels (3 axes, any after them kept) in canonical order."""
        from nibabel.orientations import apply_orientation

        return data if self.identity else np.ascontiguousarray(apply_orientation(data, self.ornt))

    def to_file(self, data: np.ndarray) -> np.ndarray:
        """Canonical voxels back in the file's order."""
        from nibabel.orientations import apply_orientation, ornt_transform

        if self.identity:
            return data
        back = ornt_transform(np.array([[0, 1], [1, 1], [2, 1]], float), self.ornt)
        return np.ascontiguousarray(apply_orientation(data, back))

    @property
    def canonical_affine(self) -> np.ndarray:
        from nibabel.orientations import inv_ornt_aff

        return self.affine @ inv_ornt_aff(self.ornt, self.shape)

    def canonical(self, values: tuple[float, ...]) -> tuple:
        """Per-axis values of the file (a shape, a spacing) in canonical axis order."""
        ordered = [0.0] * 3
        for axis, (target, _) in enumerate(self.ornt):
            ordered[int(target)] = values[axis]
        return tuple(ordered)



@dataclass(frozen=True)
class Slice:
    """Where a 2D sample lies in a volume: slice ``index`` along canonical voxel ``axis`` (0 sagittal, 1 coronal,
    2 axial)."""

    axis: int
    index: int

@dataclass(frozen=True)
class VolumeInfo:
    """Header facts of a volume, in canonical axes: voxel ``shape`` (3 axes), ``spacing`` per axis in mm,
    ``channels``."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    channels: int

    def slice_axis(self) -> int:
        """The axis to slice along: the one axis of a single slice (a 2D image stored as a volume); else the
        coarsest spacing (nnU-Net's 2D configuration), ties to the last axis (axial)."""
        single = [axis for axis in range(3) if self.shape[axis] == 1]
        if single:
            return single[-1]
        coarsest = max(self.spacing)
        return max(axis for axis in range(3) if self.spacing[axis] >= coarsest * 0.999)

    def in_plane_spacing(self, axis: int) -> tuple[float, float]:
        first, second = (a for a in range(3) if a != axis)
        return self.spacing[first], self.spacing[second]


@dataclass(frozen=True)
class Volume:
    """A decoded volume in canonical axes: ``data`` float32 ``X x Y x Z x C`` (images) or int64 ``X x Y x Z``
    (labels), ``spacing`` in mm per axis, the ``4 x 4`` voxel-to-RAS ``affine``; and the geometry of the file it
    came from, which travels to every writer so that nothing is derived again: its ``orientation`` (None: it came
    from no file, and is canonical as it is) and, for a NIfTI, its ``header``."""

    data: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    orientation: Orientation | None = None
    header: Any = None

    @classmethod
    def canonical(cls, data: np.ndarray, spacing: tuple[float, ...] | None, affine: np.ndarray,
                  header: Any = None) -> "Volume":
        """A volume from a file's voxels (3 axes, then channels), spacing (None: the affine's voxel sizes),
        voxel-to-RAS affine and NIfTI ``header`` (if any), reoriented."""
        orientation = Orientation.of(affine, data.shape[:3])
        spacing = orientation.spacing if spacing is None else tuple(float(s) for s in spacing)
        return cls(orientation.to_canonical(data), orientation.canonical(spacing), orientation.canonical_affine,
                   orientation, header)

    def to_file(self, data: np.ndarray) -> np.ndarray:
        """Canonical voxels of this volume (labels, a map) in its file's order."""
        return data if self.orientation is None else self.orientation.to_file(data)

    @property
    def file_affine(self) -> np.ndarray:
        """The voxel-to-RAS affine of :meth:`to_file`'s voxels."""
        return self.affine if self.orientation is None else self.orientation.affine

    @property
    def info(self) -> VolumeInfo:
        shape = self.data.shape[:3]
        return VolumeInfo((shape[0], shape[1], shape[2]), self.spacing,
                          self.data.shape[3] if self.data.ndim == 4 else 1)

    def plane(self, axis: int, index: int) -> np.ndarray:
        """Slice ``index`` along ``axis``: ``H x W [x C]`` (the two remaining axes, in order)."""
        return np.take(self.data, index, axis=axis)

    def statistics(self, nonzero: Sequence[bool] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std over the whole image volume (shapes ``1 x 1 x C``; over its nonzero voxels in
        the ``nonzero`` channels): its slices are normalised with them, so a slice is scaled as in its case."""
        from medseg.data.intensity import statistics

        return statistics(self.data.reshape(-1, self.data.shape[3] if self.data.ndim == 4 else 1), nonzero)

    def stacked_spacing(self, axis: int) -> tuple[float, float, float]:
        """The spacing of the volume's slices along ``axis`` stacked first: ``(slice, height, width)``."""
        return (self.spacing[axis], *self.info.in_plane_spacing(axis))


def with_channels(volumes: list[Volume], paths: Sequence[Path]) -> Volume:
    """Volumes of one case's channels, a file each (nnU-Net raw), as one volume of their channels; a channel on
    another grid is a one-line error."""
    first = volumes[0]
    for path, volume in zip(paths[1:], volumes[1:]):
        if volume.data.shape[:3] != first.data.shape[:3] or not np.allclose(volume.affine, first.affine, atol=1e-3):
            raise MedsegError(path, f"is not on the voxel grid of the case's first channel {paths[0].name}")
    data = np.concatenate([v.data.reshape(*v.data.shape[:3], -1) for v in volumes], axis=3)
    return replace(first, data=data)


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_dicom(path: Path) -> bool:
    """A DICOM file -- by its suffix, else by its content (``DICM`` after the 128-byte preamble), as exports named
    by UID have no suffix -- or a folder holding DICOM files (a series)."""
    if path.is_dir():
        return any(is_dicom(child) for child in path.iterdir() if child.is_file() and not child.name.startswith("."))
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix.lower() in IMAGE_EXTENSIONS or is_nifti(path):
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


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


def nifti_shape(image: Any, where: str | Path) -> tuple[tuple[int, int, int], int]:
    """A NIfTI header's voxel shape (a 2D image as one slice) and channel count (a 4th axis, as in the MSD)."""
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] < 1):
        raise MedsegError(where, f"expected a 2D or 3D volume (with channels in a 4th axis), got shape {shape}")
    return (shape[0], shape[1], shape[2]), shape[3] if len(shape) == 4 else 1


def nifti_orientation(image: Any, where: str | Path) -> Orientation:
    """A NIfTI's orientation from its affine, warning once when its pixdim disagrees with the affine's voxel
    sizes (the affine's are used)."""
    shape, _ = nifti_shape(image, where)
    affine = np.asarray(image.affine, np.float64)
    from_affine = np.linalg.norm(affine[:3, :3], axis=0)
    pixdim = np.array([float(z) for z in image.header.get_zooms()[:3]] + [1.0] * (3 - len(image.shape[:3])))
    if not np.allclose(from_affine, pixdim, rtol=SPACING_TOLERANCE, atol=1e-6) and str(where) not in _WARNED:
        _WARNED.add(str(where))
        get_logger().warning("%s: the affine's voxel sizes (%s mm) differ from pixdim (%s); using the affine's",
                             where, " x ".join(f"{v:g}" for v in from_affine), " x ".join(f"{v:g}" for v in pixdim))
    return Orientation.of(affine, shape)


_WARNED: set[str] = set()  # files already warned about


def nifti_info(path: Path) -> VolumeInfo:
    """Shape, spacing and channels, in canonical axes, from the header alone."""
    image = _nifti(path)
    shape, channels = nifti_shape(image, path)
    orientation = nifti_orientation(image, path)
    return VolumeInfo(orientation.canonical(shape), orientation.canonical(orientation.spacing), channels)


def read_nifti(path: Path, label: bool = False) -> Volume:
    """A NIfTI file as a canonical :class:`Volume`: images float32 ``X x Y x Z x C``; labels (``label``) int64
    ``X x Y x Z`` with whole-number values (anything else is an error naming the file)."""
    image = _nifti(path)
    shape, _ = nifti_shape(image, path)
    orientation = nifti_orientation(image, path)
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as exc:
        raise MedsegError(path, f"cannot decode NIfTI data ({type(exc).__name__}: {exc})") from None
    data = data.reshape(*shape, -1) if data.ndim < 4 else data
    if label:
        if data.shape[3] != 1:
            raise MedsegError(path, f"a label volume must be 3D, got shape {tuple(image.shape)} (4D)")
        data = label_values(data[..., 0], path)
    elif not np.issubdtype(data.dtype, np.number):
        raise MedsegError(path, f"unsupported voxel type {data.dtype}")
    else:
        data = data.astype(np.float32, copy=False)
        if not np.isfinite(data).all():
            raise MedsegError(path, "image contains NaN or infinite values")
    return Volume.canonical(data, None, orientation.affine, image.header)


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


def write_nifti_labels(path: Path, labels: np.ndarray, like: Volume) -> None:
    """Canonical class ids ``X x Y x Z`` as a uint8 NIfTI in the voxel order, affine and header of the image
    volume ``like`` (so it overlays in ITK-SNAP or 3D Slicer), atomically."""
    atomic_write_bytes(path, nifti_volume_bytes(like.to_file(labels).astype(np.uint8), like.file_affine,
                                                like.header, gz=path.name.lower().endswith(".gz")))


def write_nifti_map(path: Path, values: np.ndarray, like: Volume) -> None:
    """A canonical float map ``X x Y x Z`` (e.g. uncertainty) as a float32 NIfTI in the voxel order, affine and
    header of the image volume ``like``, atomically."""
    atomic_write_bytes(path, nifti_volume_bytes(like.to_file(values).astype(np.float32), like.file_affine,
                                                like.header, gz=path.name.lower().endswith(".gz")))


def nifti_volume_bytes(data: np.ndarray, affine: np.ndarray, header: Any = None, gz: bool = True) -> bytes:
    """``data`` (3 axes) as NIfTI bytes with ``affine``, in the format of an image's ``header`` if given (NIfTI-1 or
    -2; its data type set for ``data``, its shape the image's own less any channel axis: a 2D NIfTI stays 2D)."""
    import gzip

    import nibabel as nib

    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    if header is not None:
        header = header.copy()
        data = data.reshape(header.get_data_shape()[:3])
        header.set_data_dtype(data.dtype)
        header.set_data_shape(data.shape)
    output = image_class(data, affine, header)
    output.header.set_slope_inter(1, 0)
    raw = output.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if gz else raw

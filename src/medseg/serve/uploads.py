"""Uploads to the service, told apart by their content: DICOM (``DICM`` at byte 128), NIfTI (gzip, or the NIfTI-1
magic at byte 344, NIfTI-2's at byte 4) and images (PNG, JPEG, TIFF, BMP, GIF).

Every kind meets the same limits before its pixels are decoded: a volume's declared voxels (all slices) count
against the pixel limit, its longest axis against the side limit; a gzip NIfTI is inflated only up to the size its
header declares. A volume with one slice is a 2D image (its plane across that slice, normalised with its own
statistics and resampled from its spacing to the run's, as for a volume's slices); with more, it is segmented as a
volume. Volumes are segmented in medseg's canonical orientation and every result goes back in the upload's own
voxel order: a 2D mask in its rows and columns, a label volume as a gzip NIfTI with the upload's affine (a NIfTI's
own header; a DICOM's patient LPS axes turned into NIfTI's RAS).
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

import numpy as np

from medseg.data.readers import ImageTooLarge, decode_image_bytes, volume_slice
from medseg.data.volumes import Volume, nifti_volume_bytes
from medseg.errors import MedsegError

NIFTI_MAGIC = {b"n+1\0": 344, b"n+2\0": 4}  # magic -> offset (``ni1``: a header without its .img is refused)


@dataclass(frozen=True)
class Limits:
    max_pixels: int  # declared pixels of an image, voxels of a volume
    max_side: int  # longest side or axis
    channels: int  # the model's input channels


@dataclass
class Upload:
    """A decoded upload: ``image`` (``H x W x C``) for a 2D image or a single-slice volume, ``volume`` for a DICOM
    or NIfTI upload; ``axis`` is a single slice's axis (None: segment the whole volume)."""

    kind: str  # "image", "DICOM" or "NIfTI"
    image: np.ndarray | None = None
    volume: Volume | None = None
    axis: int | None = None
    statistics: tuple[np.ndarray, np.ndarray] | None = None  # of the single slice's volume
    plane_spacing: tuple[float, float] | None = None  # of the single slice, as its volume says (resampling)
    spacing: tuple[float, ...] | None = None  # mm per canonical axis (2 for a slice, 3 for a volume), if known

    @property
    def is_volume(self) -> bool:
        return self.image is None

    def to_file(self, values: np.ndarray) -> np.ndarray:
        """A result in the upload's own voxel order: a volume's (``X x Y x Z``), or a single slice's plane
        (``[K x] H x W``, back to the rows and columns of the file); a plain image's as it is."""
        if self.volume is None:
            return values
        if self.is_volume:
            return self.volume.to_file(values)
        planes = values if values.ndim == 3 else values[None]
        back = np.stack([self.volume.to_file(np.expand_dims(plane, self.axis)) for plane in planes])
        single = next(a for a in range(3) if self.volume.orientation is None or self.volume.orientation.shape[a] == 1)
        back = back.squeeze(axis=1 + single)
        return back if values.ndim == 3 else back[0]

    @property
    def file_spacing(self) -> tuple[float, ...] | None:
        """The spacing (mm) of :meth:`to_file`'s axes, where the upload says it."""
        if self.spacing is None or self.volume is None or self.volume.orientation is None:
            return self.spacing
        sizes = tuple(float(v) for v in np.linalg.norm(self.volume.orientation.affine[:3, :3], axis=0))
        if self.is_volume:
            return sizes
        return tuple(v for a, v in enumerate(sizes) if self.volume.orientation.shape[a] != 1)

    def describe(self) -> str:
        shape = self.volume.data.shape[:3] if self.volume is not None else self.image.shape[:2]
        return f"{self.kind} {'volume' if self.is_volume else 'image'} of {' x '.join(map(str, shape))}"


def kind_of(data: bytes) -> str:
    """``"DICOM"``, ``"NIfTI"`` or ``"image"`` by content."""
    if data[128:132] == b"DICM":
        return "DICOM"
    if data[:2] == b"\x1f\x8b" or any(data[at:at + 4] == magic for magic, at in NIFTI_MAGIC.items()) \
            or data[344:348] == b"ni1\0":
        return "NIfTI"
    return "image"


def decode_upload(data: bytes, limits: Limits, where: str = "upload", nonzero: tuple[bool, ...] = ()) -> Upload:
    """The upload decoded, or a :class:`MedsegError` (:class:`ImageTooLarge` for the limits) naming ``where``; a
    single slice's statistics are over its nonzero voxels in the ``nonzero`` channels (the model's schemes)."""
    kind = kind_of(data)
    if kind == "image":
        image = decode_image_bytes(data, limits.channels, limits.max_pixels, where)
        if max(image.shape[:2]) > limits.max_side:
            raise ImageTooLarge(where, f"image of {image.shape[1]} x {image.shape[0]} pixels has a side longer than "
                                       f"{limits.max_side:,}")
        return Upload(kind, image=image)
    if kind == "DICOM":
        volume, spacing_known = _dicom(data, limits, where)
    else:
        volume = _nifti(data, limits, where)
        spacing_known = True  # pixdim is always there (1 mm when the writer knew no better)
    return _as_upload(kind, volume, spacing_known, limits.channels, where, nonzero)


def _as_upload(kind: str, volume: Volume, spacing_known: bool, channels: int, where: str,
               nonzero: tuple[bool, ...]) -> Upload:
    single = [axis for axis in range(3) if volume.data.shape[axis] == 1]
    axis = single[-1] if single else 2
    plane = volume_slice(volume, axis, 0, channels, where)  # wrong channels are refused before inference
    if not single:
        return Upload(kind, volume=volume, spacing=volume.spacing if spacing_known else None)
    in_plane = volume.info.in_plane_spacing(axis)
    return Upload(kind, image=plane, volume=volume, axis=axis, statistics=volume.statistics(nonzero), plane_spacing=in_plane,
                  spacing=in_plane if spacing_known else None)


def _check_size(shape: tuple[int, ...], limits: Limits, where: str, what: str) -> None:
    voxels = int(np.prod(shape, dtype=np.int64))
    if min(shape) <= 0:
        raise MedsegError(where, f"{what} of {' x '.join(map(str, shape))} has no voxels")
    if voxels > limits.max_pixels:
        raise ImageTooLarge(where, f"{what} of {' x '.join(map(str, shape))} = {voxels:,} voxels exceeds the limit "
                                   f"of {limits.max_pixels:,} pixels (decompression bomb?)")
    if max(shape) > limits.max_side:
        raise ImageTooLarge(where, f"{what} of {' x '.join(map(str, shape))} has an axis longer than "
                                   f"{limits.max_side:,}")


def _dicom(data: bytes, limits: Limits, where: str) -> tuple[Volume, bool]:
    """A DICOM file's volume (sizes checked on the header first) and whether it says its pixel spacing (and, for
    several frames, its slice spacing)."""
    import pydicom

    from medseg.data.dicom import read_dicom_bytes

    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        if "Rows" not in header or "Columns" not in header:
            raise MedsegError(where, "is not a DICOM image (no Rows and Columns; truncated?)")
        shape = (int(header.Rows), int(header.Columns), int(header.get("NumberOfFrames") or 1))
    except MedsegError:
        raise
    except Exception as exc:  # pydicom raises many types for corrupt files
        raise MedsegError(where, f"cannot read the DICOM header ({type(exc).__name__}: {exc})") from None
    _check_size(shape, limits, where, "DICOM image")
    keywords = {element.keyword for element in header.iterall()}
    spacing_known = bool(keywords & {"PixelSpacing", "ImagerPixelSpacing"}) and (
        shape[2] == 1 or bool(keywords & {"ImagePositionPatient", "SpacingBetweenSlices", "SliceThickness"}))
    return read_dicom_bytes(data, where), spacing_known


def _nifti(data: bytes, limits: Limits, where: str) -> Volume:
    """A NIfTI file's volume with its header (as :func:`medseg.data.volumes.read_nifti` reads files); a gzip file
    is inflated in steps: the header, then at most the data it declares."""
    import nibabel as nib

    inflater = zlib.decompressobj(wbits=31) if data[:2] == b"\x1f\x8b" else None
    try:
        head = inflater.decompress(data, 544) if inflater else data[:544]
        magic = next((m for m, at in NIFTI_MAGIC.items() if head[at:at + 4] == m), None)
        if magic is None:
            reason = ("a NIfTI header without its .img file; send a single-file .nii or .nii.gz"
                      if head[344:348] == b"ni1\0" else "not a NIfTI file (no n+1 or n+2 magic)")
            raise MedsegError(where, reason)
        image_class = nib.Nifti1Image if magic == b"n+1\0" else nib.Nifti2Image
        header = image_class.header_class.from_fileobj(io.BytesIO(head))
        shape = tuple(int(s) for s in header.get_data_shape())
        if not 2 <= len(shape) <= 4:
            raise MedsegError(where, f"expected a 2D or 3D volume (with channels in a 4th axis), got shape {shape}")
        _check_size((*shape[:3], *(1,) * (3 - len(shape[:3]))), limits, where, "NIfTI volume")
        if len(shape) == 4 and not 1 <= shape[3] <= 4:
            raise MedsegError(where, f"has {shape[3]} channels in its 4th axis, expected {limits.channels}")
        size = int(header.get_data_offset()) + int(np.prod(shape)) * header.get_data_dtype().itemsize
        if inflater is None:
            raw = data
        else:  # no further than the declared data: a gzip bomb inflates no more than its header says
            raw = head + (inflater.decompress(inflater.unconsumed_tail, size - len(head)) if size > len(head) else b"")
        image = image_class.from_bytes(raw)
        pixels = np.asanyarray(image.dataobj)
    except MedsegError:
        raise
    except Exception as exc:  # zlib and nibabel raise many types for corrupt files
        raise MedsegError(where, f"cannot decode NIfTI ({type(exc).__name__}: {exc})") from None
    if not np.issubdtype(pixels.dtype, np.number):
        raise MedsegError(where, f"unsupported voxel type {pixels.dtype}")
    pixels = pixels.reshape(*pixels.shape[:3], *(1,) * (3 - pixels.ndim), -1).astype(np.float32, copy=False)
    if not np.isfinite(pixels).all():
        raise MedsegError(where, "image contains NaN or infinite values")
    affine = np.asarray(image.affine, np.float64)
    return Volume.canonical(pixels, None, affine, header)


def nifti_labels(labels: np.ndarray, upload: Upload) -> bytes:
    """Class ids ``X x Y x Z`` in the upload's voxel order as gzip NIfTI bytes with its affine (and, for a NIfTI
    upload, its header), as `medseg predict` writes files."""
    return _nifti_bytes(labels.astype(np.uint8), upload)


def nifti_map(values: np.ndarray, upload: Upload) -> bytes:
    """A float map ``X x Y x Z`` (uncertainty) in the upload's voxel order as gzip float32 NIfTI bytes."""
    return _nifti_bytes(values.astype(np.float32), upload)


def _nifti_bytes(values: np.ndarray, upload: Upload) -> bytes:
    return nifti_volume_bytes(values, upload.volume.file_affine, upload.volume.header)

"""The one place that decodes and writes image files. Every problem is a one-line MedsegError naming the file.

One meaning per name. :meth:`Reader.image` decodes a 2D image file, or ``page`` of a TIFF stack, as float32
``H x W x C`` in [0, 1] (8/16-bit integers divided by their type's maximum, float TIFFs checked for NaN/inf and
kept as they are); :meth:`Reader.slice` takes a :class:`~medseg.data.volumes.Slice` of a volume (NIfTI, DICOM) in
its stored intensities (after the modality LUT), since a volume is normalised as a whole. :meth:`Reader.mask` and
:meth:`Reader.slice_labels` give ``H x W`` int64 class ids, with :data:`UNLABELLED` where a partial label leaves a
pixel unlabelled (the dataset's stored value for it: 128 in the folder format, a trimap's grey; dataset.json's
``ignore`` label in nnU-Net raw). Reading a volume file as a 2D image, or the reverse, is a one-line error.

A :class:`Reader` keeps TIFF files open, so a stack's page count comes from its metadata and each page is one
read: reading N pages of a stack costs N page reads, never N whole-file decodes. It keeps the last few
decoded volumes too, so the slices of a case cost one decode. Datasets own a Reader; the module-level functions
use a short-lived one.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import tifffile
from PIL import Image

from medseg.data.volumes import Slice, Volume, VolumeInfo, is_nifti, is_volume_file, nifti_info, read_nifti
from medseg.errors import MedsegError
from medseg.files import atomic_write_bytes

TIFF_EXTENSIONS = (".tif", ".tiff")
LOSSY_FORMATS = ("JPEG", "MPO", "WEBP")
MAX_PIXELS = 2**30  # 1 gigapixel per plane: larger declared sizes are refused as decompression bombs
UNLABELLED = -1  # the class id of an unlabelled pixel in a decoded mask (a partial label)
UNLABELLED_VALUE = 128  # the folder format's stored mask value for an unlabelled pixel (black, grey, white: a trimap)
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageTooLarge(MedsegError):
    """An image declares more pixels than allowed (a decompression bomb, or just too large): refused before
    decoding."""


@dataclass
class Plane:
    """Raw pixels of one 2D plane (``H x W [x C]``, file dtype) and the format they were stored in."""

    pixels: np.ndarray
    format: str


class _OpenTiff:
    """An open TIFF file and how many 2D pages it holds: the planes of its one series (an ImageJ or shaped
    stack, contiguous or not), or, when a tool wrote every page as its own series, its pages."""

    def __init__(self, source: Path | IO[bytes], where: str | Path, max_pixels: int = MAX_PIXELS) -> None:
        self.handle = tifffile.TiffFile(source)
        try:
            series = self.handle.series
            self.series = series[0]
            page_shape = self.series.keyframe.shape
            if int(np.prod(page_shape[:2])) > max_pixels:
                raise ImageTooLarge(where, f"declared size {page_shape} is too large (decompression bomb?); the "
                                           f"limit is {max_pixels:,} pixels")
            self.by_page = len(series) > 1 and all(s.shape == page_shape and len(s.pages) == 1 for s in series)
            extra = self.series.shape[: len(self.series.shape) - len(page_shape)]
            self.pages = len(series) if self.by_page else int(np.prod(extra)) if extra else 1
            self.is_stack = self.pages > 1 or bool(extra)
        except BaseException:
            self.handle.close()
            raise

    def read(self, page: int) -> np.ndarray:
        if self.by_page:
            return self.handle.series[page].asarray()
        if not self.is_stack:
            return self.series.asarray()
        return self.series.asarray(key=page).reshape(self.series.keyframe.shape)

    def close(self) -> None:
        self.handle.close()


class Reader:
    """Decodes image and mask files, keeping up to ``max_open`` TIFF files open between calls.

    Safe across ``fork`` (DataLoader workers): a child process reopens files instead of sharing offsets.
    """

    def __init__(self, max_open: int = 8, max_volumes: int = 4) -> None:
        self.max_open, self.max_volumes = max_open, max_volumes
        self._tiffs: OrderedDict[tuple[str, int, int], _OpenTiff] = OrderedDict()
        self._volumes: OrderedDict[tuple[str, bool, int, int], tuple[Volume, Any]] = OrderedDict()  # volume, stats
        self._pid = os.getpid()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_open"])

    def volume(self, path: str | Path, label: bool = False) -> Volume:
        """A NIfTI file, DICOM file or DICOM series folder decoded whole (images, or ``label`` maps)."""
        return self._volume(Path(path), label)[0]

    def volume_statistics(self, path: str | Path, nonzero: tuple[bool, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std of a whole image volume (shapes ``1 x 1 x C``; over its nonzero voxels in the
        ``nonzero`` channels): its slices are normalised with them, so a slice is scaled as in its case."""
        volume, known = self._volume(Path(path), False)
        if nonzero not in known:
            known[nonzero] = volume.statistics(nonzero)
        return known[nonzero]

    def _volume(self, path: Path, label: bool) -> tuple[Volume, dict[tuple[bool, ...], tuple[np.ndarray, np.ndarray]]]:
        stat = path.stat() if path.exists() else None  # a file rewritten since it was decoded is decoded again
        key = (str(path.resolve()), label, stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
        if key in self._volumes:
            self._volumes.move_to_end(key)
            return self._volumes[key]
        if is_nifti(path):
            volume = read_nifti(path, label)
        else:
            from medseg.data.dicom import read_dicom

            volume = read_dicom(path)
            if label:
                volume = replace(volume, data=_dicom_labels(volume, path))
        self._volumes[key] = (volume, {})  # its statistics, by the channels taken over nonzero voxels
        while len(self._volumes) > self.max_volumes:
            self._volumes.popitem(last=False)
        return self._volumes[key]

    def close(self) -> None:
        if self._pid == os.getpid():
            for tiff in self._tiffs.values():
                tiff.close()
        self._tiffs.clear()

    def pages(self, path: str | Path) -> int:
        """Number of 2D pages in an image file (1 unless it is a TIFF stack), from the metadata."""
        path = Path(path)
        return self._tiff(path).pages if _is_tiff(path) else 1

    def image(self, path: str | Path, channels: int | None = None, page: int | None = None) -> np.ndarray:
        """A 2D image file (``page`` of a TIFF stack) as float32 ``H x W x C`` in [0, 1]."""
        path = _not_a_volume(Path(path))
        return as_unit_image(self.plane(path, page, "images").pixels, channels, path)

    def slice(self, path: str | Path, where: Slice, channels: int | None = None) -> np.ndarray:
        """A slice of an image volume as float32 ``H x W x C``, intensities as stored (HU, scanner units)."""
        return volume_slice(self.volume(path), where.axis, where.index, channels, path)

    def mask(self, path: str | Path, n_classes: int = 2, page: int | None = None,
             unlabelled: int | None = None) -> np.ndarray:
        """A 2D mask file (``page`` of a TIFF stack) as ``H x W`` int64 class ids, :data:`UNLABELLED` where the
        stored value is ``unlabelled`` (the dataset's convention for unlabelled pixels; never a class id).

        Binary tasks (``n_classes == 2``) accept {0, 1} and {0, 255}; multi-class tasks accept 0..K-1. Multi-channel
        masks are accepted only if their colour channels are identical (alpha ignored); other values are an error
        that says what the values suggest (more classes, or a lossy file).
        """
        path = _not_a_volume(Path(path))
        plane = self.plane(path, page, "masks")
        pixels = plane.pixels
        if pixels.ndim == 3:
            colour = pixels[..., :3] if pixels.shape[2] >= 3 else pixels[..., :1]
            if colour.shape[2] == 3 and not _identical_channels(colour):
                raise MedsegError(path, "mask is a colour (RGB) image; expected a single-channel label map")
            pixels = colour[..., 0]
        if pixels.ndim != 2:
            raise MedsegError(path, f"expected a 2D mask, got an array of shape {pixels.shape}")
        if np.issubdtype(pixels.dtype, np.floating):
            if not np.isfinite(pixels).all() or not np.equal(np.mod(pixels, 1), 0).all():
                raise MedsegError(path, "mask has non-integer values")
        return _class_ids(pixels, n_classes, path, plane.format, unlabelled)

    def slice_labels(self, path: str | Path, where: Slice, n_classes: int = 2,
                     unlabelled: int | None = None) -> np.ndarray:
        """A slice of a label volume as ``H x W`` int64 class ids (:data:`UNLABELLED` as in :meth:`mask`)."""
        path = Path(path)
        labels = self.volume(path, label=True).plane(where.axis, where.index)
        return _class_ids(labels, n_classes, path, "NIfTI" if is_nifti(path) else "DICOM", unlabelled)

    def mask_values(self, path: str | Path) -> np.ndarray:
        """The distinct values of a mask file (every page of a stack, every voxel of a volume), as stored."""
        path = Path(path)
        if is_volume_file(path):
            return np.unique(self.volume(path, label=True).data)
        values = [np.unique(self.plane(path, page if self.pages(path) > 1 else None, "masks").pixels)
                  for page in range(self.pages(path))]
        return np.unique(np.concatenate(values))

    def check_mask(self, path: str | Path, n_classes: int, unlabelled: int | None = None) -> None:
        """The one-line error of :meth:`mask` for a mask file (any page of a stack, any voxel of a volume) whose
        values are not class ids of ``n_classes``."""
        path = Path(path)
        if is_volume_file(path):
            _class_ids(self.volume(path, label=True).data, n_classes, path, "NIfTI" if is_nifti(path) else "DICOM",
                       unlabelled)
            return
        count = self.pages(path)
        for page in range(count):
            self.mask(path, n_classes, page if count > 1 else None, unlabelled)

    def plane(self, path: Path, page: int | None, kind: str) -> Plane:
        """One raw 2D plane: the file itself, or ``page`` of a stack (a stack without ``page`` is an error)."""
        if not _is_tiff(path):
            if page not in (None, 0):
                raise MedsegError(path, f"has 1 page, page {page} requested")
            _check_file(path)
            return _decode_pillow(path, path)
        tiff = self._tiff(path)
        if page is None and tiff.is_stack:
            raise MedsegError(path, f"is a stack of {tiff.pages} {kind}; read it with the tiff-stack adapter")
        page = page or 0
        if not 0 <= page < tiff.pages:
            raise MedsegError(path, f"has {tiff.pages} page{'s' if tiff.pages > 1 else ''}, page {page} requested")
        try:
            return Plane(tiff.read(page), "TIFF")
        except Exception as exc:  # tifffile raises many types for corrupt pages
            raise MedsegError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from None

    def _tiff(self, path: Path) -> _OpenTiff:
        if self._pid != os.getpid():  # a forked worker: never share file offsets with the parent
            self._tiffs.clear()
            self._pid = os.getpid()
        _check_file(path)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key in self._tiffs:
            self._tiffs.move_to_end(key)
            return self._tiffs[key]
        try:
            tiff = _OpenTiff(path, path)
        except MedsegError:
            raise
        except Exception as exc:
            raise MedsegError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from None
        self._tiffs[key] = tiff
        while len(self._tiffs) > self.max_open:
            self._tiffs.popitem(last=False)[1].close()
        return tiff


def read_channels(reader: Reader, paths: tuple[Path, ...], channels: int | None, page: int | None = None,
                  where: Slice | None = None) -> np.ndarray:
    """An image whose channels are in one file or spread over several (nnU-Net raw: a file per channel, of one
    shape), as float32 ``H x W x C`` with ``channels`` channels if given: 2D files (their ``page``) in [0, 1], or
    the slice ``where`` of volumes as stored."""
    def one(path: Path, count: int | None) -> np.ndarray:
        return reader.image(path, count, page) if where is None else reader.slice(path, where, count)

    if len(paths) == 1:
        return one(paths[0], channels)
    planes = [one(path, None) for path in paths]
    for path, plane in zip(paths[1:], planes[1:]):
        if plane.shape[:2] != planes[0].shape[:2]:
            raise MedsegError(path, f"channel of {plane.shape[1]} x {plane.shape[0]} pixels, the first channel "
                                    f"{paths[0].name} has {planes[0].shape[1]} x {planes[0].shape[0]}")
    return _channels_last(np.concatenate(planes, axis=2), paths[0], channels, colour=False)


def volume_slice(volume: Volume, axis: int, index: int, channels: int | None, where: str | Path) -> np.ndarray:
    """Slice ``index`` along ``axis`` of an image volume as float32 ``H x W x C`` (intensities as stored),
    with ``channels`` channels if given."""
    return _channels_last(volume.plane(axis, index), where, channels, colour=False)


def _not_a_volume(path: Path) -> Path:
    if is_volume_file(path):
        raise MedsegError(path, "is a volume: its slices are read with their axis and index")
    return path


def _class_ids(pixels: np.ndarray, n_classes: int, path: Path, fmt: str, unlabelled: int | None) -> np.ndarray:
    """Whole-number label values as int64 class ids 0..K-1 (binary tasks also take {0, 255}), and
    :data:`UNLABELLED` where the value is ``unlabelled`` (when that is not a class id)."""
    values = np.unique(pixels)
    marked = None
    if unlabelled is not None and unlabelled >= n_classes and (values == unlabelled).any():
        marked, values = pixels == unlabelled, values[values != unlabelled]
    if n_classes == 2 and set(values.tolist()) <= {0, 255}:
        ids = (pixels == 255).astype(np.int64)
    elif values.min(initial=0) < 0 or values.max(initial=0) >= n_classes:
        raise MedsegError(path, _bad_mask_values(values, n_classes, fmt))
    else:
        ids = pixels.astype(np.int64)
    if marked is not None:
        ids[marked] = UNLABELLED
    return ids


def _dicom_labels(volume: Volume, path: Path) -> np.ndarray:
    """A DICOM image used as a label map: its single channel as whole-number class ids."""
    from medseg.data.volumes import label_values

    if volume.data.ndim == 4 and volume.data.shape[3] != 1:
        raise MedsegError(path, "a label image must have one channel")
    return label_values(volume.data.reshape(volume.data.shape[:3]), path)


def volume_info(path: str | Path) -> VolumeInfo:
    """Shape, spacing and channels of a volume file or DICOM series from its header alone."""
    path = Path(path)
    if is_nifti(path):
        return nifti_info(path)
    from medseg.data.dicom import dicom_info

    return dicom_info(path)


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_EXTENSIONS


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise MedsegError(path, "file not found")
    if path.stat().st_size == 0:
        raise MedsegError(path, "empty file (0 bytes)")


def _decode_pillow(source: Path | IO[bytes], where: str | Path, max_pixels: int = MAX_PIXELS) -> Plane:
    """PNG, JPEG, BMP, GIF (and anything else Pillow reads by content); the declared size is checked against
    ``max_pixels`` before decoding."""
    try:
        with Image.open(source) as img:  # reads the header only: the size is known before decoding
            if img.width * img.height > max_pixels:
                raise ImageTooLarge(where, f"image of {img.width} x {img.height} pixels exceeds the limit of "
                                           f"{max_pixels:,} pixels (decompression bomb?)")
            img.load()
            fmt = img.format or "unknown"
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                rgb = np.asarray(img)
                if _identical_channels(rgb[..., :3]):
                    return Plane(np.ascontiguousarray(rgb[..., 0]), fmt)
            elif img.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("L" if img.mode == "1" else "RGB")
            elif img.mode == "I" and fmt == "PNG":  # older Pillow opens 16-bit grey PNGs as int32: 16 bits they are
                return Plane(np.asarray(img).astype(np.uint16), fmt)
            return Plane(np.asarray(img), fmt)
    except MedsegError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(where, f"image too large (decompression bomb?): {exc}") from None
    except Exception as exc:  # Pillow raises many types for corrupt files
        raise MedsegError(where, f"cannot decode image ({type(exc).__name__}: {exc})") from None


def _bad_mask_values(values: np.ndarray, n_classes: int, fmt: str) -> str:
    """Why a mask's values do not fit the task, and what to do."""
    if fmt in LOSSY_FORMATS:
        return (f"mask is a lossy {fmt} file ({values.size} distinct values); masks must be saved losslessly "
                "(PNG or TIFF)")
    shown = ", ".join(str(v) for v in values[:8].tolist()) + (" ..." if values.size > 8 else "")
    if fmt in ("NIfTI", "DICOM"):
        return (f"label values [{shown}] are not all among the {n_classes} classes 0..{n_classes - 1} (the labels "
                "of dataset.json, or data.n_classes)")
    expected = "{0, 1} or {0, 255}" if n_classes == 2 else f"0..{n_classes - 1}"
    message = f"unexpected mask values [{shown}]; expected {expected}"
    top = int(values.max(initial=0))
    if values.min(initial=0) >= 0 and np.issubdtype(values.dtype, np.integer) and top < 32:
        return f"{message}; if these are {top + 1} classes, use --set data.n_classes={top + 1}"
    if values.size > 32:
        return f"{message}; {values.size} distinct values look like a lossy or anti-aliased mask: save masks losslessly"
    return message


def as_unit_image(pixels: np.ndarray, channels: int | None = None, where: str | Path = "image array") -> np.ndarray:
    """Pixels as the reader returns images: float32 ``H x W x C`` in [0, 1] (integers scaled like files, floats
    kept), with ``channels`` channels if given. ``where`` names the source in errors."""
    pixels = np.asarray(pixels)
    if pixels.size == 0:
        raise MedsegError(where, "image has no pixels")
    return _channels_last(_to_unit_float(pixels, where), where, channels)


def _to_unit_float(pixels: np.ndarray, path: str | Path) -> np.ndarray:
    """Integers divided by their type's maximum (8-bit by 255, 16-bit by 65535: by the bit depth, never by an image's
    own content, so every image of a dataset is scaled alike), floats kept as they are."""
    if pixels.dtype == np.bool_:
        return pixels.astype(np.float32)
    if np.issubdtype(pixels.dtype, np.integer):
        return pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)
    if np.issubdtype(pixels.dtype, np.floating):
        if not np.isfinite(pixels).all():
            raise MedsegError(path, "image contains NaN or infinite values")
        return pixels.astype(np.float32)
    raise MedsegError(path, f"unsupported pixel type {pixels.dtype}")


def _channels_last(pixels: np.ndarray, path: str | Path, channels: int | None, colour: bool = True) -> np.ndarray:
    """``H x W x C`` with ``channels`` channels if given. A ``colour`` image file's alpha is dropped (a 4th or 2nd
    channel) and grey and RGB convert into each other where nothing is lost; a volume's channels are modalities,
    all kept, and must be as many as asked for."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3:
        raise MedsegError(path, f"expected a 2D image, got an array of shape {pixels.shape}")
    if colour and pixels.shape[2] == 4:
        pixels = pixels[..., :3]
    elif colour and pixels.shape[2] == 2:  # grey + alpha
        pixels = pixels[..., :1]
    if channels is None or pixels.shape[2] == channels:
        return pixels
    if colour and channels == 3 and pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    if colour and channels == 1 and pixels.shape[2] == 3 and _identical_channels(pixels):
        return pixels[..., :1]
    raise MedsegError(path, f"has {pixels.shape[2]} channels, expected {channels}")


def _identical_channels(pixels: np.ndarray) -> bool:
    return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all())


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def decode_image_bytes(data: bytes, channels: int | None, max_pixels: int = MAX_PIXELS,
                       where: str = "upload") -> np.ndarray:
    """An image file's bytes (PNG, JPEG, TIFF, BMP, GIF; one page) as float32 ``H x W x C`` in [0, 1], decoded
    in memory; more than ``max_pixels`` declared pixels is an :class:`ImageTooLarge` before any decoding."""
    if not data:
        raise MedsegError(where, "empty body (0 bytes)")
    if data[:4] in TIFF_MAGIC:
        try:
            tiff = _OpenTiff(io.BytesIO(data), where, max_pixels)
        except MedsegError:
            raise
        except Exception as exc:
            raise MedsegError(where, f"cannot decode image ({type(exc).__name__}: {exc})") from None
        try:
            if tiff.is_stack:
                raise MedsegError(where, f"is a stack of {tiff.pages} pages; send one image")
            pixels = tiff.read(0)
        except MedsegError:
            raise
        except Exception as exc:
            raise MedsegError(where, f"cannot decode image ({type(exc).__name__}: {exc})") from None
        finally:
            tiff.close()
    else:
        pixels = _decode_pillow(io.BytesIO(data), where, max_pixels).pixels
    return as_unit_image(pixels, channels, where)


def read_image(path: str | Path, channels: int | None = None, page: int | None = None) -> np.ndarray:
    """Decode one 2D image file as float32 ``H x W x C`` in [0, 1] (``page`` of a TIFF stack)."""
    with Reader() as reader:
        return reader.image(path, channels, page)


def read_mask(path: str | Path, n_classes: int = 2, page: int | None = None) -> np.ndarray:
    """Decode a 2D mask file as ``H x W`` int64 class ids (see :meth:`Reader.mask`)."""
    with Reader() as reader:
        return reader.mask(path, n_classes, page)


def stack_length(path: str | Path) -> int:
    """Number of 2D pages in an image file (1 unless it is a TIFF stack), from the metadata."""
    with Reader() as reader:
        return reader.pages(path)


def mask_pixels(mask: np.ndarray, n_classes: int = 2) -> np.ndarray:
    """Class ids as the 8-bit pixels medseg writes: binary masks as {0, 255}, label maps as their ids, and
    :data:`UNLABELLED` pixels as :data:`UNLABELLED_VALUE` (the folder format's partial labels)."""
    pixels = (mask.clip(0, 1).astype(np.uint8) * 255) if n_classes == 2 else mask.clip(0, None).astype(np.uint8)
    unlabelled = mask == UNLABELLED
    if unlabelled.any():
        if n_classes > UNLABELLED_VALUE:
            raise MedsegError("mask", f"{n_classes} classes leave no value to mark unlabelled pixels "
                                      f"({UNLABELLED_VALUE} is a class)")
        pixels[unlabelled] = UNLABELLED_VALUE
    return pixels


def write_mask(path: str | Path, mask: np.ndarray, n_classes: int = 2) -> None:
    """Write class ids as an 8-bit PNG/TIFF (see :func:`mask_pixels`)."""
    write_array(path, mask_pixels(mask, n_classes))


def encode_array(array: np.ndarray, suffix: str, stack: bool = False) -> bytes:
    """An ``H x W [x C]`` array as PNG/JPEG/BMP bytes (uint8/uint16) or TIFF bytes (any dtype); with ``stack``,
    an ``N x H x W`` TIFF stack of grayscale pages."""
    buffer = io.BytesIO()
    if suffix.lower() in TIFF_EXTENSIONS:
        rgb = not stack and array.ndim == 3 and array.shape[2] in (3, 4)
        tifffile.imwrite(buffer, array, photometric="rgb" if rgb else "minisblack")
    else:
        Image.fromarray(array).save(buffer, format=Image.registered_extensions()[suffix.lower()])
    return buffer.getvalue()


def write_array(path: str | Path, array: np.ndarray, stack: bool = False) -> None:
    """Write an array as an image file (see :func:`encode_array`), atomically."""
    path = Path(path)
    atomic_write_bytes(path, encode_array(array, path.suffix, stack))

"""The one place that decodes and writes image files. Every problem is a one-line MedsegError naming the file.

Images come back as ``H x W x C`` arrays scaled to float32 [0, 1] (8/16-bit integers divided by their maximum,
float TIFFs checked for NaN/inf and kept as they are); masks as ``H x W`` int64 class ids.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from medseg.errors import MedsegError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
TIFF_EXTENSIONS = (".tif", ".tiff")
MAX_PIXELS = 2**30  # 1 gigapixel per plane: larger declared sizes are refused as decompression bombs
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


_last_stack: dict[tuple[str, int, int], np.ndarray] = {}


def _decode(path: Path) -> tuple[np.ndarray, bool]:
    """Raw pixels and whether they are a stack. The last decoded TIFF stack is kept (read-only), so reading its
    frames one by one decodes the file once, not once per frame."""
    key = (str(path.resolve()), *_stat_key(path))
    if key in _last_stack:
        return _last_stack[key], True
    pixels, is_stack = _decode_file(path)
    if is_stack:
        pixels.flags.writeable = False
        _last_stack.clear()
        _last_stack[key] = pixels
    return pixels, is_stack


def _stat_key(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (-1, -1)
    return (stat.st_mtime_ns, stat.st_size)


def _decode_file(path: Path) -> tuple[np.ndarray, bool]:
    """Raw pixels and whether they are a stack: ``H x W [x C]``, or ``N x H x W [x C]`` for a TIFF stack."""
    if not path.is_file():
        raise MedsegError(path, "file not found")
    if path.stat().st_size == 0:
        raise MedsegError(path, "empty file (0 bytes)")
    try:
        if path.suffix.lower() in TIFF_EXTENSIONS:
            with tifffile.TiffFile(path) as tif:
                for page in tif.pages:
                    if int(np.prod(page.shape[:2])) > MAX_PIXELS:
                        raise MedsegError(path, f"declared size {page.shape} is too large (decompression bomb?)")
                series = tif.series[0]
                return series.asarray(), len(series.shape) >= 3 and series.axes[0] not in "YX"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                if img.mode == "P":
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                    rgb = np.asarray(img)
                    if _identical_channels(rgb[..., :3]):
                        return np.ascontiguousarray(rgb[..., 0]), False
                elif img.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                    img = img.convert("L" if img.mode == "1" else "RGB")
                return np.asarray(img), False
    except MedsegError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MedsegError(path, f"image too large (decompression bomb?): {exc}") from None
    except Exception as exc:  # PIL and tifffile raise many types for corrupt files
        raise MedsegError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from None


def _to_unit_float(pixels: np.ndarray, path: Path) -> np.ndarray:
    if pixels.dtype == np.bool_:
        return pixels.astype(np.float32)
    if np.issubdtype(pixels.dtype, np.integer):
        maximum = 255.0 if pixels.dtype.itemsize == 1 or pixels.max(initial=0) <= 255 else 65535.0
        if pixels.dtype.itemsize > 2 and pixels.max(initial=0) > 65535:
            maximum = float(np.iinfo(pixels.dtype).max)
        return pixels.astype(np.float32) / maximum
    if np.issubdtype(pixels.dtype, np.floating):
        if not np.isfinite(pixels).all():
            raise MedsegError(path, "image contains NaN or infinite values")
        return pixels.astype(np.float32)
    raise MedsegError(path, f"unsupported pixel type {pixels.dtype}")


def _channels_last(pixels: np.ndarray, path: Path, channels: int | None) -> np.ndarray:
    """``H x W x C`` with RGBA's alpha dropped and channels converted to ``channels`` if given."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3:
        raise MedsegError(path, f"expected a 2D image, got an array of shape {pixels.shape}")
    if pixels.shape[2] == 4:
        pixels = pixels[..., :3]
    elif pixels.shape[2] == 2:  # grey + alpha
        pixels = pixels[..., :1]
    if channels is None or pixels.shape[2] == channels:
        return pixels
    if channels == 3 and pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    if channels == 1 and pixels.shape[2] == 3 and _identical_channels(pixels):
        return pixels[..., :1]
    raise MedsegError(path, f"has {pixels.shape[2]} channels, expected {channels}")


def _identical_channels(pixels: np.ndarray) -> bool:
    return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all())


def read_image(path: str | Path, channels: int | None = None, frame: int | None = None) -> np.ndarray:
    """Decode one image as float32 ``H x W x C`` in [0, 1] (``frame`` picks a page of a TIFF stack)."""
    path = Path(path)
    pixels = _decode_plane(path, frame, "images")
    if pixels.size == 0:
        raise MedsegError(path, "image has no pixels")
    return _channels_last(_to_unit_float(pixels, path), path, channels)


def _decode_plane(path: Path, frame: int | None, kind: str) -> np.ndarray:
    """One 2D plane of a file: the file itself, or page ``frame`` of a stack (a stack without ``frame`` is an
    error)."""
    pixels, is_stack = _decode(path)
    if frame is not None:
        return _select_frame(pixels, frame, is_stack, path)
    if is_stack:
        raise MedsegError(path, f"is a stack of {pixels.shape[0]} {kind}; read it with the tiff-stack adapter")
    return pixels


def _select_frame(pixels: np.ndarray, frame: int, is_stack: bool, path: Path) -> np.ndarray:
    if not is_stack:
        if frame != 0:
            raise MedsegError(path, f"has 1 frame, frame {frame} requested")
        return pixels
    if not 0 <= frame < pixels.shape[0]:
        raise MedsegError(path, f"has {pixels.shape[0]} frames, frame {frame} requested")
    return pixels[frame]


def stack_length(path: str | Path) -> int:
    """Number of 2D frames in an image file (1 unless it is a TIFF stack)."""
    pixels, is_stack = _decode(Path(path))
    return int(pixels.shape[0]) if is_stack else 1


def read_mask(path: str | Path, n_classes: int = 2, frame: int | None = None) -> np.ndarray:
    """Decode a mask as ``H x W`` int64 class ids.

    Binary tasks (``n_classes == 2``) accept {0, 1} and {0, 255}; multi-class tasks accept 0..K-1. Multi-channel
    masks are accepted only if their colour channels are identical (alpha ignored); other values are an error.
    """
    path = Path(path)
    pixels = _decode_plane(path, frame, "masks")
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
    values = np.unique(pixels)
    if n_classes == 2 and set(values.tolist()) <= {0, 255}:
        return (pixels == 255).astype(np.int64)
    if values.min(initial=0) < 0 or values.max(initial=0) >= n_classes:
        shown = ", ".join(str(v) for v in values[:8].tolist()) + (" ..." if values.size > 8 else "")
        expected = "{0, 1} or {0, 255}" if n_classes == 2 else f"0..{n_classes - 1}"
        raise MedsegError(path, f"unexpected mask values [{shown}]; expected {expected}")
    return pixels.astype(np.int64)


def _atomic_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_mask(path: str | Path, mask: np.ndarray, n_classes: int = 2) -> None:
    """Write class ids as an 8-bit PNG/TIFF: binary masks as {0, 255}, label maps as their ids."""
    path = Path(path)
    values = (mask.astype(np.uint8) * 255) if n_classes == 2 else mask.astype(np.uint8)
    write_array(path, values)


def write_array(path: str | Path, array: np.ndarray, stack: bool = False) -> None:
    """Write an ``H x W [x C]`` array (uint8/uint16 PNG, any dtype TIFF) or, with ``stack``, an ``N x H x W`` TIFF
    stack of grayscale pages, atomically."""
    path = Path(path)
    tmp = _atomic_path(path)
    try:
        if path.suffix.lower() in TIFF_EXTENSIONS:
            rgb = not stack and array.ndim == 3 and array.shape[2] in (3, 4)
            tifffile.imwrite(tmp, array, photometric="rgb" if rgb else "minisblack")
        else:
            Image.fromarray(array).save(tmp, format=Image.registered_extensions()[path.suffix.lower()])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

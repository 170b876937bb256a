"""Joint image/mask augmentation (albumentations + the U-Net paper's coarse-grid elastic deformation), patch
sampling with foreground oversampling, and resampling.

A 2D image is augmented in the reader's [0, 1] (so brightness/contrast/gamma are well defined) and normalised
afterwards; a volume's slice is normalised first and its intensities are augmented in normalised units
(:func:`medseg.data.intensity.jitter`). Masks and regions are warped with nearest-neighbour interpolation.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network call for a version check at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from medseg.config import AugmentConfig  # noqa: E402
from medseg.data.datasets import Sample  # noqa: E402

# Labels are resized on the images' centre-aligned grid: OpenCV's INTER_NEAREST samples a grid shifted towards the
# top-left (opencv#10146), which moved every resized mask up to half a pixel against its image.
LABEL_INTERPOLATION = cv2.INTER_NEAREST_EXACT
IMAGE_RESAMPLING = cv2.INTER_CUBIC  # images resampled by a scale or to a spacing, in training and prediction


class GridElasticDeformation(A.DualTransform):
    """Elastic deformation of the U-Net paper: random displacements (std ``sigma`` pixels) on a coarse
    ``grid x grid`` lattice, interpolated bicubically to a smooth per-pixel field, applied by remapping."""

    def __init__(self, grid: int = 3, sigma: float = 10.0, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.grid = grid
        self.sigma = sigma

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        coarse = self.random_generator.normal(0.0, self.sigma, size=(2, self.grid, self.grid)).astype(np.float32)
        dy = cv2.resize(coarse[0], (width, height), interpolation=cv2.INTER_CUBIC)
        dx = cv2.resize(coarse[1], (width, height), interpolation=cv2.INTER_CUBIC)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        return {"map_x": xs + dx, "map_y": ys + dy}

    def apply(self, img: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, **params: Any) -> np.ndarray:
        out = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        return out.reshape(img.shape)

    def apply_to_mask(self, mask: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, **params: Any) -> np.ndarray:
        out = cv2.remap(mask, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
        return out.reshape(mask.shape)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("grid", "sigma")


def build_augmentation(config: AugmentConfig, intensity: bool = True) -> A.Compose:
    """The joint augmentation pipeline of a config (masks: ``mask`` and ``region`` targets, nearest); without
    ``intensity``, its spatial transforms, blur and noise only (a normalised volume's slice: its intensities are
    jittered in normalised units)."""
    steps: list[A.BasicTransform] = []
    if config.flip:
        steps.append(A.HorizontalFlip(p=0.5))
    if config.vflip:
        steps.append(A.VerticalFlip(p=0.5))
    if config.rotate90:
        steps.append(A.RandomRotate90(p=0.5))
    if config.affine_p > 0:
        steps.append(
            A.Affine(
                scale=(1 - config.scale, 1 + config.scale),
                translate_percent=(-config.shift, config.shift),
                rotate=(-config.rotate_degrees, config.rotate_degrees),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_REFLECT_101,
                p=config.affine_p,
            )
        )
    if config.elastic_p > 0:
        steps.append(GridElasticDeformation(config.elastic_grid, config.elastic_sigma, p=config.elastic_p))
    if intensity and config.intensity_p > 0:
        steps.append(A.RandomBrightnessContrast(config.brightness, config.contrast, p=config.intensity_p))
    if intensity and config.gamma_p > 0:
        low, high = 100 * (1 - config.gamma), 100 * (1 + config.gamma)
        steps.append(A.RandomGamma(gamma_limit=(low, high), p=config.gamma_p))
    if config.blur_p > 0:
        steps.append(A.GaussianBlur(blur_limit=(3, 5), p=config.blur_p))
    if config.noise_p > 0:
        steps.append(A.GaussNoise(std_range=(0.0, config.noise_std), p=config.noise_p))
    return A.Compose(steps, additional_targets={"region": "mask"}, seed=0, strict=True)


def seed_pipeline(pipeline: A.Compose, seed: int) -> None:
    """Seed a pipeline for one sample, each transform with its own stream: albumentations' ``set_random_seed``
    gives every transform the same seed, so transforms of equal probability would always fire together (both
    flips at once, never a mirror image)."""
    pipeline.set_random_seed(seed)
    streams = np.random.SeedSequence(seed).generate_state(len(pipeline.transforms))
    for transform, stream in zip(pipeline.transforms, streams):
        transform.set_random_seed(int(stream))


def augment(pipeline: A.Compose, sample: Sample, seed: int, normalised: bool = False) -> Sample:
    """Apply ``pipeline`` to a sample with a per-sample seed (reproducible whatever the worker). A ``normalised``
    image (a volume's slice) goes through as it is; other intensities outside [0, 1] (a float TIFF's) are mapped
    to [0, 1] by their range and back, so the intensity transforms act as on 8-bit images."""
    seed_pipeline(pipeline, seed)
    region = sample.region if sample.region is not None else np.ones(sample.image.shape[:2], bool)
    low, high = float(sample.image.min()), float(sample.image.max())
    scale = max(high - low, 1e-6) if (low < 0 or high > 1) and not normalised else None
    image = sample.image if scale is None else (sample.image - low) / np.float32(scale)
    out = pipeline(image=image, mask=sample.mask.astype(np.uint8), region=region.astype(np.uint8))
    image = np.clip(out["image"], 0.0, None) if scale is not None or (low >= 0 and not normalised) else out["image"]
    if scale is not None:
        image = image * np.float32(scale) + np.float32(low)
    return replace(sample, image=image.astype(np.float32), mask=out["mask"].astype(np.int64),
                   region=out["region"].astype(bool))


def random_patch(sample: Sample, size: int, rng: np.random.Generator, foreground_p: float = 0.33,
                 fill: np.ndarray | float = 0.0, within_region: bool = False) -> Sample:
    """A ``size x size`` crop; with probability ``foreground_p`` centred on a random foreground pixel (nnU-Net
    style oversampling), else anywhere (``within_region``: centred on a random pixel of the region, so that a
    partial label's crops hold labelled pixels). Images smaller than the patch are padded with ``fill`` (per
    channel; the image mean is zero after z-scoring, as inference pads), and the padding is outside the region."""
    image, mask = sample.image, sample.mask
    region = sample.region if sample.region is not None else np.ones(mask.shape, bool)
    height, width = mask.shape
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    if pad_h or pad_w:
        top, left = pad_h // 2, pad_w // 2
        spec = ((top, pad_h - top), (left, pad_w - left))
        image = np.pad(image - fill, (*spec, (0, 0))) + fill
        mask = np.pad(mask, spec)
        region = np.pad(region, spec)
        height, width = mask.shape
    if foreground_p > 0 and rng.random() < foreground_p and (mask > 0).any():
        y0, x0 = _centred(mask > 0, size, rng)
    elif within_region and region.any():
        y0, x0 = _centred(region, size, rng)
    else:
        y0, x0 = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    window = (slice(y0, y0 + size), slice(x0, x0 + size))
    return Sample(sample.id, image[window], mask[window], region[window])


def _centred(candidates: np.ndarray, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """The top-left corner of a ``size x size`` window centred on a random pixel of ``candidates`` (``H x W``
    bool), kept inside the image."""
    ys, xs = np.nonzero(candidates)
    pick = rng.integers(len(ys))
    height, width = candidates.shape
    return int(np.clip(ys[pick] - size // 2, 0, height - size)), int(np.clip(xs[pick] - size // 2, 0, width - size))


def resize_sample(sample: Sample, size: int) -> Sample:
    """Resize image (bilinear, as prediction resizes), mask and region (nearest, centre-aligned) to
    ``size x size``."""
    image = cv2.resize(sample.image, (size, size), interpolation=cv2.INTER_LINEAR).reshape(size, size, -1)
    mask = cv2.resize(sample.mask.astype(np.uint8), (size, size), interpolation=LABEL_INTERPOLATION)
    region = None
    if sample.region is not None:
        region = cv2.resize(sample.region.astype(np.uint8), (size, size), interpolation=LABEL_INTERPOLATION) > 0
    return Sample(sample.id, image.astype(np.float32), mask.astype(np.int64), region)


def resampled_shape(shape: tuple[int, int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, int]:
    """``H x W`` of an image of ``shape`` at ``spacing`` (mm) resampled to ``target``; unchanged within 1%."""
    if all(abs(s - t) <= 0.01 * t for s, t in zip(spacing, target)):
        return shape[0], shape[1]
    return (max(1, round(shape[0] * spacing[0] / target[0])), max(1, round(shape[1] * spacing[1] / target[1])))


def resize_image(image: np.ndarray, size: tuple[int, int], interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """An ``H x W x C`` float array resized to ``size`` (``H x W``), any number of channels."""
    if image.shape[:2] == tuple(size):
        return image
    height, width = size
    planes = [cv2.resize(np.ascontiguousarray(image[..., c]), (width, height), interpolation=interpolation)
              for c in range(image.shape[2])]
    return np.stack(planes, axis=2).astype(image.dtype, copy=False)


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """``H x W`` of an image of ``shape`` resampled by ``scale``."""
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def resample_sample(sample: Sample, target: Sequence[float]) -> Sample:
    """A volume's slice resampled from its spacing to ``target`` (mm); samples without a spacing are returned as
    they are."""
    if sample.spacing is None:
        return sample
    size = resampled_shape(sample.image.shape[:2], sample.spacing, target)
    if size == sample.image.shape[:2]:
        return sample
    return replace(_resized(sample, size), spacing=(float(target[0]), float(target[1])))


def rescale_sample(sample: Sample, scale: float) -> Sample:
    """A 2D image (and its mask and region) resampled by ``scale``; a volume's slice (it has a spacing, and
    :func:`resample_sample` resamples it) is returned as it is."""
    if sample.spacing is not None:
        return sample
    return _resized(sample, scaled_shape(sample.image.shape[:2], scale))


def _resized(sample: Sample, size: tuple[int, int]) -> Sample:
    """The image resampled to ``size`` with a smooth (cubic) interpolator, the mask, region and labelled pixels
    nearest-neighbour."""
    if size == sample.image.shape[:2]:
        return sample

    def nearest(part: np.ndarray | None) -> np.ndarray | None:
        return None if part is None else resize_image(part[..., None].astype(np.uint8), size,
                                                      LABEL_INTERPOLATION)[..., 0]

    image = resize_image(sample.image, size, IMAGE_RESAMPLING)
    mask, region, labelled = (nearest(part) for part in (sample.mask, sample.region, sample.labelled))
    return replace(sample, image=image, mask=None if mask is None else mask.astype(np.int64),
                   region=None if region is None else region > 0, labelled=None if labelled is None else labelled > 0)

"""What a dataset looks like, measured once: sizes, channels, intensities, foreground, objects and how thin they
are, and whether images have an up/down orientation. The plan chooses a recipe from it; runs record it."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from pydantic import ConfigDict
from scipy import ndimage

from medseg.data.datasets import Item, Sample
from medseg.errors import MedsegError
from medseg.files import atomic_write_json
from medseg.typed_file import TypedFile

MAX_SAMPLES = 32  # the fingerprint measures at most this many images, spread over the dataset
CT_PERCENTILES = (0.5, 99.5)  # the foreground's intensity range the CT scheme clips to (nnU-Net's)


@dataclass(frozen=True)
class Fingerprint:
    """Dataset statistics (sizes in pixels, intensities in reader scale [0, 1], measured inside the region where
    one is given; objects on dense masks only). Medians are over images unless the name says otherwise."""

    __pydantic_config__ = ConfigDict(extra="forbid")
    n_images: int
    n_classes: int
    channels: int
    height: tuple[int, int, int]  # min, median, max
    width: tuple[int, int, int]
    intensity_mean: tuple[float, ...]  # per channel, pooled over images
    intensity_std: tuple[float, ...]
    intensity_p01: tuple[float, ...]  # 1st / 99th percentile, per channel
    intensity_p99: tuple[float, ...]
    foreground_fraction: float  # mean over images of the foreground share of each image
    class_fractions: tuple[float, ...]  # pooled share of each class, background first
    empty_mask_share: float  # images with no foreground
    components_per_image: float  # median count of connected foreground objects
    component_area: float  # median object area over all objects, in pixels
    component_area_share: float  # median object area over image area
    foreground_width: float  # median width of foreground structures (twice the distance transform on ridges), px
    background_width: float  # the same for the background between them (thin membranes are background in EM)
    region_fraction: float  # mean share of pixels inside the region (1 without regions)
    updown_contrast: float  # mean(top half) - mean(bottom half), in per-image std units, averaged over images
    leftright_contrast: float  # the same for left minus right: a control (~0 for most modalities)
    volumes: VolumeFacts | None = None  # volumes listed as slices: their shapes and spacings
    # rows, columns: mean sign of the offset from each foreground class's centroid to the next's, over images
    # holding both: +-1 when classes sit in a fixed order along that axis
    class_layout: tuple[float, float] = (0.0, 0.0)
    # median width (px) of each foreground class's own structures, class 1 first (0 where a class never shows): a
    # thin ring around a large blob is thin, however wide the union of the classes is
    class_widths: tuple[float, ...] = ()
    # the width (px) below which objects hold 90% of the foreground area (per class): how wide the large objects
    # are, with specks counting by their few pixels
    object_width: float = 0.0
    # images whose masks leave pixels unlabelled: their class shares count, but objects (sizes, widths, counts,
    # layout) and the foreground fraction are measured on the dense masks only
    n_partial: int = 0
    modalities: tuple[str, ...] = ()  # per channel, as dataset.json or the DICOM headers name it ("" unknown)
    zero_share: tuple[float, ...] = ()  # per channel: the share of pixels exactly 0 (a masked background)
    # per channel, over the foreground pixels of the dense masks, in stored units: 0.5th and 99.5th percentiles,
    # mean and standard deviation (the CT scheme's statistics)
    foreground_intensity: tuple[tuple[float, float, float, float], ...] = ()

    @property
    def n_dense(self) -> int:
        return self.n_images - self.n_partial

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "Fingerprint":
        return TypedFile(cls, "fingerprint").load(path)


@dataclass(frozen=True)
class VolumeFacts:
    """What the volumes of a dataset (listed as 2D slices) look like: medians over cases, in voxels and mm."""

    __pydantic_config__ = ConfigDict(extra="forbid")
    n_cases: int
    shape: tuple[int, int, int]  # median voxel shape
    spacing: tuple[float, float, float]  # median spacing per voxel axis, mm
    anisotropy: float  # coarsest over finest median spacing
    slice_axis: int  # the axis slices are taken along (the items' axis)


def volume_facts(items: Sequence[Item]) -> VolumeFacts | None:
    """Shapes and spacings of the volumes behind ``items`` (headers only); None when no item is a volume's slice."""
    from medseg.data.readers import volume_info

    cases = {item.case: item for item in items if item.case is not None}
    if not cases:
        return None
    infos = [volume_info(item.image) for item in cases.values()]
    shape = np.median([info.shape for info in infos], axis=0)
    spacing = np.median([info.spacing for info in infos], axis=0)
    axes = Counter(item.slice.axis for item in cases.values())
    return VolumeFacts(len(cases), tuple(int(v) for v in shape), tuple(round(float(v), 4) for v in spacing),
                       round(float(spacing.max() / max(spacing.min(), 1e-6)), 2), int(axes.most_common(1)[0][0]))


def structure_widths(mask: np.ndarray) -> np.ndarray:
    """Local widths (px) of the foreground of a boolean mask: twice the distance to the background on ridge
    pixels (local maxima of the distance transform), so a line of width w gives ~w and a disk its diameter."""
    return _widths(mask)[0]


def object_widths(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The width (px) of each connected object of a boolean mask, the diameter of the largest disk inside it, and
    its area (px)."""
    return _widths(mask)[1:]


def _widths(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not mask.any():
        return np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    ridge = mask & (distance >= ndimage.maximum_filter(distance, size=3))
    labels, count = ndimage.label(mask)
    largest = np.asarray(ndimage.maximum(distance, labels, np.arange(1, count + 1)), np.float32)
    return (2 * distance[ridge] - 1).astype(np.float32), 2 * largest - 1, np.bincount(labels.ravel())[1:]


def area_percentile(widths: np.ndarray, areas: np.ndarray, share: float) -> float:
    """The width below which objects hold ``share`` of the total area."""
    if not widths.size:
        return 0.0
    order = np.argsort(widths)
    cumulative = np.cumsum(areas[order]) / areas.sum()
    return float(widths[order][min(np.searchsorted(cumulative, share), widths.size - 1)])


def _profile_contrast(image: np.ndarray, region: np.ndarray | None, axis: int) -> float:
    """Mean of the first half minus the second half of the image along ``axis``, in units of the image's std."""
    grey = image.mean(axis=2)
    weight = region.astype(np.float32) if region is not None else np.ones_like(grey)
    std = float(grey[weight > 0].std()) if (weight > 0).any() else 0.0
    if std < 1e-6:
        return 0.0
    half = grey.shape[axis] // 2
    first, second = np.split(np.arange(grey.shape[axis]), [half])
    means = []
    for part in (first, second):
        g, w = np.take(grey, part, axis=axis), np.take(weight, part, axis=axis)
        means.append(float((g * w).sum() / max(w.sum(), 1.0)))
    return (means[0] - means[1]) / std


def _class_offsets(mask: np.ndarray, n_classes: int) -> list[np.ndarray]:
    """The sign (rows, columns) of the offset from each foreground class's centroid to each later class's, for
    the classes present in ``mask`` (offsets under a pixel count as 0)."""
    centroids = {cls: np.argwhere(mask == cls).mean(axis=0) for cls in range(1, n_classes) if (mask == cls).any()}
    present = sorted(centroids)
    return [np.sign(np.round(centroids[b] - centroids[a])) for i, a in enumerate(present) for b in present[i + 1:]]


class _Accumulator:
    """Running sums for :func:`compute_fingerprint`."""

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes
        self.heights: list[int] = []
        self.widths: list[int] = []
        self.channels: set[int] = set()
        self.pixel_sum = self.pixel_sq = self.pixel_n = 0.0
        self.percentile_samples: list[np.ndarray] = []
        self.foreground: list[float] = []
        self.class_counts = np.zeros(n_classes, np.float64)
        self.components: list[int] = []
        self.areas: list[float] = []
        self.area_shares: list[float] = []
        self.foreground_widths: list[np.ndarray] = []
        self.class_widths: list[list[np.ndarray]] = [[] for _ in range(1, n_classes)]
        self.object_widths: list[np.ndarray] = []
        self.object_areas: list[np.ndarray] = []
        self.background_widths: list[np.ndarray] = []
        self.regions: list[float] = []
        self.updown: list[float] = []
        self.leftright: list[float] = []
        self.layout: list[np.ndarray] = []
        self.partial = 0
        self.zeros = self.pixels = 0.0
        self.foreground_samples: list[np.ndarray] = []
        self.foreground_sum = self.foreground_sq = self.foreground_n = 0.0
        self.rng = np.random.default_rng(0)

    def add(self, sample: Sample) -> None:
        image, mask, region = sample.image, sample.mask, sample.region
        height, width = mask.shape
        self.heights.append(height)
        self.widths.append(width)
        self.channels.add(image.shape[2])
        inside = image[region] if region is not None else image.reshape(-1, image.shape[2])
        self.pixel_sum = self.pixel_sum + inside.sum(axis=0, dtype=np.float64)
        self.pixel_sq = self.pixel_sq + (inside.astype(np.float64) ** 2).sum(axis=0)
        self.pixel_n += inside.shape[0]
        self.percentile_samples.append(inside[self.rng.integers(0, inside.shape[0], min(10_000, inside.shape[0]))])
        self.zeros = self.zeros + (inside == 0).sum(axis=0)
        self.pixels += inside.shape[0]
        counted_pixels = sample.counted()
        counted = mask[counted_pixels] if counted_pixels is not None else mask.ravel()
        self.class_counts += np.bincount(counted.ravel(), minlength=self.n_classes)[: self.n_classes]
        self.regions.append(float(region.mean()) if region is not None else 1.0)
        self.updown.append(_profile_contrast(image, region, axis=0))
        self.leftright.append(_profile_contrast(image, region, axis=1))
        if sample.partial:  # an unlabelled pixel may belong to any object: objects are measured on dense masks
            self.partial += 1
            return
        self.foreground.append(float((counted > 0).mean()) if counted.size else 0.0)
        foreground = mask > 0
        self._add_foreground(image[foreground & (region if region is not None else True)])
        labels, count = ndimage.label(foreground)
        self.components.append(count)
        if count:
            sizes = np.bincount(labels.ravel())[1:]
            self.areas += sizes.tolist()
            self.area_shares += (sizes / mask.size).tolist()
        per_class = [_widths(mask == cls) for cls in range(1, self.n_classes)]
        for widths, (ridges, objects, areas) in zip(self.class_widths, per_class):
            widths.append(ridges)
            self.object_widths.append(objects)
            self.object_areas.append(areas)
        self.foreground_widths.append(per_class[0][0] if self.n_classes == 2 else structure_widths(foreground))
        background = ~foreground if region is None else ~foreground & region
        self.background_widths.append(structure_widths(background))
        self.layout += _class_offsets(mask, self.n_classes)

    def _add_foreground(self, values: np.ndarray) -> None:
        """Pooled sums and a sample of the foreground's intensities (``N x C``)."""
        if not values.size:
            return
        self.foreground_sum = self.foreground_sum + values.sum(axis=0, dtype=np.float64)
        self.foreground_sq = self.foreground_sq + (values.astype(np.float64) ** 2).sum(axis=0)
        self.foreground_n += values.shape[0]
        self.foreground_samples.append(values[self.rng.integers(0, values.shape[0], min(10_000, values.shape[0]))])

    def _foreground_intensity(self) -> tuple[tuple[float, float, float, float], ...]:
        if not self.foreground_n:
            return ()
        pooled = np.concatenate(self.foreground_samples)
        low, high = np.percentile(pooled, CT_PERCENTILES, axis=0)
        mean = self.foreground_sum / self.foreground_n
        std = np.sqrt(np.maximum(self.foreground_sq / self.foreground_n - mean**2, 0))
        return tuple(tuple(round(float(v), 4) for v in values) for values in zip(low, high, mean, std))

    def result(self) -> Fingerprint:
        if not self.heights:
            raise MedsegError("fingerprint", "no labelled images to measure")
        if len(self.channels) > 1:
            raise MedsegError("fingerprint", f"images have different channel counts {sorted(self.channels)}")
        mean = self.pixel_sum / self.pixel_n
        std = np.sqrt(np.maximum(self.pixel_sq / self.pixel_n - mean**2, 0))
        pooled = np.concatenate(self.percentile_samples)

        def median_width(parts: list[np.ndarray]) -> float:
            widths = np.concatenate(parts) if parts else np.zeros(0)
            return round(float(np.median(widths)), 2) if widths.size else 0.0

        def spread(values: list[int]) -> tuple[int, int, int]:
            return int(min(values)), int(np.median(values)), int(max(values))

        def rounded(values: Iterable[float], digits: int = 4) -> tuple[float, ...]:
            return tuple(round(float(v), digits) for v in values)

        return Fingerprint(
            n_images=len(self.heights), n_classes=self.n_classes, channels=self.channels.pop(),
            height=spread(self.heights), width=spread(self.widths),
            intensity_mean=rounded(mean), intensity_std=rounded(std),
            intensity_p01=rounded(np.percentile(pooled, 1, axis=0)),
            intensity_p99=rounded(np.percentile(pooled, 99, axis=0)),
            foreground_fraction=round(float(np.mean(self.foreground)), 5) if self.foreground else 0.0,
            class_fractions=rounded(self.class_counts / max(self.class_counts.sum(), 1), 5),
            empty_mask_share=round(float(np.mean([c == 0 for c in self.components])), 4) if self.components else 0.0,
            components_per_image=float(np.median(self.components)) if self.components else 0.0,
            component_area=float(np.median(self.areas)) if self.areas else 0.0,
            component_area_share=round(float(np.median(self.area_shares)), 5) if self.area_shares else 0.0,
            foreground_width=median_width(self.foreground_widths),
            background_width=median_width(self.background_widths),
            region_fraction=round(float(np.mean(self.regions)), 4),
            updown_contrast=round(float(np.mean(self.updown)), 3),
            leftright_contrast=round(float(np.mean(self.leftright)), 3),
            class_layout=rounded(np.mean(self.layout, axis=0), 3) if self.layout else (0.0, 0.0),
            class_widths=tuple(median_width(parts) for parts in self.class_widths),
            object_width=round(area_percentile(np.concatenate(self.object_widths or [np.zeros(0)]),
                                               np.concatenate(self.object_areas or [np.zeros(0)]), 0.9), 2),
            n_partial=self.partial,
            zero_share=tuple(round(float(z) / max(self.pixels, 1), 4) for z in np.atleast_1d(self.zeros)),
            foreground_intensity=self._foreground_intensity(),
        )


def compute_fingerprint(samples: Iterable[Sample], n_classes: int, volumes: VolumeFacts | None = None,
                        modalities: tuple[str, ...] = ()) -> Fingerprint:
    """The fingerprint of labelled samples (each decoded once, by the caller), with the ``volumes`` they come
    from and their channels' ``modalities``."""
    accumulator = _Accumulator(n_classes)
    for sample in samples:
        if sample.mask is None:
            raise MedsegError(sample.id, "has no mask; the fingerprint needs labelled images")
        accumulator.add(sample)
    return replace(accumulator.result(), volumes=volumes, modalities=modalities)


def dataset_hash(items: Iterable[Item]) -> str:
    """A short hash of items (ids, file names, pages or slice indices, sizes): the same files give the same hash
    wherever the dataset lives."""
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda i: i.id):
        for path in (item.image, *item.more_channels, *item.masks):
            index = item.page if item.slice is None else item.slice.index
            digest.update(f"{item.id}|{path.name}|{index}|{path.stat().st_size};".encode())
    return digest.hexdigest()[:16]



def spread(n: int, k: int = MAX_SAMPLES) -> list[int]:
    """Up to ``k`` indices spread evenly over ``range(n)``."""
    return sorted(set(np.linspace(0, n - 1, min(n, k)).round().astype(int).tolist())) if n else []

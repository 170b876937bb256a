"""Decoded samples for training and validation: a bounded in-memory cache over a dataset's items, the seeded
per-epoch sample keys, and the patch dataset that crops and augments one sample per key."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset

from medseg.config import AugmentConfig, DataConfig, Normalization
from medseg.data.datasets import Item, Sample, load_sample
from medseg.data.readers import Reader
from medseg.data.intensity import jitter, nonzero_channels, normalize, statistics
from medseg.data.transforms import (augment, build_augmentation, random_patch, resample_sample, rescale_sample,
                                    resize_sample)
from medseg.errors import MedsegError
from medseg.log import get_logger


@dataclass(frozen=True)
class _Compact:
    """A sample as stored in the cache: 8-bit sources as uint8 (exact), masks as uint8 class ids."""

    image: np.ndarray
    divisor: float  # the image in reader scale is image / divisor
    mask: np.ndarray
    region: np.ndarray | None
    statistics: tuple[np.ndarray, np.ndarray] | None
    spacing: tuple[float, float] | None
    labelled: np.ndarray | None

    @classmethod
    def of(cls, sample: Sample) -> "_Compact":
        image, divisor = sample.image, 1.0
        as_8_bit = np.rint(image * 255)
        in_unit_range = image.min(initial=0) >= 0 and image.max(initial=0) <= 1
        if in_unit_range and np.array_equal(as_8_bit.astype(np.float32) / 255, image):
            image, divisor = as_8_bit.astype(np.uint8), 255.0
        return cls(image, divisor, sample.mask.astype(np.uint8), sample.region, sample.statistics, sample.spacing,
                   sample.labelled)

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + self.mask.nbytes + sum(part.nbytes for part in (self.region, self.labelled)
                                                          if part is not None)

    def sample(self, item_id: str) -> Sample:
        image = self.image.astype(np.float32)
        if self.divisor != 1.0:
            image /= np.float32(self.divisor)
        return Sample(item_id, image, self.mask.astype(np.int64), self.region, self.statistics, self.spacing,
                      self.labelled)


class SampleStore:
    """The decoded samples of a list of labelled items (volumes' slices resampled to ``spacing``, 2D images by
    ``scale``, where given).

    Every item is decoded once up front (so a broken file stops the run before training starts). Samples stay in
    memory, compactly, until ``cache_gb`` is used; the rest are decoded again on demand through the store's own
    :class:`Reader` (TIFF stacks stay open, so a frame costs one page read). Memory is bounded by ``cache_gb``
    plus one sample.
    """

    def __init__(self, items: list[Item], channels: int | None, n_classes: int, cache_gb: float,
                 spacing: tuple[float, float] | None = None, scale: float | None = None,
                 normalize: Normalization | list[Normalization] = "zscore") -> None:
        self.items, self.channels, self.n_classes, self.spacing = items, channels, n_classes, spacing
        self.scale, self.normalize = scale, normalize
        self.reader = Reader()
        self._cache: dict[int, _Compact] = {}
        self.shapes: list[tuple[int, int]] = []  # H x W of every sample
        self.statistics: list[tuple[np.ndarray, np.ndarray]] = []  # per-channel mean and std of every image
        self.foreground_slices: dict[str, list[int]] = {}  # per volume: the indices of its slices with foreground
        budget, used = cache_gb * 2**30, 0
        for index, item in enumerate(items):
            sample = self.load(index)
            self.shapes.append(sample.mask.shape)
            if item.case is not None and (sample.mask > 0).any():
                self.foreground_slices.setdefault(item.case, []).append(index)
            self.statistics.append(sample.statistics if sample.statistics is not None else
                                   statistics(sample.image, nonzero_channels(normalize, sample.image.shape[2])))
            compact = _Compact.of(sample)
            if used + compact.nbytes <= budget:
                self._cache[index] = compact
                used += compact.nbytes
        if len(self._cache) < len(items):
            get_logger().info("data.cache_gb=%.1f holds %d of %d images; the rest are read from disk when used",
                              cache_gb, len(self._cache), len(items))

    def load(self, index: int) -> Sample:
        """Decode item ``index`` from disk (a volume's slice resampled to ``spacing``, a 2D image by ``scale``)."""
        item = self.items[index]
        sample = load_sample(item, self.channels, self.n_classes, self.reader, self.normalize)
        if sample.mask is None:
            raise MedsegError(item.image, "no mask for this image (needed for training and validation)")
        if self.spacing is not None:
            sample = resample_sample(sample, self.spacing)
        return rescale_sample(sample, self.scale) if self.scale is not None else sample

    @property
    def cached(self) -> int:
        return len(self._cache)

    def __len__(self) -> int:
        return len(self.items)

    def foreground_slice(self, index: int, rng: np.random.Generator) -> int:
        """A random slice with foreground of the volume that item ``index`` belongs to (``index`` itself for a 2D
        image or a volume without foreground)."""
        slices = self.foreground_slices.get(self.items[index].case or "", [])
        return slices[int(rng.integers(len(slices)))] if slices else index

    def __getitem__(self, index: int) -> Sample:
        compact = self._cache.get(index)
        return compact.sample(self.items[index].id) if compact is not None else self.load(index)


def batch_seconds(items: list[Item], data: DataConfig, augmentation: AugmentConfig, channels: int, n_classes: int,
                  batch_size: int) -> float:
    """Seconds the training process spends preparing one batch of ``items`` (crop or resize, augmentation,
    normalisation), timed on a second batch once the first has decoded and cached the samples."""
    import time

    store = SampleStore(items, channels, n_classes, data.cache_gb, data.spacing, data.scale, data.normalize)
    dataset = PatchDataset(store, data, augmentation, epoch_keys(len(store), 2, batch_size, 0, 0))
    for position in range(batch_size):
        dataset[position]
    started = time.perf_counter()
    for position in range(batch_size, 2 * batch_size):
        dataset[position]
    return time.perf_counter() - started


def epoch_keys(n_items: int, steps: int, batch_size: int, seed: int, epoch: int) -> list[tuple[int, int]]:
    """The ``(index, sample_seed)`` keys of one epoch: seeded reshuffled passes over the items."""
    rng = np.random.default_rng([seed, epoch])
    needed = steps * batch_size
    indices = np.concatenate([rng.permutation(n_items) for _ in range(math.ceil(needed / n_items))])[:needed]
    seeds = rng.integers(0, 2**31, size=needed)
    return list(zip(indices.tolist(), seeds.tolist()))


class PatchDataset(Dataset):
    """Training examples, one per ``(index, seed)`` key; the key fixes crop and augmentation, so a resumed run
    sees exactly the examples the uninterrupted run would have. A volume's slice is swapped, with probability
    ``foreground_p``, for one of the same volume that holds foreground (nnU-Net's oversampling, for slices). A
    partial label's crops are centred on its labelled pixels, and only they count (``region``).
    Returns ``image`` float32 ``C x P x P``, ``mask`` int64 ``P x P`` and ``region`` bool ``P x P``."""

    def __init__(self, store: SampleStore, data: DataConfig, augmentation: AugmentConfig,
                 keys: list[tuple[int, int]]) -> None:
        self.store, self.data, self.keys, self.augmentation = store, data, keys, augmentation
        self.pipeline = build_augmentation(augmentation)
        self.spatial = build_augmentation(augmentation, intensity=False)  # a volume's slice: jittered apart

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        index, seed = self.keys[position]
        rng = np.random.default_rng(seed)
        if self.store.items[index].case is not None and rng.random() < self.data.foreground_p:
            index = self.store.foreground_slice(index, rng)
        sample = self.store[index]
        partial = sample.partial
        sample = replace(sample, region=sample.counted(), labelled=None)
        if self.data.resize:
            sample = resize_sample(sample, self.data.resize)
        elif self.data.patch_size:
            sample = random_patch(sample, self.data.patch_size, rng, self.data.foreground_p,
                                  self.store.statistics[index][0].reshape(-1), within_region=partial)
        seed, stats = int(rng.integers(2**31)), self.store.statistics[index]
        if sample.statistics is None:  # a 2D image: augmented in [0, 1], then normalised
            sample = augment(self.pipeline, sample, seed)
            image = normalize(sample.image, self.data.normalize, stats, self.data.intensity)
        else:  # a volume's slice: normalised, then its intensities augmented in normalised units
            sample = replace(sample, image=normalize(sample.image, self.data.normalize, stats, self.data.intensity))
            sample = augment(self.spatial, sample, seed, normalised=True)
            image = jitter(sample.image, self.augmentation, np.random.default_rng(seed))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(sample.mask),
            "region": torch.from_numpy(sample.region),
        }

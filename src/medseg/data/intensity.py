"""How intensities become the network's input: a normalisation scheme per channel, planned from the modality, and
the intensity augmentation of volumes in normalised units.

Schemes (``data.normalize``: one for every channel, or a list with one per channel):

- ``zscore``: zero mean, unit variance with the statistics of the whole image, or of a volume's whole case (as
  nnU-Net: a crop or a slice is scaled as in its image);
- ``nonzero``: the same over the case's nonzero voxels only, its zeros kept at 0 (skull-stripped MR, whose
  background is exactly 0, as nnU-Net's ``use_mask_for_norm``);
- ``ct``: Hounsfield units clipped to the foreground's 0.5-99.5 percentiles and z-scored with the foreground's
  mean and standard deviation over the dataset (``data.intensity``: ``[low, high, mean, std]`` per channel), the
  same numbers for every case, as nnU-Net's CT scheme;
- ``unit``: the reader's [0, 1], as it is.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medseg.config import AugmentConfig, Normalization
from medseg.errors import MedsegError

NORMALISED_RANGE = 3.0  # gamma acts on [-3, 3] standard deviations mapped to [0, 1]; the rest passes through

Schemes = Normalization | Sequence[Normalization]
Intensity = Sequence[Sequence[float] | None] | None


def channel_schemes(mode: Schemes, channels: int) -> tuple[Normalization, ...]:
    """The scheme of each of ``channels`` channels."""
    if isinstance(mode, str):
        return (mode,) * channels
    if len(mode) != channels:
        raise MedsegError("data.normalize", f"{len(mode)} schemes for {channels} channels")
    return tuple(mode)


def nonzero_channels(mode: Schemes, channels: int) -> tuple[bool, ...]:
    """Which channels take their statistics over nonzero voxels."""
    return tuple(scheme == "nonzero" for scheme in channel_schemes(mode, channels))


def statistics(image: np.ndarray, nonzero: Sequence[bool] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (shapes ``1 x 1 x C``) of an image or volume with channels last,
    over its nonzero values in the ``nonzero`` channels (all values where a channel has none)."""
    values = image.reshape(-1, image.shape[-1])
    means, stds = values.mean(axis=0), values.std(axis=0)
    for channel, masked in enumerate(nonzero):
        kept = values[:, channel][values[:, channel] != 0] if masked else None
        if kept is not None and kept.size:
            means[channel], stds[channel] = kept.mean(), kept.std()
    return means.reshape(1, 1, -1), stds.reshape(1, 1, -1)


def normalize(image: np.ndarray, mode: Schemes, stats: tuple[np.ndarray, np.ndarray] | None = None,
              intensity: Intensity = None) -> np.ndarray:
    """An ``H x W x C`` image normalised channel by channel as ``mode`` says, with the whole image's (or case's)
    ``stats`` where given (else the image's own) and the dataset's CT ``intensity``."""
    schemes = channel_schemes(mode, image.shape[2])
    if set(schemes) == {"unit"}:
        return image.astype(np.float32)
    if set(schemes) == {"zscore"}:
        mean, std = stats if stats is not None else statistics(image)
        return ((image - mean) / np.maximum(std, 1e-6)).astype(np.float32)
    mean, std = stats if stats is not None else statistics(image, [s == "nonzero" for s in schemes])
    out = np.empty(image.shape, np.float32)
    for channel, scheme in enumerate(schemes):
        values = image[..., channel]
        if scheme == "unit":
            out[..., channel] = values
        elif scheme == "ct":
            if intensity is None or intensity[channel] is None:
                raise MedsegError("data.intensity", f"channel {channel} is normalised as CT but has no intensity "
                                                    "statistics ([low, high, mean, std])")
            low, high, centre, spread = intensity[channel]
            out[..., channel] = (np.clip(values, low, high) - centre) / max(spread, 1e-6)
        else:
            out[..., channel] = (values - mean[0, 0, channel]) / max(float(std[0, 0, channel]), 1e-6)
            if scheme == "nonzero":
                out[..., channel][values == 0] = 0
    return out


def jitter(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and gamma of a normalised image in normalised units (standard deviations), so their
    strength is the same whatever a case's padding or range: a shift of up to ``brightness`` std, a contrast
    factor within ``1 +- contrast`` around the mean, and gamma within ``1 +- gamma`` on +-3 std mapped to [0, 1]
    (values beyond pass through, shifted alike)."""
    out = image
    if config.intensity_p and rng.random() < config.intensity_p:
        out = out * rng.uniform(1 - config.contrast, 1 + config.contrast) + rng.uniform(-config.brightness,
                                                                                        config.brightness)
    if config.gamma_p and rng.random() < config.gamma_p:
        inside = np.clip(out, -NORMALISED_RANGE, NORMALISED_RANGE)
        unit = (inside + NORMALISED_RANGE) / (2 * NORMALISED_RANGE)
        gamma = rng.uniform(1 - config.gamma, 1 + config.gamma)
        out = out - inside + unit ** gamma * (2 * NORMALISED_RANGE) - NORMALISED_RANGE
    return out.astype(np.float32)

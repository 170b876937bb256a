"""Sliding-window inference, and nothing else: an image of any size -> Gaussian-blended tiles through a forward
function -> logits of the whole image.

Only the input image, the ``K x H x W`` output and a constant number of tiles are in memory: the blend normaliser is
the outer product of two 1-D sums, so no ``H x W`` weight map is built.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

Forward = Callable[[torch.Tensor], torch.Tensor]  # N x C x h x w -> logits N x K x h x w


def gaussian_importance(length: int, sigma_scale: float = 0.125) -> torch.Tensor:
    """1-D Gaussian weights over a tile (sigma = length/8, as nnU-Net), max 1, floored so every pixel counts."""
    xs = torch.arange(length, dtype=torch.float32) - (length - 1) / 2
    weights = torch.exp(-0.5 * (xs / max(length * sigma_scale, 1e-3)) ** 2)
    weights = weights / weights.max()
    return weights.clamp_min(max(float(weights[weights > 0].min()), 1e-3))


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles covering ``length`` with at least ``overlap`` overlap, spread evenly."""
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    n = math.ceil((length - tile) / step) + 1
    return sorted({round(i * (length - tile) / (n - 1)) for i in range(n)})


def _weights_1d(length: int, tile: int, starts: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    """The 1-D Gaussian of a tile and the sum of its shifted copies over the image."""
    g = gaussian_importance(tile)
    total = np.zeros(length, np.float32)
    for start in starts:
        total[start : start + tile] += g.numpy()
    return g, total


def sliding_window_logits(forward: Forward, image: np.ndarray, tile: int | None, overlap: float = 0.5,
                          batch_size: int = 4, device: str | torch.device = "cpu") -> np.ndarray:
    """Logits ``K x H x W`` (float32) of a normalised ``H x W x C`` image, by Gaussian-blended tiles of
    ``tile x tile`` (the whole image in one pass if it fits in one tile or ``tile`` is None)."""
    return sliding_window_batch(forward, image[None], tile, overlap, batch_size, device)[0]


@torch.inference_mode()
def sliding_window_batch(forward: Forward, images: np.ndarray, tile: int | None, overlap: float = 0.5,
                         batch_size: int = 4, device: str | torch.device = "cpu") -> np.ndarray:
    """Logits ``N x K x H x W`` of ``N x H x W x C`` same-size images; tiles of every image share forward
    batches of ``batch_size``."""
    count, height, width = images.shape[:3]
    nchw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    if tile is None or (height <= tile and width <= tile):
        parts = [forward(nchw[i : i + batch_size].to(device)).float().cpu() for i in range(0, count, batch_size)]
        return torch.cat(parts).numpy()
    tile_h, tile_w = min(tile, height), min(tile, width)
    starts_y, starts_x = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    gy, total_y = _weights_1d(height, tile_h, starts_y)
    gx, total_x = _weights_1d(width, tile_w, starts_x)
    weights = gy[:, None] * gx[None, :]
    scores: np.ndarray | None = None
    windows = [(n, y, x) for n in range(count) for y in starts_y for x in starts_x]
    for start in range(0, len(windows), batch_size):
        group = windows[start : start + batch_size]
        batch = torch.stack([nchw[n, :, y : y + tile_h, x : x + tile_w] for n, y, x in group]).to(device)
        logits = (forward(batch).float().cpu() * weights).numpy()
        if scores is None:
            scores = np.zeros((count, logits.shape[1], height, width), np.float32)
        for (n, y, x), tile_logits in zip(group, logits):
            scores[n, :, y : y + tile_h, x : x + tile_w] += tile_logits
    scores /= total_y[None, None, :, None]
    scores /= total_x[None, None, None, :]
    return scores

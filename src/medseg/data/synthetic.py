"""A deterministic synthetic dataset in the folder format: low-contrast textured 'cells' (overlapping ellipses with
bright rims and dark nuclei) on an uneven background with grain, noise and bright debris that is not a cell, so a
threshold alone does not segment it. Used by the demo and the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.data.readers import write_array, write_mask
from medseg.files import atomic_write_csv


def synthetic_cell_image(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One ``size x size`` uint8 image and its {0, 1} mask."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    mask = np.zeros((size, size), bool)
    texture = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(3, 9)):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(size * 0.05, size * 0.14, 2)
        angle = rng.uniform(0, np.pi)
        cos, sin = np.cos(angle), np.sin(angle)
        u = ((xs - cx) * cos + (ys - cy) * sin) / rx
        v = (-(xs - cx) * sin + (ys - cy) * cos) / ry
        radius = np.sqrt(u**2 + v**2)
        cell = radius <= 1.0
        mask |= cell
        texture += cell * (0.08 + 0.22 * np.exp(-((radius - 0.9) ** 2) / 0.01) - 0.12 * (radius < 0.35))
    debris = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(4, 12)):
        cy, cx = rng.uniform(0, size, 2)
        debris += 0.35 * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * rng.uniform(1.0, 3.0) ** 2))
    background = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), size / 8)
    background = 0.35 + 0.15 * background / (np.abs(background).max() + 1e-6)
    grain = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 1.0) * 0.12
    image = background + np.clip(texture, -0.2, 0.6) + debris + grain + rng.normal(0, 0.08, (size, size))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask.astype(np.int64)


def make_synthetic_dataset(out: str | Path, n_images: int = 48, size: int = 128, seed: int = 0,
                           val_fraction: float = 1 / 6, test_fraction: float = 1 / 6) -> Path:
    """Write ``out/images``, ``out/masks`` and ``out/split.csv`` (train/val/test by the given fractions)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    n_test = round(n_images * test_fraction)
    n_val = round(n_images * val_fraction)
    rows = []
    for index in range(n_images):
        image, mask = synthetic_cell_image(rng, size)
        item_id = f"cells_{index:03d}"
        write_array(out / "images" / f"{item_id}.png", image)
        write_mask(out / "masks" / f"{item_id}.png", mask)
        split = "test" if index < n_test else "val" if index < n_test + n_val else "train"
        rows.append({"id": item_id, "split": split})
    atomic_write_csv(out / "split.csv", rows)
    return out

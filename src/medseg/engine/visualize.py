"""Pictures of predictions: display scaling, overlays (true positives cyan, false positives red, false negatives
yellow), captioned image grids, and the one matplotlib setup (headless) for every plot medseg draws."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

CLASS_COLOURS = np.array([[0, 0, 0], [0, 200, 255], [255, 200, 0], [200, 0, 255], [0, 255, 100],
                          [255, 80, 80], [120, 120, 255], [255, 255, 255]], np.uint8)
TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE = (0, 200, 255), (255, 40, 40), (255, 220, 0)
ERROR_LEGEND = "TP cyan, FP red, FN yellow"


def to_display(image: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 view of a reader-scale ``H x W x C`` image (contrast-stretched per image)."""
    rgb = image[..., :3] if image.shape[2] >= 3 else np.repeat(image[..., :1], 3, axis=2)
    low, high = np.percentile(rgb, (0.5, 99.5))
    return (np.clip((rgb - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, truth: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """Prediction drawn over the image (``H x W x 3`` uint8). With ``truth``: per pixel, any foreground class,
    true positives cyan, false positives red, false negatives yellow."""
    base = to_display(image).astype(np.float32)
    colour = np.zeros_like(base)
    painted = labels > 0
    if truth is None:
        colour[...] = CLASS_COLOURS[np.minimum(labels, len(CLASS_COLOURS) - 1)]
    else:
        pred, true = labels > 0, truth > 0
        colour[pred & true] = TRUE_POSITIVE
        colour[pred & ~true] = FALSE_POSITIVE
        colour[~pred & true] = FALSE_NEGATIVE
        painted = pred | true
    base[painted] = (1 - alpha) * base[painted] + alpha * colour[painted]
    return base.astype(np.uint8)


@dataclass(frozen=True)
class GridRow:
    """A row of a grid: a title and captioned ``H x W x 3`` uint8 panels."""

    title: str
    panels: list[tuple[str, np.ndarray]]


def image_grid(rows: list[GridRow], tile: int = 160) -> Image.Image:
    """Rows of square panels, each row under its title and each panel under its caption."""
    title_height, caption_height = 14, 14
    columns = max((len(row.panels) for row in rows), default=1)
    row_height = title_height + caption_height + tile
    grid = Image.new("RGB", (columns * tile, max(1, len(rows)) * row_height), "white")
    draw = ImageDraw.Draw(grid)
    for index, row in enumerate(rows):
        top = index * row_height
        draw.text((4, top + 1), row.title, fill="black")
        for col, (caption, picture) in enumerate(row.panels):
            draw.text((col * tile + 3, top + title_height), caption[: tile // 6], fill="black")
            grid.paste(Image.fromarray(picture).resize((tile, tile), Image.NEAREST),
                       (col * tile, top + title_height + caption_height))
    return grid


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pyplot() -> Any:
    """matplotlib's pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    plt = pyplot()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()

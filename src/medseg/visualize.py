"""Pictures of predictions: display scaling, overlays (true positives cyan, false positives red, false negatives
yellow), captioned image grids, the one class colour legend (overlays, served masks, study galleries and the web
page all colour class ``k`` with :func:`class_colour`), and the one matplotlib setup (headless) for every plot
medseg draws."""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

CLASS_COLOURS = np.array([[0, 0, 0], [0, 200, 255], [255, 200, 0], [200, 0, 255], [0, 255, 100],
                          [255, 80, 80], [120, 120, 255], [255, 255, 255]], np.uint8)
TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE = (0, 200, 255), (255, 40, 40), (255, 220, 0)
ERROR_LEGEND = "TP cyan, FP red, FN yellow"


def class_colour(cls: int) -> tuple[int, int, int] | None:
    """The legend colour (RGB) of class id ``cls``: :data:`CLASS_COLOURS`, then hues spread by the golden ratio
    past its end; background (0) has none."""
    if cls <= 0:
        return None
    if cls < len(CLASS_COLOURS):
        return tuple(int(v) for v in CLASS_COLOURS[cls])
    return tuple(round(255 * v) for v in colorsys.hsv_to_rgb((cls * 0.618034) % 1.0, 0.75, 1.0))


def class_palette(n_classes: int) -> np.ndarray:
    """``n_classes x 3`` uint8: row ``k`` is class ``k``'s colour, row 0 (background) black."""
    return np.array([class_colour(k) or (0, 0, 0) for k in range(max(n_classes, 1))], np.uint8)


def label_png(labels: np.ndarray) -> bytes:
    """Class ids ``H x W`` as a palette PNG: each pixel's value is its class id (``numpy.asarray(Image.open(...))``
    gives the ids back) and viewers show it in the legend colours, background transparent."""
    image = Image.fromarray(labels.astype(np.uint8), "L")
    image.putpalette(class_palette(256).tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


def legend_image(class_names: Sequence[str], width: int = 480) -> Image.Image:
    """The legend as a picture for PNGs: a colour swatch and the name of every foreground class, in rows of at
    most ``width`` pixels."""
    entries, row_height = [(class_colour(k), str(name)) for k, name in enumerate(class_names) if k], 16
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sizes = [18 + int(draw.textlength(name)) + 12 for _, name in entries]
    places, x, y = [], 4, 0
    for size in sizes:
        if x > 4 and x + size > width:
            x, y = 4, y + row_height
        places.append((x, y))
        x += size
    legend = Image.new("RGB", (width, y + row_height), "white")
    draw = ImageDraw.Draw(legend)
    for (colour, name), (left, top) in zip(entries, places):
        draw.rectangle((left, top + 3, left + 11, top + 13), fill=colour, outline=(60, 60, 60))
        draw.text((left + 16, top + 2), name, fill="black")
    return legend


def legend_handles(class_names: Sequence[str]) -> list[Any]:
    """The legend for a matplotlib figure (``ax.legend(handles=legend_handles(names))``): a patch per
    foreground class in its colour."""
    from matplotlib.patches import Patch

    return [Patch(facecolor=np.array(class_colour(k)) / 255, edgecolor="0.3", label=str(name))
            for k, name in enumerate(class_names) if k]


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
        colour[...] = class_palette(int(labels.max(initial=0)) + 1)[labels]
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

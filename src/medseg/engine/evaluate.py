"""Evaluation: predict a split of a dataset with a trained model and score it.

Writes ``per_image.csv`` (every metric per image), ``summary.json`` (mean, std and pooled value per metric, the
empty-mask rule, threshold and checkpoint used) and ``overlays.png`` (image | truth | prediction with false
positives red and false negatives yellow) into the output folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from medseg.data.datasets import load_items, load_sample, split_items
from medseg.engine.checkpoint import atomic_write_text, load_model, resolve_weights
from medseg.engine.predict import (InferenceSettings, overlay, postprocess, predict_image, prepare_for_inference,
                                   to_display)
from medseg.errors import MedsegError
from medseg.log import get_logger, progress
from medseg.metrics import EmptyRule, MetricAccumulator


def evaluate(
    weights: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "test",
    fmt: str = "auto",
    empty: EmptyRule = "perfect",
    tta: bool = False,
    device: str = "cpu",
    max_overlays: int = 12,
    postprocess_options: dict[str, Any] | None = None,
    settings_overrides: dict[str, Any] | None = None,
    prune_depth: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``weights`` (a run folder's best model, or a file) on ``split`` of ``data``; returns the summary."""
    log = get_logger()
    checkpoint = resolve_weights(weights)
    model, meta = load_model(checkpoint, device, prune_depth)
    prepare_for_inference(model)  # the same fast path as `medseg predict`
    settings = InferenceSettings.from_meta(meta, tta=tta, device=device, **(settings_overrides or {}))
    items = load_items(data, fmt)
    recorded = meta.get("training_data", {})
    same_data = bool(recorded.get("root")) and Path(recorded["root"]).resolve() == Path(data).resolve()
    if split == "all":
        chosen = items
    elif same_data and f"{split}_ids" in recorded:
        wanted = set(recorded[f"{split}_ids"])
        chosen = [item for item in items if item.id in wanted]
    else:
        chosen = split_items(items).get(split, [])
    if split != "train" and same_data and {i.id for i in chosen} & set(recorded.get("train_ids", [])):
        raise MedsegError(data, f"the {split} split overlaps the model's training images")
    if not chosen:
        raise MedsegError(data, f"the {split!r} split is empty")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    accumulator = MetricAccumulator(n_classes=settings.n_classes, empty=empty)
    panels = []
    for item in progress(chosen, desc="evaluate", unit="img"):
        sample = load_sample(item, settings.channels, settings.n_classes)
        if sample.mask is None:
            raise MedsegError(item.image, "no ground-truth mask to evaluate against")
        labels, _ = predict_image(model, sample.image, settings)
        labels = postprocess(labels, **(postprocess_options or {}))
        row = accumulator.add(item.id, labels, sample.mask, sample.region)
        if len(panels) < max_overlays:
            panels.append((item.id, row["dice"], sample.image, sample.mask, labels))
    rows = accumulator.rows()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "per_image.csv", buffer.getvalue())
    summary = {
        "metrics": accumulator.summary(),
        "n_images": len(rows),
        "split": split,
        "data": str(data),
        "checkpoint": str(checkpoint),
        "checkpoint_epoch": meta.get("epoch"),
        "threshold": settings.threshold,
        "empty_rule": empty,
        "tta": tta,
        "postprocess": postprocess_options or {},
        "prune_depth": prune_depth,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=True))
    overlay_grid(panels).save(out / "overlays.png")
    dice = summary["metrics"]["dice"]
    log.info("%s split: Dice %.4f +/- %.4f (pooled %.4f) over %d images; report in %s", split, dice["mean"],
             dice["std"], dice["pooled"], len(rows), out)
    return summary


def overlay_grid(panels: list[tuple[str, float, np.ndarray, np.ndarray, np.ndarray]], tile: int = 192) -> Image.Image:
    """Rows of image | truth | prediction-vs-truth (TP cyan, FP red, FN yellow), captioned with id and Dice."""
    caption = 16
    grid = Image.new("RGB", (3 * tile, max(1, len(panels)) * (tile + caption)), "white")
    draw = ImageDraw.Draw(grid)
    for row, (item_id, dice, image, truth, labels) in enumerate(panels):
        views = [to_display(image), overlay(image, truth), overlay(image, labels, truth)]
        top = row * (tile + caption)
        for col, view in enumerate(views):
            picture = Image.fromarray(view).resize((tile, tile), Image.NEAREST)
            grid.paste(picture, (col * tile, top + caption))
        text = f"{item_id}  Dice {dice:.3f}" if not math.isnan(dice) else item_id
        draw.text((4, top + 2), f"{text}   [image | truth | prediction: TP cyan, FP red, FN yellow]", fill="black")
    return grid

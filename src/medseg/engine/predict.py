"""Prediction: normalise -> (resize) -> sliding-window logits with Gaussian blending -> (flip TTA) ->
threshold/argmax -> post-processing -> masks, probability maps and overlays on disk.

Works on images of any size: tiles of the training patch size stream through the model, and only the input image
and the output score/weight arrays are held in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch
from scipy import ndimage
from torch import nn

from medseg.data.readers import IMAGE_EXTENSIONS, TIFF_EXTENSIONS, read_image, stack_length, write_array, write_mask
from medseg.data.transforms import normalize
from medseg.engine.checkpoint import load_model, resolve_weights
from medseg.errors import MedsegError
from medseg.log import get_logger, progress


@dataclass
class InferenceSettings:
    """How a model is applied; most fields come from the run's checkpoint metadata."""

    n_classes: int = 2
    channels: int = 1
    normalize: str = "zscore"
    patch_size: int | None = 256
    resize: int | None = None
    overlap: float = 0.5
    batch_size: int = 4
    threshold: float = 0.5
    tta: bool = False
    device: str = "cpu"

    @classmethod
    def from_meta(cls, meta: dict, **overrides) -> "InferenceSettings":
        data = meta.get("data", {})
        settings = cls(
            n_classes=int(data.get("n_classes", 2)),
            channels=int(meta["model"]["in_channels"]),
            normalize=data.get("normalize", "zscore"),
            patch_size=data.get("patch_size"),
            resize=data.get("resize"),
            threshold=float(meta.get("threshold", 0.5)),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(settings, key, value)
        return settings


def gaussian_importance(height: int, width: int, sigma_scale: float = 0.125) -> torch.Tensor:
    """``H x W`` Gaussian weights (sigma = size/8, as nnU-Net), max 1, floored to keep every pixel weighted."""
    ys = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    xs = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    gy = torch.exp(-0.5 * (ys / max(height * sigma_scale, 1e-3)) ** 2)
    gx = torch.exp(-0.5 * (xs / max(width * sigma_scale, 1e-3)) ** 2)
    weights = gy[:, None] * gx[None, :]
    weights = weights / weights.max()
    return weights.clamp_min(max(float(weights[weights > 0].min()), 1e-3))


def _tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    n = math.ceil((length - tile) / step) + 1
    return sorted({round(i * (length - tile) / (n - 1)) for i in range(n)})


def _forward(model: nn.Module, batch: torch.Tensor, tta: bool) -> torch.Tensor:
    logits = model(batch)
    if not tta:
        return logits
    for dims in ((3,), (2,), (2, 3)):
        logits = logits + model(batch.flip(dims)).flip(dims)
    return logits / 4


@torch.inference_mode()
def sliding_window_logits(
    model: nn.Module,
    image: np.ndarray,
    tile: int | None,
    overlap: float = 0.5,
    batch_size: int = 4,
    tta: bool = False,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Logits ``K x H x W`` (float32) of a normalised ``H x W x C`` image, by Gaussian-blended tiles of
    ``tile x tile`` (the whole image in one pass if it fits in one tile or ``tile`` is None)."""
    height, width = image.shape[:2]
    chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if tile is None or (height <= tile and width <= tile):
        return _forward(model, chw[None].to(device), tta)[0].float().cpu().numpy()
    tile_h, tile_w = min(tile, height), min(tile, width)
    weights = gaussian_importance(tile_h, tile_w)
    scores: np.ndarray | None = None
    total_weight = np.zeros((height, width), np.float32)
    windows = [(y, x) for y in _tile_starts(height, tile_h, overlap) for x in _tile_starts(width, tile_w, overlap)]
    for start in range(0, len(windows), batch_size):
        group = windows[start : start + batch_size]
        batch = torch.stack([chw[:, y : y + tile_h, x : x + tile_w] for y, x in group]).to(device)
        logits = (_forward(model, batch, tta).float().cpu() * weights).numpy()
        if scores is None:
            scores = np.zeros((logits.shape[1], height, width), np.float32)
        for (y, x), tile_logits in zip(group, logits):
            scores[:, y : y + tile_h, x : x + tile_w] += tile_logits
            total_weight[y : y + tile_h, x : x + tile_w] += weights.numpy()
    scores /= total_weight
    return scores


def predict_image(model: nn.Module, image: np.ndarray, settings: InferenceSettings) -> tuple[np.ndarray, np.ndarray]:
    """Label map ``H x W`` (int64) and foreground probability (binary, ``H x W``) or class probabilities
    (``K x H x W``) of an ``H x W x C`` image in reader scale [0, 1]."""
    height, width = image.shape[:2]
    x = normalize(image, settings.normalize)
    if settings.resize:
        x = cv2.resize(x, (settings.resize, settings.resize), interpolation=cv2.INTER_LINEAR)
        x = x.reshape(settings.resize, settings.resize, -1)
    logits = sliding_window_logits(model, x, settings.patch_size if not settings.resize else None,
                                   settings.overlap, settings.batch_size, settings.tta, settings.device)
    if settings.resize:
        logits = np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_LINEAR) for c in logits])
    if logits.shape[0] == 1:
        probability = 1.0 / (1.0 + np.exp(-logits[0]))
        return (probability > settings.threshold).astype(np.int64), probability.astype(np.float32)
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    probability = shifted / shifted.sum(axis=0, keepdims=True)
    return logits.argmax(axis=0).astype(np.int64), probability.astype(np.float32)


def postprocess(labels: np.ndarray, largest_component: bool = False, min_size: int = 0,
                fill_holes: bool = False) -> np.ndarray:
    """Per foreground class: keep the largest connected component, drop components under ``min_size`` pixels,
    fill holes."""
    if not (largest_component or min_size or fill_holes):
        return labels
    out = labels.copy()
    for cls in np.unique(labels):
        if cls == 0:
            continue
        region = labels == cls
        components, count = ndimage.label(region)
        if count:
            sizes = np.bincount(components.ravel())[1:]
            keep = np.zeros(count + 1, bool)
            keep[1:] = sizes >= min_size
            if largest_component:
                keep[1:] &= sizes == sizes.max()
            cleaned = keep[components]
        else:
            cleaned = region
        if fill_holes:
            cleaned = ndimage.binary_fill_holes(cleaned)
        out[region & ~cleaned] = 0
        out[cleaned & (out == 0)] = cls
    return out


CLASS_COLOURS = np.array([[0, 0, 0], [0, 200, 255], [255, 200, 0], [200, 0, 255], [0, 255, 100],
                          [255, 80, 80], [120, 120, 255], [255, 255, 255]], np.uint8)


def to_display(image: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 view of a reader-scale image (contrast-stretched per image)."""
    rgb = image[..., :3] if image.shape[2] >= 3 else np.repeat(image[..., :1], 3, axis=2)
    low, high = np.percentile(rgb, (0.5, 99.5))
    return (np.clip((rgb - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, truth: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """Prediction drawn over the image. With ``truth``: true positives cyan, false positives red, false negatives
    yellow (per pixel, any foreground class)."""
    base = to_display(image).astype(np.float32)
    colour = np.zeros_like(base)
    painted = labels > 0
    if truth is None:
        colour[...] = CLASS_COLOURS[np.minimum(labels, len(CLASS_COLOURS) - 1)]
    else:
        pred, true = labels > 0, truth > 0
        colour[pred & true] = (0, 200, 255)
        colour[pred & ~true] = (255, 40, 40)
        colour[~pred & true] = (255, 220, 0)
        painted = pred | true
    base[painted] = (1 - alpha) * base[painted] + alpha * colour[painted]
    return base.astype(np.uint8)


BACKENDS = ("torch", "onnxruntime")


def load_predictor(weights: str | Path, backend: str = "torch", device: str = "cpu",
                   prune_depth: int | None = None) -> tuple[Any, dict]:
    """A callable model and its metadata, for the given backend."""
    from medseg.engine.export import export_model, load_exported

    if backend not in BACKENDS:
        raise MedsegError("--backend", f"unknown backend {backend!r}; choose {' or '.join(BACKENDS)}")
    path = Path(weights)
    if backend == "torch" and path.suffix != ".onnx":
        return load_model(resolve_weights(path), device, prune_depth)
    if path.suffix != ".onnx":
        if prune_depth is not None:
            raise MedsegError("--prune-depth", "pruning applies to the torch backend only")
        checkpoint = resolve_weights(path)
        path = checkpoint.with_suffix(".onnx")
        if not path.is_file() or path.stat().st_mtime < checkpoint.stat().st_mtime:
            export_model(checkpoint, "onnx", path)
    return load_exported(path)


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders expanded to their image files (sorted). Missing or empty inputs are errors."""
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
                           and not p.name.startswith("."))
            if not found:
                raise MedsegError(path, "folder contains no images")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise MedsegError(path, "input not found")
    return files


def _frames(path: Path, channels: int) -> Iterator[tuple[int | None, np.ndarray]]:
    if path.suffix.lower() in TIFF_EXTENSIONS and stack_length(path) > 1:
        for z in range(stack_length(path)):
            yield z, read_image(path, channels, frame=z)
    else:
        yield None, read_image(path, channels)


def predict_paths(
    weights: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    settings_overrides: dict | None = None,
    largest_component: bool = False,
    min_size: int = 0,
    fill_holes: bool = False,
    save_probabilities: bool = False,
    save_overlays: bool = False,
    prune_depth: int | None = None,
    backend: str = "torch",
) -> list[Path]:
    """Predict every input file (TIFF stacks frame by frame, written back as stacks); returns the mask paths.

    ``backend="onnxruntime"`` runs an ONNX export: ``weights`` may be a ``.onnx`` file, or a run folder / checkpoint
    which is exported once (cached beside the checkpoint as ``<name>.onnx``)."""
    log = get_logger()
    device = (settings_overrides or {}).get("device") or "cpu"
    model, meta = load_predictor(weights, backend, device, prune_depth)
    settings = InferenceSettings.from_meta(meta, **(settings_overrides or {}))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = expand_inputs(inputs)
    written = []
    for path in progress(files, desc="predict", unit="img"):
        labels_stack, prob_stack, overlays = [], [], []
        for _, image in _frames(path, settings.channels):
            labels, probability = predict_image(model, image, settings)
            labels = postprocess(labels, largest_component, min_size, fill_holes)
            labels_stack.append(labels)
            prob_stack.append(probability)
            if save_overlays:
                overlays.append(overlay(image, labels))
        is_stack = len(labels_stack) > 1
        suffix = ".tif" if is_stack else ".png"
        mask_path = out / f"{path.stem}{suffix}"
        if is_stack:
            scale = 255 if settings.n_classes == 2 else 1
            write_array(mask_path, (np.stack(labels_stack) * scale).astype(np.uint8), stack=True)
        else:
            write_mask(mask_path, labels_stack[0], settings.n_classes)
        if save_probabilities:
            write_array(out / f"{path.stem}_prob.tif", np.stack(prob_stack) if is_stack else prob_stack[0], stack=is_stack)
        for z, picture in enumerate(overlays):
            write_array(out / f"{path.stem}{f'_{z:03d}' if is_stack else ''}_overlay.png", picture)
        written.append(mask_path)
    log.info("wrote %d mask file(s) to %s", len(written), out)
    return written

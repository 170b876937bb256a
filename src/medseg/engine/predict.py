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


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d in a Sequential into the conv (eval-mode maths,
    identical outputs up to float rounding); the BatchNorm becomes an Identity. In place; returns the model."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (_, conv), (bn_name, bn) in zip(children[:-1], children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
                bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
                with torch.no_grad():
                    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach())
                setattr(module, bn_name, nn.Identity())
    return model


def prepare_for_inference(model: nn.Module, channels_last: bool = True, fold_bn: bool = True) -> nn.Module:
    """Eval mode, Conv+BN folding and channels_last memory format (the fast CPU path, chosen by measurement in
    benchmarks/run.py). Returns the same module."""
    model.eval()
    if fold_bn:
        fold_batchnorm(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _tile_weights_1d(length: int, tile: int, starts: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    """The 1-D Gaussian of a tile and the sum of its shifted copies over the image (the blend normaliser is the
    outer product of two such sums, so no H x W weight map is needed)."""
    g = gaussian_importance(tile, 1)[:, 0]
    total = np.zeros(length, np.float32)
    for start in starts:
        total[start : start + tile] += g.numpy()
    return g, total


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
    ``tile x tile`` (the whole image in one pass if it fits in one tile or ``tile`` is None). Memory: the image,
    the ``K x H x W`` output and a constant number of tiles."""
    height, width = image.shape[:2]
    chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if tile is None or (height <= tile and width <= tile):
        return _forward(model, chw[None].to(device), tta)[0].float().cpu().numpy()
    tile_h, tile_w = min(tile, height), min(tile, width)
    starts_y, starts_x = _tile_starts(height, tile_h, overlap), _tile_starts(width, tile_w, overlap)
    gy, total_y = _tile_weights_1d(height, tile_h, starts_y)
    gx, total_x = _tile_weights_1d(width, tile_w, starts_x)
    weights = gy[:, None] * gx[None, :]
    scores: np.ndarray | None = None
    windows = [(y, x) for y in starts_y for x in starts_x]
    for start in range(0, len(windows), batch_size):
        group = windows[start : start + batch_size]
        batch = torch.stack([chw[:, y : y + tile_h, x : x + tile_w] for y, x in group]).to(device)
        logits = (_forward(model, batch, tta).float().cpu() * weights).numpy()
        if scores is None:
            scores = np.zeros((logits.shape[1], height, width), np.float32)
        for (y, x), tile_logits in zip(group, logits):
            scores[:, y : y + tile_h, x : x + tile_w] += tile_logits
    scores /= total_y[None, :, None]
    scores /= total_x[None, None, :]
    return scores


def predict_image(model: nn.Module, image: np.ndarray, settings: InferenceSettings) -> tuple[np.ndarray, np.ndarray]:
    """Label map ``H x W`` (uint8 class ids) and foreground probability (binary, ``H x W``) or class probabilities
    (``K x H x W``), float32, of an ``H x W x C`` image in reader scale [0, 1]."""
    height, width = image.shape[:2]
    x = normalize(image, settings.normalize)
    if settings.resize:
        x = cv2.resize(x, (settings.resize, settings.resize), interpolation=cv2.INTER_LINEAR)
        x = x.reshape(settings.resize, settings.resize, -1)
    logits = sliding_window_logits(model, x, settings.patch_size if not settings.resize else None,
                                   settings.overlap, settings.batch_size, settings.tta, settings.device)
    del x
    if settings.resize:
        logits = np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_LINEAR) for c in logits])
    if logits.shape[0] == 1:
        probability = logits[0]
        np.negative(probability, out=probability)
        np.exp(probability, out=probability)
        probability += 1.0
        np.reciprocal(probability, out=probability)
        return (probability > settings.threshold).astype(np.uint8), probability
    labels = logits.argmax(axis=0).astype(np.uint8)
    logits -= logits.max(axis=0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0, keepdims=True)
    return labels, logits


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
        model, meta = load_model(resolve_weights(path), device, prune_depth)
        return prepare_for_inference(model), meta
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

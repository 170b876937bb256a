"""Prediction on files: images, folders and TIFF stacks of any size -> masks on disk (and, on request,
probability maps and overlays), through a :class:`~medseg.engine.inference.Predictor`."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from medseg.data.readers import IMAGE_EXTENSIONS, Reader, mask_pixels, write_array, write_mask
from medseg.engine.inference import Predictor
from medseg.engine.visualize import overlay
from medseg.errors import MedsegError
from medseg.log import get_logger, progress


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


def frames(reader: Reader, path: Path, channels: int) -> Iterator[np.ndarray]:
    """The 2D images of a file: the image itself, or each frame of a TIFF stack (one page read each)."""
    count = reader.frames(path)
    for frame in range(count):
        yield reader.image(path, channels, frame if count > 1 else None)


def predict_paths(predictor: Predictor, inputs: Sequence[str | Path], out: str | Path,
                  save_probabilities: bool = False, save_overlays: bool = False) -> list[Path]:
    """Predict every input file (TIFF stacks frame by frame, written back as stacks); returns the mask paths."""
    spec = predictor.spec
    files = expand_inputs(inputs)
    stems: dict[str, Path] = {}
    for path in files:
        if stems.setdefault(path.stem, path) != path:
            raise MedsegError(path, f"has the same name as {stems[path.stem]}, so their masks would overwrite each "
                                    "other in --out; predict them into separate folders")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with Reader() as reader:
        for path in progress(files, desc="predict", unit="img"):
            labels_stack, prob_stack, overlays = [], [], []
            for image in frames(reader, path, spec.channels):
                probabilities = predictor.probabilities(image)
                labels = predictor.labels(probabilities)
                labels_stack.append(labels)
                if save_probabilities:
                    prob_stack.append(probabilities)
                if save_overlays:
                    overlays.append(overlay(image, labels))
            written.append(_write(out, path, spec.n_classes, labels_stack, prob_stack, overlays))
    get_logger().info("wrote %d mask file(s) to %s (threshold %.2f, post-processing: %s)", len(written), out,
                      spec.threshold, spec.postprocess.describe())
    return written


def _write(out: Path, source: Path, n_classes: int, labels: list[np.ndarray], probabilities: list[np.ndarray],
           overlays: list[np.ndarray]) -> Path:
    is_stack = len(labels) > 1
    mask_path = out / f"{source.stem}{'.tif' if is_stack else '.png'}"
    if is_stack:
        write_array(mask_path, np.stack([mask_pixels(frame, n_classes) for frame in labels]), stack=True)
    else:
        write_mask(mask_path, labels[0], n_classes)
    if probabilities:
        write_array(out / f"{source.stem}_prob.tif", np.stack(probabilities) if is_stack else probabilities[0],
                    stack=is_stack)
    for z, picture in enumerate(overlays):
        write_array(out / f"{source.stem}{f'_{z:03d}' if is_stack else ''}_overlay.png", picture)
    return mask_path

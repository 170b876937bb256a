"""Where trained runs go wrong on a binary set's test images: each run's and their ensemble's pooled Dice, and how
far the ensemble's errors lie from the labelled edges (what bounds ISBI 2012 in docs/accuracy.md).

    python benchmarks/error_bands.py --data ../shared/data/isbi2012_em --ids 24-29 --out bands.json RUN [RUN ...]

Each run predicts the images as `medseg predict` does (its own TTA; the ensemble thresholds the averaged
probabilities at 0.5). The test masks only describe the errors here; nothing is chosen on them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.data.readers import Reader
from medseg.files import atomic_write_text
from medseg.inference.predictor import Predictor
from medseg.metrics import confusion_counts, scores_from_counts

BANDS = (1, 2, 3)  # px from a labelled edge


def probabilities(run: Path, images: list[Path], reader: Reader) -> list[np.ndarray]:
    """Foreground probabilities ``H x W`` of ``images`` from one run."""
    predictor = Predictor.from_run(run)
    return [predictor.probabilities(reader.image(path, predictor.spec.channels)) for path in images]


def pooled_dice(masks: list[np.ndarray], predictions: list[np.ndarray]) -> float:
    """Foreground Dice over every pixel of every image together."""
    counts = sum(confusion_counts(p, m, n_classes=2) for m, p in zip(masks, predictions))
    return float(scores_from_counts(counts)["dice"][1])


def edge_distance(mask: np.ndarray) -> np.ndarray:
    """Each pixel's distance to the nearest pixel of the other label (1 = on the edge)."""
    return np.where(mask, ndimage.distance_transform_edt(mask), ndimage.distance_transform_edt(~mask))


def bands(masks: list[np.ndarray], predictions: list[np.ndarray]) -> dict[str, float]:
    """The share of errors within k px of a labelled edge, and the Dice were every error beyond k px removed."""
    distances = [edge_distance(m) for m in masks]
    errors = [m != p for m, p in zip(masks, predictions)]
    n_errors = sum(int(e.sum()) for e in errors)
    result = {"pixel_error": n_errors / sum(m.size for m in masks)}
    for k in BANDS:
        result[f"share_within_{k}px"] = sum(int((e & (d <= k)).sum()) for e, d in zip(errors, distances)) / n_errors
        kept = [np.where(e & (d > k), m, p) for m, p, e, d in zip(masks, predictions, errors, distances)]
        result[f"dice_if_errors_beyond_{k}px_removed"] = pooled_dice(masks, kept)
    return result


def find(folder: Path, stem: str) -> Path:
    """The one file of ``folder`` named ``stem``, whatever its extension."""
    found = sorted(folder.glob(f"{stem}.*"))
    if not found:
        raise SystemExit(f"{folder}: no file for id {stem}")
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="a folder-format dataset (images/, masks/)")
    parser.add_argument("--ids", required=True, help="test image ids: a range 24-29 or a list 24,25")
    parser.add_argument("--out", type=Path, default=Path("error_bands.json"))
    args = parser.parse_args()
    first, _, last = args.ids.partition("-")
    ids = [f"{i:0{len(first)}d}" for i in range(int(first), int(last) + 1)] if last else args.ids.split(",")
    images = [find(args.data / "images", i) for i in ids]
    reader = Reader()
    masks = [reader.mask(find(args.data / "masks", i)) > 0 for i in ids]
    scores, members = {}, []
    for run in args.runs:
        members.append(probabilities(run, images, reader))
        scores[str(run)] = pooled_dice(masks, [p > 0.5 for p in members[-1]])
        print(f"{run}: pooled Dice {scores[str(run)]:.4f}", flush=True)
    ensemble = [np.mean(stack, axis=0) > 0.5 for stack in zip(*members)]
    result = {"runs": scores, "ensemble": pooled_dice(masks, ensemble), **bands(masks, ensemble)}
    print(f"ensemble of {len(members)}: pooled Dice {result['ensemble']:.4f}, pixel error {result['pixel_error']:.4f}")
    for k in BANDS:
        print(f"errors within {k} px of a labelled edge: {result[f'share_within_{k}px']:.3f}; Dice were every error "
              f"beyond {k} px removed: {result[f'dice_if_errors_beyond_{k}px_removed']:.4f}")
    atomic_write_text(args.out, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

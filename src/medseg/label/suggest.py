"""What to label next: a dataset's images (a volume as one case) that lack a complete mask, ranked by how unsure the
run's model is about their unlabelled pixels, each discounted by its resemblance to the images ranked above it, so
that near-duplicates are not all chosen.

The score of an image is its mean scaled entropy (:mod:`medseg.inference.uncertainty`) over the pixels not yet
labelled. Resemblance is the distance between small thumbnails of the image and of the model's foreground
probability (both standardised over the candidates): an image whose nearest already-chosen image lies within
:data:`NEAR` of the candidates' median distance has its score scaled down in proportion, to 0 for a copy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from medseg.data.datasets import Item, Sample, label_kind, load_items, load_sample
from medseg.data.readers import Reader
from medseg.errors import MedsegError
from medseg.files import atomic_write_csv
from medseg.inference.predictor import Predictor
from medseg.inference.scoring import case_groups
from medseg.inference.uncertainty import entropy_map, uncertainty_score, unsure_fraction
from medseg.log import get_logger, progress

THUMBNAIL = 12  # thumbnails are THUMBNAIL x THUMBNAIL pixels per picture
VOLUME_SLICES = 4  # a volume's thumbnails are of this many slices, spread over it
NEAR = 0.5  # an image nearer than this share of the median distance to a chosen one is discounted


@dataclass(frozen=True)
class Assessment:
    """One candidate as the model sees it: its unsure pixels and what it looks like."""

    id: str
    label: str  # "none" (no mask) or "partial"
    uncertainty: float  # mean scaled entropy over its unlabelled pixels
    unsure_fraction: float
    feature: np.ndarray  # thumbnails of the image and its foreground probability, flattened


@dataclass(frozen=True)
class Suggestion:
    """A row of ``suggestions.csv``."""

    rank: int
    id: str
    label: str
    uncertainty: float
    unsure_fraction: float
    score: float  # the uncertainty discounted by resemblance to the images ranked above
    reason: str


def suggest(predictor: Predictor, items: Sequence[Item], count: int) -> list[Suggestion]:
    """The ``count`` candidates of ``items`` to label next (fewer when there are fewer), best first."""
    groups = [[items[p] for p in group] for group in case_groups(items)]
    spec = predictor.spec
    assessed = []
    with Reader() as reader:
        for group in progress(groups, desc="suggest", unit="img"):
            try:
                samples = [load_sample(item, spec.channels, spec.n_classes, reader, spec.normalize) for item in group]
            except MedsegError as exc:  # one unreadable file does not stop the ranking of the others
                get_logger().warning("skipped: %s", exc)
                continue
            kinds = {label_kind(sample) for sample in samples}
            if kinds != {"dense"}:
                assessed.append(assess(predictor, group[0].group, samples, "none" if kinds == {"none"} else "partial"))
    chosen = choose(assessed, count)
    get_logger().info("%d of %d images have no complete mask; suggested %d", len(assessed), len(groups), len(chosen))
    return chosen


def assess(predictor: Predictor, name: str, samples: Sequence[Sample], label: str) -> Assessment:
    """Predict an image (or a volume's slices, one at a time) and measure how unsure the model is where nothing is
    labelled."""
    foregrounds, entropies = [], []
    for _, fg, entropy in slice_maps(predictor, samples):
        foregrounds.append(fg)
        entropies.append(entropy)
    return assessment(name, label, samples, foregrounds, entropies)


def slice_maps(predictor: Predictor, samples: Sequence[Sample]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each sample's class probabilities, :func:`foreground` probability ``H x W`` and scaled entropy ``H x W``,
    predicted one at a time, so that only one slice's probabilities are held."""
    for sample in samples:
        probabilities = predictor.probabilities(sample.image, sample.statistics, sample.spacing)
        yield probabilities, foreground(probabilities), entropy_map(probabilities, predictor.spec.n_classes)


def foreground(probabilities: np.ndarray) -> np.ndarray:
    """The probability ``H x W`` of any foreground class, from a binary ``H x W`` or a ``K x H x W`` map."""
    return probabilities if probabilities.ndim == 2 else 1 - probabilities[0]


def assessment(name: str, label: str, samples: Sequence[Sample], foregrounds: Sequence[np.ndarray],
               entropies: Sequence[np.ndarray]) -> Assessment:
    """How unsure the model is about an image's (a volume's slices') unlabelled pixels, from their predicted
    :func:`foreground` probabilities and scaled ``entropies``, and what the image and its prediction look like."""
    unlabelled = np.concatenate([_unlabelled(sample).ravel() for sample in samples])
    entropy = np.concatenate([e.ravel() for e in entropies])
    pictures = [(sample.image, f) for sample, f in zip(samples, foregrounds)]
    spread = [pictures[round(i)] for i in np.linspace(0, len(pictures) - 1, min(VOLUME_SLICES, len(pictures)))]
    feature = np.concatenate([thumbnail(part) for image, foreground in spread
                              for part in (image.mean(axis=2), foreground)])
    return Assessment(name, label, uncertainty_score(entropy, unlabelled), unsure_fraction(entropy, unlabelled),
                      feature)


def _unlabelled(sample: Sample) -> np.ndarray:
    """The pixels of a sample still to label: those of its region that its mask leaves unlabelled (all of them
    without a mask)."""
    shape = sample.image.shape[:2]
    region = sample.region if sample.region is not None else np.ones(shape, bool)
    if sample.mask is None:
        return region
    return region & ~sample.labelled if sample.labelled is not None else np.zeros(shape, bool)


def thumbnail(picture: np.ndarray) -> np.ndarray:
    """A picture shrunk to ``THUMBNAIL x THUMBNAIL`` (area averaging) and standardised, flattened."""
    small = cv2.resize(picture.astype(np.float32), (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA).ravel()
    return (small - small.mean()) / max(float(small.std()), 1e-6)


def choose(assessed: Sequence[Assessment], count: int) -> list[Suggestion]:
    """Greedily the most unsure candidate, each time discounting the rest by their nearness to those chosen."""
    if not assessed:
        return []
    features = np.stack([a.feature for a in assessed])
    features = (features - features.mean(axis=0)) / np.maximum(features.std(axis=0), 1e-6)
    distances = np.linalg.norm(features[:, None] - features[None], axis=2)
    typical = float(np.median(distances[np.triu_indices(len(assessed), 1)])) if len(assessed) > 1 else 1.0
    uncertainty = np.nan_to_num(np.array([a.uncertainty for a in assessed]), nan=0.0)
    order = np.argsort(-uncertainty, kind="stable")
    places = {int(i): place for place, i in enumerate(order, 1)}
    nearest = np.full(len(assessed), np.inf)
    nearest_to = np.full(len(assessed), -1)
    left, suggestions = set(range(len(assessed))), []
    while left and len(suggestions) < count:
        discount = np.minimum(1.0, nearest / max(NEAR * typical, 1e-9))
        score = uncertainty * discount
        pick = max(left, key=lambda i: (score[i], uncertainty[i], -i))
        left.discard(pick)
        candidate = assessed[pick]
        reason = _reason(candidate, places[pick], len(assessed), discount[pick], nearest_to[pick], nearest[pick],
                         typical, assessed)
        suggestions.append(Suggestion(len(suggestions) + 1, candidate.id, candidate.label,
                                      round(candidate.uncertainty, 6), round(candidate.unsure_fraction, 6),
                                      round(float(score[pick]), 6), reason))
        closer = distances[pick] < nearest
        nearest_to[closer], nearest[closer] = pick, distances[pick][closer]
    return suggestions


def _reason(candidate: Assessment, place: int, total: int, discount: float, near: int, distance: float,
            typical: float, assessed: Sequence[Assessment]) -> str:
    """One line: what the candidate lacks, how unsure the model is about it, and whether it resembles a choice."""
    lacks = "no mask" if candidate.label == "none" else "a partial mask"
    unsure = (f"{lacks}; mean uncertainty {candidate.uncertainty:.3f} ({_ordinal(place)} of {total}), "
              f"{100 * candidate.unsure_fraction:.0f}% of its unlabelled pixels unsure")
    if near < 0 or discount >= 1:
        return unsure
    return (f"{unsure}; discounted to {100 * discount:.0f}%: it resembles {assessed[near].id}, ranked above "
            f"(distance {distance / typical:.2f} of the typical)")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def suggest_for_run(run: str | Path, data: str | Path, count: int, out: str | Path, fmt: str = "auto",
                    device: str = "cpu") -> list[Suggestion]:
    """`medseg suggest`: rank ``data``'s images without a complete mask with ``run``'s model (its TTA and
    ensemble as it predicts) and write ``out`` (CSV)."""
    predictor = Predictor.from_run(run, device=device)
    items = load_items(data, fmt, predictor.spec.slice_axis)
    suggestions = suggest(predictor, items, count)
    atomic_write_csv(Path(out), [asdict(s) for s in suggestions], [f for f in Suggestion.__dataclass_fields__])
    return suggestions


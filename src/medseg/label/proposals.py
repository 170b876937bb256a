"""What the model in use proposes for each image of the workspace, made by one background thread: an image a person
opens comes first; then every image without a complete mask, whose uncertainty orders the queue (as `medseg
suggest` ranks). Before there is a model, the queue is in a spread-out order (the images farthest from those before
them first), so the first labels cover the dataset."""

from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError
from medseg.data.datasets import Sample
from medseg.inference.postprocess import postprocess, to_labels
from medseg.inference.predictor import Predictor
from medseg.inference.uncertainty import entropy_pixels
from medseg.label.suggest import Assessment, assessment, choose, slice_maps, thumbnail
from medseg.label.workspace import Workspace
from medseg.log import get_logger

OPENED, REFRESH = 0, 1  # task priorities: a person waits for the first


@dataclass(frozen=True)
class Proposal:
    """A model's prediction of an image, per slice: class ids (uint8) and scaled entropy (uint8, 255 most
    unsure)."""

    labels: tuple[np.ndarray, ...]
    uncertainty: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class Order:
    """The queue's order: entry ids, and how they were ordered (``suggest``, ``spread`` or ``name``)."""

    ids: tuple[str, ...]
    by: str


class Proposals:
    """The model in use (:meth:`use`), its proposals cached per image, and the queue's order. Errors of one image
    (an unreadable file) are kept as its one-line message and the others go on."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.predictor: Predictor | None = None
        self.model: Path | None = None
        self.generation = 0  # bumped whenever the model changes: older tasks are dropped
        self.cache: dict[str, Proposal] = {}
        self.assessed: dict[str, Assessment] = {}
        self.errors: dict[str, str] = {}
        self.waiting: dict[str, list[Future]] = {}
        self.order = Order(tuple(sorted(workspace.entries)), "name")
        self.refreshing = False  # the proposals of a new model are being made
        self.ordered = threading.Event()  # set once the queue's order is the model's (or spread out, without one)
        self.lock = threading.Lock()
        self.tasks: queue.PriorityQueue = queue.PriorityQueue()
        self.sequence = itertools.count()
        self.thread = threading.Thread(target=self._work, name="medseg-proposals", daemon=True)
        self.thread.start()

    def use(self, run: Path | None) -> None:
        """Make ``run``'s model the one in use (None: none yet): forget the old proposals and make new ones for
        every image without a complete mask; then order the queue by them."""
        predictor = Predictor.from_run(run) if run is not None else None
        with self.lock:
            self.generation += 1
            self.predictor, self.model = predictor, run
            self.cache.clear()
            self.assessed.clear()
            self.refreshing = True
            self.ordered.clear()
            generation = self.generation
        for entry_id in self.order.ids:
            self._put(REFRESH, generation, "propose", entry_id)
        self._put(REFRESH, generation, "order", "")

    def proposal(self, entry_id: str, timeout: float = 120.0) -> Proposal:
        """The model's proposal for an image, made now (ahead of the background work) unless it was made before."""
        with self.lock:
            if entry_id in self.errors:
                raise MedsegError(entry_id, self.errors[entry_id])
            if self.predictor is None:
                raise MedsegError(entry_id, "no model yet: label a few images and train")
            if entry_id in self.cache:
                return self.cache[entry_id]
            future: Future = Future()
            self.waiting.setdefault(entry_id, []).append(future)
            generation = self.generation
        self._put(OPENED, generation, "propose", entry_id)
        return future.result(timeout=timeout)

    def _put(self, priority: int, generation: int, kind: str, entry_id: str) -> None:
        self.tasks.put((priority, next(self.sequence), generation, kind, entry_id))

    def _work(self) -> None:
        while True:
            _, _, generation, kind, entry_id = self.tasks.get()
            if generation != self.generation:
                continue
            if kind == "order":
                self._order(generation)
            elif kind == "spread":
                self._spread()
            else:
                self._propose(generation, entry_id)

    def _propose(self, generation: int, entry_id: str) -> None:
        with self.lock:
            predictor, done = self.predictor, entry_id in self.cache
        if predictor is None or done:
            return self._settle(entry_id)
        try:
            samples = self.workspace.samples(entry_id, predictor.spec.normalize, predictor.spec.channels)
            labels, foregrounds, entropies = _predict(predictor, samples)
        except MedsegError as exc:
            with self.lock:
                self.errors[entry_id] = exc.reason
            return self._settle(entry_id)
        except Exception as exc:  # a bug must not stop the worker: the page shows the message
            get_logger().exception("proposal of %s failed", entry_id)
            with self.lock:
                self.errors[entry_id] = f"{type(exc).__name__}: {exc}"
            return self._settle(entry_id)
        status = self.workspace.status(entry_id)
        proposal = Proposal(tuple(labels), tuple(entropy_pixels(e) for e in entropies))
        with self.lock:
            if generation == self.generation:
                self.cache[entry_id] = proposal
                if status != "labelled":
                    label = "none" if status == "unlabelled" else "partial"
                    self.assessed[entry_id] = assessment(entry_id, label, samples, foregrounds, entropies)
        self._settle(entry_id)

    def _settle(self, entry_id: str) -> None:
        """Answer whoever waits for ``entry_id``'s proposal."""
        with self.lock:
            futures = self.waiting.pop(entry_id, [])
            proposal, error = self.cache.get(entry_id), self.errors.get(entry_id)
        for future in futures:
            if proposal is not None:
                future.set_result(proposal)
            else:
                future.set_exception(MedsegError(entry_id, error or "no model yet: label a few images and train"))

    def _order(self, generation: int) -> None:
        """The queue by `suggest`'s ranking of the images without a complete mask, then the rest by name."""
        with self.lock:
            ranked = [s.id for s in choose(list(self.assessed.values()), len(self.assessed))]
            rest = sorted(set(self.workspace.entries) - set(ranked))
            if generation == self.generation:
                self.order = Order(tuple(ranked + rest), "suggest")
                self.refreshing = False
                self.ordered.set()

    def spread(self) -> None:
        """Order the queue spread out (before any model): farthest-point over the images' thumbnails."""
        self._put(REFRESH, self.generation, "spread", "")

    def _spread(self) -> None:
        ids, features = [], []
        for entry_id in sorted(self.workspace.entries):
            try:
                sample = self.workspace.sample(entry_id, self.workspace.entry(entry_id).slices // 2)
            except MedsegError as exc:
                with self.lock:
                    self.errors[entry_id] = exc.reason
                continue
            ids.append(entry_id)
            features.append(thumbnail(sample.image.mean(axis=2)))
        order = _farthest_first(np.stack(features)) if features else []
        broken = sorted(set(self.workspace.entries) - set(ids))
        with self.lock:
            if self.predictor is None:
                self.order = Order(tuple([ids[i] for i in order] + broken), "spread")
                self.ordered.set()


def _predict(predictor: Predictor, samples: list[Sample]) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """An image's (a volume's slices') labels ``Z x H x W`` (post-processed in 3D), and each slice's foreground
    probability and scaled entropy, holding one slice's class probabilities at a time."""
    spec = predictor.spec
    labels, foregrounds, entropies = [], [], []
    for probabilities, fg, entropy in slice_maps(predictor, samples):
        labels.append(to_labels(probabilities, spec.threshold, spec.n_classes))
        foregrounds.append(fg)
        entropies.append(entropy)
    return postprocess(np.stack(labels), spec.postprocess), foregrounds, entropies


def _farthest_first(features: np.ndarray) -> list[int]:
    """Indices in farthest-point order: each next one the farthest from all before it (the first: nearest the
    mean, a typical image)."""
    first = int(np.argmin(np.linalg.norm(features - features.mean(axis=0), axis=1)))
    nearest = np.linalg.norm(features - features[first], axis=1)
    order = [first]
    while len(order) < len(features):
        pick = int(np.argmax(np.where(np.isin(np.arange(len(features)), order), -1, nearest)))
        order.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(features - features[pick], axis=1))
    return order

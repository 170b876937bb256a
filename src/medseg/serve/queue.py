"""One model instance behind a bounded queue: a worker thread takes requests in order, batching same-size images
(up to ``batch_size``, waiting at most ``batch_wait_ms`` for company) when batching is on. A volume is a request of
its own, segmented slice by slice with :func:`~medseg.inference.predict.predict_volume`; one whose request was
abandoned (timed out) stops at its next slice."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.data.volumes import Volume
from medseg.inference.predictor import Predictor
from medseg.inference.predict import predict_volume
from medseg.errors import MedsegError
from medseg.log import get_logger


class QueueFull(Exception):
    """No room for another request (or the service is stopping); the client should retry later."""


class Abandoned(Exception):
    """The request gave up on its volume (timed out) while the worker was segmenting it."""


class Request(Future):
    """A job's future. Cancelling it (the request timed out) also tells a volume being segmented to stop."""

    def __init__(self) -> None:
        super().__init__()
        self.abandoned = threading.Event()

    def cancel(self) -> bool:
        self.abandoned.set()
        return super().cancel()


@dataclass
class Job:
    image: np.ndarray | None  # H x W x C float32 in reader scale (a volume's slice: as stored)
    future: Request  # -> probabilities (H x W or K x H x W); a volume's: its VolumePrediction
    statistics: tuple[np.ndarray, np.ndarray] | None = None  # normalisation of a volume's slice (its volume's)
    spacing: tuple[float, float] | None = None  # a volume's slice: its in-plane spacing (mm), resampled to the run's
    volume: Volume | None = None  # a whole volume instead of an image
    where: str = "upload"
    uncertainty: bool = False  # a volume's: its entropy map too


class _Watched:
    """The predictor as :func:`predict_volume` uses it, raising :class:`Abandoned` before a slice once the
    request has gone; everything else is the predictor's."""

    def __init__(self, predictor: Predictor, abandoned: threading.Event) -> None:
        self.predictor, self.abandoned = predictor, abandoned

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)

    def probabilities(self, *args: Any, **kwargs: Any) -> np.ndarray:
        if self.abandoned.is_set():
            raise Abandoned("the request was abandoned")
        return self.predictor.probabilities(*args, **kwargs)


class InferenceQueue:
    """Serialises access to one :class:`Predictor`.

    Admission is counted from the moment a request arrives (:meth:`admit`, before its body is read and decoded)
    until it is answered (:meth:`leave`), so at most ``capacity`` requests hold memory at once; more are refused
    with :class:`QueueFull`. A request whose future was cancelled (timed out) before the worker reached it is
    skipped."""

    def __init__(self, predictor: Predictor, max_queue: int = 32, batch_size: int = 1,
                 batch_wait_ms: float = 5.0) -> None:
        self.predictor, self.batch_size, self.batch_wait = predictor, batch_size, batch_wait_ms / 1000
        self.capacity = max_queue + batch_size
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.held: Job | None = None  # taken while batching but not batchable with that batch
        self.lock = threading.Lock()
        self.admitted = 0
        self.accepting = False
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="medseg-inference", daemon=True)
        self.accepting = True
        self.thread.start()

    def admit(self) -> None:
        """Take a place for a new request, or raise :class:`QueueFull`."""
        with self.lock:
            if not self.accepting:
                raise QueueFull("the service is shutting down")
            if self.admitted >= self.capacity:
                raise QueueFull(f"{self.admitted} requests are already in the service")
            self.admitted += 1

    def leave(self) -> None:
        with self.lock:
            self.admitted -= 1

    def submit(self, image: np.ndarray, statistics: tuple[np.ndarray, np.ndarray] | None = None,
               spacing: tuple[float, float] | None = None) -> Request:
        """Queue an admitted request's image (a volume's slice: with its volume's ``statistics`` and its in-plane
        ``spacing``); its future gives the probabilities."""
        return self._put(Job(image, Request(), statistics, spacing))

    def submit_volume(self, volume: Volume, where: str = "upload", uncertainty: bool = False) -> Request:
        """Queue an admitted request's volume; its future gives its
        :class:`~medseg.inference.predict.VolumePrediction` (class ids, and with ``uncertainty`` the entropy map)."""
        return self._put(Job(None, Request(), volume=volume, where=where, uncertainty=uncertainty))

    def _put(self, job: Job) -> Request:
        with self.lock:
            if not self.accepting:
                raise QueueFull("the service is shutting down")
            self.jobs.put(job)
        return job.future

    @property
    def waiting(self) -> int:
        return self.jobs.qsize() + (self.held is not None)

    def stop(self) -> None:
        """Refuse new requests, finish every queued one, then end the worker (blocking: call from a thread)."""
        with self.lock:
            self.accepting = False
            self.jobs.put(None)  # after every job queued while accepting
        if self.thread is not None:
            self.thread.join()

    def _next(self) -> Job | None:
        if self.held is not None:
            job, self.held = self.held, None
            return job
        return self.jobs.get()

    def _batch(self, first: Job) -> list[Job]:
        """``first`` and up to ``batch_size - 1`` more same-size (and same-spacing) jobs arriving within the
        wait."""
        batch, deadline = [first], time.perf_counter() + self.batch_wait
        while first.volume is None and len(batch) < self.batch_size and (left := deadline - time.perf_counter()) > 0:
            try:
                job = self.jobs.get(timeout=left)
            except queue.Empty:
                break
            if job is None or job.volume is not None or (job.image.shape, job.spacing) != (first.image.shape,
                                                                                           first.spacing):
                self.held = job
                break
            batch.append(job)
        return batch

    def _run(self) -> None:
        while True:
            job = self._next()
            if job is None:  # the stop marker: everything queued before it has been answered
                return
            batch = [j for j in self._batch(job) if j.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            if job.volume is not None:
                self._segment_volume(job)
                continue
            get_logger().info("inference: %d image(s), %d waiting", len(batch), self.waiting)
            statistics = [j.statistics for j in batch]
            extra = {"statistics": statistics} if any(s is not None for s in statistics) else {}
            if job.spacing is not None:
                extra["spacing"] = job.spacing
            try:
                results = self.predictor.probabilities_batch([j.image for j in batch], **extra)
            except Exception as exc:  # a bug in a request must not stop the worker
                get_logger().exception("inference failed")
                for j in batch:
                    j.future.set_exception(exc)
                continue
            for j, probabilities in zip(batch, results):
                j.future.set_result(probabilities)

    def _segment_volume(self, job: Job) -> None:
        shape = " x ".join(str(n) for n in job.volume.data.shape[:3])
        get_logger().info("inference: volume of %s voxels, %d waiting", shape, self.waiting)
        try:
            job.future.set_result(predict_volume(_Watched(self.predictor, job.future.abandoned), job.volume,
                                                 job.where, job.uncertainty))
        except Abandoned as exc:
            get_logger().info("inference: volume of %s voxels abandoned by its request", shape)
            job.future.set_exception(exc)
        except MedsegError as exc:  # the volume's fault: the request answers 422
            job.future.set_exception(exc)
        except Exception as exc:  # a bug in a request must not stop the worker
            get_logger().exception("inference failed")
            job.future.set_exception(exc)

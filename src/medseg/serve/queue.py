"""One model instance behind a bounded queue: a worker thread takes requests in order, batching same-size images
(up to ``batch_size``, waiting at most ``batch_wait_ms`` for company) when batching is on."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from medseg.engine.inference import Predictor
from medseg.log import get_logger


class QueueFull(Exception):
    """No room for another request (or the service is stopping); the client should retry later."""


@dataclass
class Job:
    image: np.ndarray  # H x W x C float32 in [0, 1]
    future: Future  # -> probabilities (H x W or K x H x W)


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

    def submit(self, image: np.ndarray) -> Future:
        """Queue an admitted request's image; its future gives the probabilities."""
        job = Job(image, Future())
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
        """``first`` and up to ``batch_size - 1`` more same-size jobs arriving within the wait."""
        batch, deadline = [first], time.perf_counter() + self.batch_wait
        while len(batch) < self.batch_size and (left := deadline - time.perf_counter()) > 0:
            try:
                job = self.jobs.get(timeout=left)
            except queue.Empty:
                break
            if job is None or job.image.shape != first.image.shape:
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
            get_logger().info("inference: %d image(s), %d waiting", len(batch), self.waiting)
            try:
                results = self.predictor.probabilities_batch([j.image for j in batch])
            except Exception as exc:  # a bug in a request must not stop the worker
                get_logger().exception("inference failed")
                for j in batch:
                    j.future.set_exception(exc)
                continue
            for j, probabilities in zip(batch, results):
                j.future.set_result(probabilities)

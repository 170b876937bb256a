"""The inference queue's batching: same-size requests share a forward pass and get the same probabilities as one
at a time; a different size waits for its own pass."""

from __future__ import annotations

import numpy as np

from medseg.inference.predictor import Predictor
from medseg.serve.queue import InferenceQueue


class RecordingPredictor:
    """Wraps a predictor and records the size of every batch it is given."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor, self.batches = predictor, []

    def probabilities_batch(self, images):
        self.batches.append(len(images))
        return self.predictor.probabilities_batch(images)


def test_same_size_requests_share_a_pass_and_get_the_same_probabilities(demo_run):
    predictor = Predictor.from_run(demo_run)
    rng = np.random.default_rng(0)
    images = [rng.random((64, 64, 1), dtype=np.float32) for _ in range(4)]
    odd = rng.random((48, 64, 1), dtype=np.float32)
    recording = RecordingPredictor(predictor)
    inference = InferenceQueue(recording, batch_size=4, batch_wait_ms=100)
    inference.accepting = True  # queue everything before the worker starts, so the batch is deterministic
    futures = [inference.submit(image) for image in images[:3]] + [inference.submit(odd), inference.submit(images[3])]
    inference.start()
    results = [future.result(timeout=60) for future in futures]
    inference.stop()
    assert recording.batches == [3, 1, 1]  # the odd size ends the first batch; the 4th image cannot join it
    alone = [predictor.probabilities_batch([image])[0] for image in images[:3] + [odd, images[3]]]
    for batched, single in zip(results, alone):
        np.testing.assert_allclose(batched, single, atol=1e-5)

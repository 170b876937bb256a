"""The HTTP service in-process (FastAPI's test client) on a demo run: results identical to `medseg predict`, the
JSON and TIFF variants, the token, the model description, bad input, a full queue and timeouts."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from medseg.cli import main  # noqa: E402
from medseg.inference.predictor import Predictor  # noqa: E402
from medseg.serve.app import ServeSettings, create_app  # noqa: E402

TOKEN = "s3cret-token-for-tests-0123456789"


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image(demo_run) -> np.ndarray:
    return np.asarray(Image.open(demo_run.parent / "data" / "images" / "cells_000.png"))


@pytest.fixture(scope="module")
def client(demo_run):
    with TestClient(create_app(Predictor.from_run(demo_run), ServeSettings())) as test_client:
        yield test_client


def test_mask_equals_medseg_predict(client, demo_run, image, tmp_path):
    Image.fromarray(image).save(tmp_path / "cells.png")
    assert main(["predict", str(demo_run), str(tmp_path / "cells.png"), "--out", str(tmp_path / "out")]) == 0
    expected = np.asarray(Image.open(tmp_path / "out" / "cells.png"))
    raw = client.post("/v1/segment", content=png_bytes(image), headers={"Content-Type": "image/png"})
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
    mask = np.asarray(Image.open(io.BytesIO(raw.content)))
    assert mask.shape == image.shape and (mask == expected).all() and 0 < (mask > 0).mean() < 1
    upload = client.post("/v1/segment", files={"image": ("cells.png", png_bytes(image), "image/png")})
    assert upload.status_code == 200 and upload.content == raw.content


def test_json_and_tiff_variants(client, demo_run, image):
    mask = np.asarray(Image.open(io.BytesIO(client.post(
        "/v1/segment", content=png_bytes(image), headers={"Content-Type": "image/png"}).content))) > 0
    summary = client.post("/v1/segment?format=json", content=png_bytes(image),
                          headers={"Content-Type": "image/png"}).json()
    (cells,) = summary["classes"]
    assert (summary["width"], summary["height"]) == (image.shape[1], image.shape[0])
    assert cells["area_px"] == mask.sum() and cells["area_fraction"] == pytest.approx(mask.mean())
    labels, count = ndimage.label(mask)
    assert len(cells["objects"]) == count
    x0, y0, x1, y1 = cells["objects"][0]["bbox"]
    assert (labels[y0:y1, x0:x1] == 1).any() and not (labels[:y0] == 1).any() and not (labels[:, x1:] == 1).any()
    tiff = client.post("/v1/segment?format=tiff", content=png_bytes(image), headers={"Content-Type": "image/png"})
    probabilities = tifffile.imread(io.BytesIO(tiff.content))
    predictor = Predictor.from_run(demo_run)
    # float32 convolutions of another batch sum in another order: ~1e-6 apart
    np.testing.assert_allclose(probabilities, predictor.probabilities(image[..., None] / 255.0), atol=1e-5)
    assert probabilities.dtype == np.float32 and ((predictor.labels(probabilities) > 0) == mask).all()


def test_the_uncertainty_map_on_request(client, demo_run, image, tmp_path):
    """format=uncertainty is the map `medseg predict --uncertainty` writes; json gives its mean."""
    Image.fromarray(image).save(tmp_path / "cells.png")
    assert main(["predict", str(demo_run), str(tmp_path / "cells.png"), "--out", str(tmp_path / "out"),
                 "--uncertainty"]) == 0
    response = client.post("/v1/segment?format=uncertainty", content=png_bytes(image),
                           headers={"Content-Type": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    served = np.asarray(Image.open(io.BytesIO(response.content))).astype(int)
    written = np.asarray(Image.open(tmp_path / "out" / "cells_uncertainty.png")).astype(int)
    assert served.shape == image.shape and np.abs(served - written).max() <= 1  # float32 batches: ~1e-6 apart
    summary = client.post("/v1/segment?format=json", content=png_bytes(image),
                          headers={"Content-Type": "image/png"}).json()
    assert summary["uncertainty"] == pytest.approx(served.mean() / 255, abs=0.01)


def test_model_description_and_health(client):
    model = client.get("/v1/model").json()
    assert model["model"] == "unet" and model["classes"] == ["background", "foreground"]
    assert model["in_channels"] == 1 and model["ensemble_members"] == 1 and "threshold" in model
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/").text.startswith("<!DOCTYPE html>")


def test_token_is_required_and_checked(demo_run, image):
    app = create_app(Predictor.from_run(demo_run), ServeSettings(token=TOKEN))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200  # the health check stays open
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = client.get("/v1/model", headers=headers)
            assert response.status_code == 401 and response.json() == {"error": "missing or wrong bearer token"}
        assert client.get("/", headers={}).status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "image/png"}
        assert client.post("/v1/segment", content=png_bytes(image), headers=good).status_code == 200


def _bomb() -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + chunk(b"IEND", b""))


BAD_INPUTS = {
    "zero-byte body": (lambda image: {"content": b"", "headers": {"Content-Type": "image/png"}}, 400),
    "truncated PNG": (lambda image: {"content": png_bytes(image)[:200], "headers": {"Content-Type": "image/png"}},
                      422),
    "wrong content type": (lambda image: {"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415),
    "100000x2 image": (lambda image: {"content": png_bytes(np.zeros((2, 100_000), np.uint8)),
                                      "headers": {"Content-Type": "image/png"}}, 413),
    "decompression bomb": (lambda image: {"content": _bomb(), "headers": {"Content-Type": "image/png"}}, 413),
    "RGB image to a grey model": (lambda image: {"content": png_bytes(np.dstack([image, image // 2, image // 3])),
                                                 "headers": {"Content-Type": "image/png"}}, 422),
    "malformed multipart": (lambda image: {"content": b"--xyz\r\nnot a part\r\n",
                                           "headers": {"Content-Type": "multipart/form-data; boundary=xyz"}}, 400),
    "multipart without a file": (lambda image: {"files": {"note": (None, "hi")}}, 400),
    "unknown format": (lambda image: {"content": png_bytes(image), "headers": {"Content-Type": "image/png"},
                                      "params": {"format": "gif"}}, 422),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_its_status_and_the_next_request_works(client, image, case):
    make, status = BAD_INPUTS[case]
    response = client.post("/v1/segment", **make(image))
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "Traceback" not in body["error"]
    good = client.post("/v1/segment", content=png_bytes(image), headers={"Content-Type": "image/png"})
    assert good.status_code == 200


def test_body_over_the_limit_is_413(demo_run, image):
    with TestClient(create_app(Predictor.from_run(demo_run), ServeSettings(max_body_bytes=1000))) as client:
        response = client.post("/v1/segment", content=png_bytes(image) + b"\0" * 2000,
                               headers={"Content-Type": "image/png"})
        assert response.status_code == 413 and "exceeds the limit" in response.json()["error"]


class BlockingPredictor:
    """Wraps a predictor; inference waits until ``release`` is set, and signals ``started``."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor, self.spec, self.contract, self.backends = predictor, predictor.spec, predictor.contract, [1]
        self.started, self.release = threading.Event(), threading.Event()

    def probabilities_batch(self, images):
        self.started.set()
        self.release.wait(timeout=30)
        return self.predictor.probabilities_batch(images)

    def labels(self, probabilities):
        return self.predictor.labels(probabilities)


def test_a_full_queue_answers_503_with_retry_after(demo_run, image):
    blocking = BlockingPredictor(Predictor.from_run(demo_run))
    with TestClient(create_app(blocking, ServeSettings(max_queue=1))) as client:
        inference, queued, calls = client.app.state.inference, threading.Event(), []
        submit = inference.submit

        def submit_and_signal(image, *rest):
            calls.append(image)
            future = submit(image, *rest)  # raises QueueFull for the third request
            if len(calls) == 2:
                queued.set()
            return future

        inference.submit = submit_and_signal
        post = lambda: client.post("/v1/segment", content=png_bytes(image),  # noqa: E731
                                   headers={"Content-Type": "image/png"})
        results = {}
        first = threading.Thread(target=lambda: results.setdefault("first", post()))
        first.start()
        assert blocking.started.wait(timeout=30)  # the worker holds the first request
        second = threading.Thread(target=lambda: results.setdefault("second", post()))
        second.start()
        assert queued.wait(timeout=30)  # the second request sits in the queue
        third = post()
        assert third.status_code == 503 and third.headers["retry-after"] == "1"
        assert third.json()["error"].startswith("busy")
        blocking.release.set()
        first.join()
        second.join()
        assert results["first"].status_code == results["second"].status_code == 200


def test_a_slow_request_times_out_with_504(demo_run, image):
    blocking = BlockingPredictor(Predictor.from_run(demo_run))
    with TestClient(create_app(blocking, ServeSettings(timeout_s=0.5))) as client:
        response = client.post("/v1/segment", content=png_bytes(image), headers={"Content-Type": "image/png"})
        assert response.status_code == 504 and "longer than 0.5 s" in response.json()["error"]
        blocking.release.set()

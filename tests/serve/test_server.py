"""The service as a real server on loopback: a client that disconnects mid-upload, SIGTERM draining in-flight
requests, and the web page in headless Chromium."""

from __future__ import annotations

import http.client
import io
import os
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from medseg.inference.predictor import Predictor  # noqa: E402
from medseg.serve.app import ServeSettings, create_app  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThreadServer(uvicorn.Server):
    """uvicorn in a thread, with an event set once it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        self.ready.set()


def serving(predictor):
    """``predictor`` served on a free loopback port (a generator for fixtures): yields ``host:port``."""
    port = free_port()
    config = uvicorn.Config(create_app(predictor, ServeSettings()), host="127.0.0.1", port=port, log_level="warning")
    instance = ThreadServer(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    assert instance.ready.wait(timeout=60)
    yield f"127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(demo_run):
    yield from serving(Predictor.from_run(demo_run))


@pytest.fixture(scope="module")
def three_class_server():
    from tests.serve.test_uploads import three_class_predictor

    yield from serving(three_class_predictor())


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def post(address: str, body: bytes) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(address, timeout=60)
    connection.request("POST", "/v1/segment", body=body, headers={"Content-Type": "image/png"})
    response = connection.getresponse()
    return response.status, response.read()


def test_a_client_that_disconnects_mid_upload_does_not_hurt_the_next(server):
    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    host, port = server.split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 100000\r\n\r\n" + png(image)[:500])
    status, body = post(server, png(image))
    assert status == 200 and Image.open(io.BytesIO(body)).size == (64, 64)


def test_sigterm_drains_in_flight_requests(demo_run, tmp_path):
    port = free_port()
    job = subprocess.Popen([sys.executable, "-m", "medseg", "serve", str(demo_run), "--port", str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        for line in job.stdout:  # the server says when it listens: no polling
            if "Uvicorn running on" in line:
                break
        big = (np.random.default_rng(1).random((2048, 2048)) * 255).astype(np.uint8)  # ~seconds of inference
        result = {}
        client = threading.Thread(target=lambda: result.setdefault("response", post(f"127.0.0.1:{port}", png(big))))
        client.start()
        for line in job.stdout:
            if "inference: 1 image(s)" in line:  # the request is being computed
                break
        job.send_signal(signal.SIGTERM)
        client.join(timeout=120)
        status, body = result["response"]
        assert status == 200 and Image.open(io.BytesIO(body)).size == (2048, 2048)
        rest = job.communicate(timeout=60)[0]
        assert "every queued request was answered" in rest  # the drain finished before the process ended
        assert job.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    finally:
        if job.poll() is None:
            job.kill()


def _download_mask(page, path):
    """Click the page's mask download, save it to ``path`` and a screenshot of the page beside it."""
    with page.expect_download() as download:
        page.click("#download")
    download.value.save_as(path)
    page.screenshot(path=str(path.with_name("page.png")), full_page=True)
    return path


def test_the_page_segments_an_image_in_a_browser(server, demo_run, tmp_path):
    from tests.study.browser import served_page

    source = demo_run.parent / "data" / "images" / "cells_001.png"
    errors: list[str] = []
    with served_page(f"http://{server}/", errors) as page:
        page.set_input_files("#file", str(source))
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')")
        painted = page.evaluate("""() => {
            const canvas = document.getElementById('overlay');
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let count = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) count++;
            return [canvas.width, canvas.height, count];
        }""")
        page.fill("#opacity", "100")
        rows = page.locator("#areas tbody tr").count()
        saved = _download_mask(page, tmp_path / "mask.png")
    width, height, count = painted
    assert errors == [] and (width, height) == Image.open(source).size and count > 0 and rows == 1
    mask = Image.open(saved)
    assert mask.size == Image.open(source).size and set(np.unique(np.asarray(mask))) <= {0, 255}


OVERLAY_COLOURS = """() => {
    const canvas = document.getElementById('overlay');
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const colours = new Set();
    for (let i = 0; i < data.length; i += 4) if (data[i + 3] > 0) colours.add(data.slice(i, i + 3).join(','));
    return Array.from(colours).sort();
}"""


def test_the_page_shows_the_legend_and_segments_dicom_and_volumes(three_class_server, tmp_path):
    import gzip

    import nibabel as nib

    from tests.serve.test_uploads import CLASSES, dicom, nifti, png as png_of, smooth
    from tests.study.browser import served_page

    image, scan, volume = tmp_path / "field.png", tmp_path / "ct.dcm", tmp_path / "case.nii.gz"
    image.write_bytes(png_of((smooth((48, 64)) / 1000 * 255).astype(np.uint8)))
    scan.write_bytes(dicom())
    volume.write_bytes(nifti(smooth((20, 24, 6), seed=1).astype(np.int16)))
    errors: list[str] = []
    done = "(text) => document.getElementById('status').textContent.startsWith(text)"
    with served_page(f"http://{three_class_server}/", errors) as page:
        page.eval_on_selector("#opacity", "slider => { slider.value = 100; }")  # the overlay opaque
        page.set_input_files("#file", str(image))
        page.wait_for_function(done, arg="Done: 64 x 48")
        legend = page.locator("#legend li").all_inner_texts()
        swatches = page.locator("#legend .swatch").evaluate_all(
            "spans => spans.map(span => getComputedStyle(span).backgroundColor)")
        image_colours = page.evaluate(OVERLAY_COLOURS)
        image_rows = page.locator("#areas tbody tr").all_inner_texts()

        page.set_input_files("#file", str(scan))
        page.wait_for_function(done, arg="Done: 128 x 128")
        scan_colours = page.evaluate(OVERLAY_COLOURS)
        scan_headers = page.locator("#areas thead th").all_inner_texts()

        page.set_input_files("#file", str(volume))
        page.wait_for_function(done, arg="Done: a volume of 20 x 24 x 6 voxels")
        volume_headers = page.locator("#areas thead th").all_inner_texts()
        volume_rows = page.locator("#areas tbody tr").count()
        view_hidden = page.locator("#view").is_hidden()
        saved = _download_mask(page, tmp_path / "mask.nii.gz")
    assert errors == []
    assert [text.strip() for text in legend] == list(CLASSES[1:])
    assert swatches == ["rgb(0, 200, 255)", "rgb(255, 200, 0)"]
    assert image_colours == scan_colours == ["0,200,255", "255,200,0"]  # both classes, in the legend colours
    assert len(image_rows) == 2 and image_rows[0].split("\t")[0] == "bright"
    assert scan_headers == ["class", "pixels", "share", "mm²"]
    assert volume_headers == ["class", "voxels", "share", "mm³"] and volume_rows == 2 and view_hidden
    assert nib.Nifti1Image.from_bytes(gzip.decompress(saved.read_bytes())).shape == (20, 24, 6)

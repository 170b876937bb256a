"""The labelling service's HTTP API, as the page uses it: the queue, an image's pixels and labels, saves that are
partial (scribble) or dense (fill) and never overwrite a newer version, bad requests answered 4xx with nothing
written, an unreadable image that leaves the rest usable, and a training round that becomes the model in use."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from medseg.label.app import Labelling, create_label_app  # noqa: E402
from medseg.label.workspace import Workspace  # noqa: E402
from medseg.serve.app import ServeSettings  # noqa: E402
from tests.data import fixtures  # noqa: E402

SIZE = 32


def labelling_folder(root, unreadable: bool = True):
    """6 images 32x32: 2 with full masks, 1 with a partial one, 3 without (and an unreadable file)."""
    rng = np.random.default_rng(0)
    for k in range(6):
        disc = np.hypot(*np.mgrid[:SIZE, :SIZE] - rng.integers(10, 22, 2)[:, None, None]) < 7
        fixtures._png(root / "images" / f"img{k}.png", np.where(disc, 190, 50).astype(np.uint8))
        if k < 2:
            fixtures._png(root / "masks" / f"img{k}.png", (disc * 255).astype(np.uint8))
        if k == 2:  # the left half labelled
            fixtures._png(root / "masks" / f"img{k}.png",
                          np.where(np.arange(SIZE) < 16, disc * 255, 128).astype(np.uint8))
    if unreadable:
        (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    return root


@pytest.fixture
def service(tmp_path):
    workspace = Workspace(labelling_folder(tmp_path / "data"))
    labelling = Labelling(workspace, ["model.widths=[4,8,16]", "data.patch_size=32", "train.batch_size=2"])
    with TestClient(create_label_app(labelling, ServeSettings())) as client:
        assert labelling.proposals.ordered.wait(30)
        yield client, labelling, tmp_path / "data"


def raw(response, dtype=np.uint8) -> np.ndarray:
    height, width = int(response.headers["X-Height"]), int(response.headers["X-Width"])
    return np.frombuffer(response.content, dtype).reshape(height, width, -1).squeeze(-1)


def test_the_queue_and_an_image(service):
    client, _, root = service
    queue = client.get("/v1/queue").json()
    assert queue["order"] == "spread" and len(queue["items"]) == 7
    statuses = {item["id"]: item["status"] for item in queue["items"]}
    assert statuses == {"img0": "labelled", "img1": "labelled", "img2": "partial", "img3": "unlabelled",
                        "img4": "unlabelled", "img5": "unlabelled", "broken": "error"}
    assert "cannot decode image" in next(i["error"] for i in queue["items"] if i["id"] == "broken")
    meta = client.get("/v1/items/img3").json()
    assert (meta["width"], meta["height"], meta["channels"], meta["version"]) == (SIZE, SIZE, 1, "none")
    pixels = raw(client.get("/v1/items/img3/pixels"), "<f4")
    assert pixels.shape == (SIZE, SIZE) and pixels.max() == pytest.approx(190 / 255)
    assert (raw(client.get("/v1/items/img3/labels")) == 255).all()  # nothing labelled yet
    partial = raw(client.get("/v1/items/img2/labels"))
    assert (partial[:, 16:] == 255).all() and set(np.unique(partial[:, :16])) <= {0, 1}
    project = client.get("/v1/project").json()
    assert project["classes"] == ["background", "foreground"] and project["model"] is None


def test_scribble_and_fill_saves_and_a_second_tab(service):
    client, _, root = service
    wire = np.full((SIZE, SIZE), 255, np.uint8)
    wire[4:8, 4:20] = 1
    wire[28:30, :] = 0
    saved = client.put("/v1/items/img3/labels?mode=scribble", content=wire.tobytes(), headers={"If-Match": "none"})
    assert saved.status_code == 200 and saved.json()["status"] == "partial"
    stored = np.asarray(Image.open(root / "masks" / "img3.png"))
    assert (stored[4:8, 4:20] == 255).all() and (stored[28:30] == 0).all() and (stored[10:20] == 128).all()
    version = saved.json()["version"]
    assert client.get("/v1/items/img3").json()["version"] == version
    stale = client.put("/v1/items/img3/labels?mode=fill", content=wire.tobytes(), headers={"If-Match": "none"})
    assert stale.status_code == 409 and "another tab" in stale.json()["error"]
    assert np.array_equal(np.asarray(Image.open(root / "masks" / "img3.png")), stored)  # nothing overwritten
    dense = client.put("/v1/items/img3/labels?mode=fill", content=wire.tobytes(), headers={"If-Match": version})
    assert dense.status_code == 200 and dense.json()["status"] == "labelled"
    assert set(np.unique(np.asarray(Image.open(root / "masks" / "img3.png")))) == {0, 255}  # unlabelled -> background
    assert json.loads((root / ".medseg-label" / "state.json").read_text())["new_labels"] == 2


@pytest.mark.parametrize("path, body, headers, status", [
    ("/v1/items/img4/labels?mode=scribble", b"\x01" * 10, {"If-Match": "none"}, 422),  # wrong size
    ("/v1/items/img4/labels?mode=scribble", b"\x05" * SIZE * SIZE, {"If-Match": "none"}, 422),  # no class 5
    ("/v1/items/img4/labels?mode=paint", b"\x01" * SIZE * SIZE, {"If-Match": "none"}, 422),
    ("/v1/items/img4/labels?mode=scribble", b"\x01" * SIZE * SIZE, {}, 428),  # which version?
    ("/v1/items/nope/labels?mode=scribble", b"\x01" * SIZE * SIZE, {"If-Match": "none"}, 404),
    ("/v1/items/img4/labels?slice=3", b"\x01" * SIZE * SIZE, {"If-Match": "none"}, 422),
])
def test_bad_saves_are_refused_and_write_nothing(service, path, body, headers, status):
    client, _, root = service
    response = client.put(path, content=body, headers=headers)
    assert response.status_code == status and response.json()["error"]
    assert not (root / "masks" / "img4.png").exists() and not (root / "masks" / "nope.png").exists()


def test_other_bad_requests(service):
    client, _, root = service
    assert client.get("/v1/items/broken").status_code == 422
    assert client.get("/v1/items/img0/proposal").status_code == 422  # no model yet
    assert client.post("/v1/items/img4/accept", headers={"If-Match": "none"}).status_code == 422
    assert client.put("/v1/settings", json={"auto_every": -1}).status_code == 422
    assert client.put("/v1/settings", json={"colour": "red"}).status_code == 422
    assert client.delete("/v1/training").status_code == 422  # nothing trains
    assert client.put("/v1/settings", json={"iterations": 20, "auto_every": 3}).json() == {
        "budget_minutes": None, "iterations": 20, "auto_every": 3}
    assert not (root / "masks" / "img4.png").exists()


def test_a_round_trains_and_its_model_proposes(service):
    """20 steps from the page's settings; the round becomes the model in use, its proposals and the queue's order
    follow, and accepting a proposal saves it as a dense label."""
    client, labelling, root = service
    client.put("/v1/settings", json={"iterations": 20})
    started = client.post("/v1/training")
    assert started.status_code == 202 and started.json()["status"] == "running"
    assert client.post("/v1/training").status_code == 409  # one at a time
    labelling.rounds.process.wait(timeout=300)
    labelling.rounds.finished.wait(timeout=60)
    assert labelling.proposals.ordered.wait(120)
    training = client.get("/v1/training").json()
    assert training["round"]["status"] == "done" and training["progress"]["finished"]
    assert training["progress"]["step"] == 20 and training["model"].endswith("round_001")
    queue = client.get("/v1/queue").json()
    assert queue["order"] == "suggest" and {i["status"] for i in queue["items"]} >= {"predicted", "labelled"}
    proposal = raw(client.get("/v1/items/img4/proposal"))
    assert proposal.shape == (SIZE, SIZE) and set(np.unique(proposal)) <= {0, 1}
    assert raw(client.get("/v1/items/img4/uncertainty")).shape == (SIZE, SIZE)
    for bad in (1, -1):  # a 2D image has one slice
        refused = client.post(f"/v1/items/img4/accept?slice={bad}", headers={"If-Match": "none"})
        assert refused.status_code == 422 and "slice" in refused.json()["error"]
    assert not (root / "masks" / "img4.png").exists()
    accepted = client.post("/v1/items/img4/accept", headers={"If-Match": "none"})
    assert accepted.status_code == 200 and accepted.json()["status"] == "labelled"
    assert np.array_equal(np.asarray(Image.open(root / "masks" / "img4.png")) // 255, proposal)
    assert client.get("/v1/items/img4").json()["accepted"]


def test_the_label_command_prints_its_address_and_checks_the_token(tmp_path):
    """`medseg label DIR` as a user starts it: one line with the address; with --token-file every call but
    /healthz needs the token; a folder it cannot label is one line."""
    import http.client
    import os
    import subprocess
    import sys

    from tests.serve.test_server import free_port

    root = labelling_folder(tmp_path / "data", unreadable=False)
    (tmp_path / "token").write_text("a-token-of-sixteen-or-more\n")
    port = free_port()
    job = subprocess.Popen([sys.executable, "-m", "medseg", "label", str(root), "--port", str(port), "--token-file",
                            str(tmp_path / "token"), "--budget", "2m"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        line = job.stdout.readline()  # printed once the server listens
        assert line.startswith(f"labelling {root}: open http://127.0.0.1:{port}/")
        def get(path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read()

        assert get("/healthz")[0] == 200 and get("/v1/project")[0] == 401
        status, body = get("/v1/project", {"Authorization": "Bearer a-token-of-sixteen-or-more"})
        assert status == 200 and json.loads(body)["settings"]["budget_minutes"] == 2
    finally:
        job.terminate()
        job.wait(timeout=30)
    done = subprocess.run([sys.executable, "-m", "medseg", "label", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "works on the folder format" in done.stderr

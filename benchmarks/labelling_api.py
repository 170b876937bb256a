"""The simulated annotator of ``labelling.py`` through the labelling page's HTTP API (`medseg label`), as the page
drives it: labels are saved with ``PUT /v1/items/{id}/labels`` (a full mask in fill mode, scribbles in scribble
mode), rounds are started with ``POST /v1/training`` and followed on ``GET /v1/training``, and what to label next
is the head of ``GET /v1/queue`` once it is ordered by the new model.

It also times what a person waits for: from a save to the next image shown (its description, pixels, labels, the
model's proposal and uncertainty: what the page loads), and from starting a round to the refreshed predictions and
queue order."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from annotators import Annotation, Source

WIRE_UNLABELLED = 255


class Server:
    """`medseg label FOLDER` in a subprocess, on a port of its own."""

    def __init__(self, folder: Path, port: int, seed: int | None, run: Path | None) -> None:
        self.seed = seed
        command = [sys.executable, "-m", "medseg", "label", str(folder), "--port", str(port),
                   *(["--set", f"train.seed={seed}"] if seed is not None else []),
                   *(["--run", str(run)] if run else [])]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{port}"
        for line in self.process.stdout:  # the server says when it listens
            if "open http" in line:
                break
        else:
            raise SystemExit(f"medseg label {folder} did not start")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"{method} {path}: {exc.code} {exc.read().decode(errors='replace')}") from None

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path)[0])

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def ordered(server: Server) -> dict[str, Any]:
    """The queue once the model in use has ordered it."""
    while (queue := server.get("/v1/queue"))["refreshing"] or queue["order"] != "suggest":
        time.sleep(0.5)
    return queue


class PageApi:
    """The :class:`labelling.Tool` of the labelling page: one server per data folder."""

    def __init__(self, first_port: int = 8700) -> None:
        self.servers: dict[Path, Server] = {}
        self.next_port = first_port
        self.measured: dict[str, list[float]] = {"save_to_next_seconds": [], "train_to_refresh_seconds": [],
                                                 "refresh_seconds": []}

    def server(self, folder: Path, seed: int | None = None, init: Path | None = None) -> Server:
        """The folder's server, started (again) to train with ``seed`` from the model of ``init`` when it does
        not yet."""
        server = self.servers.get(folder)
        restart = server is not None and ((seed is not None and server.seed != seed) or (
            init is not None and server.get("/v1/training")["model"] is None))
        if restart:
            server.close()
        if server is None or restart:
            server = self.servers[folder] = Server(folder, self.next_port, seed, init)
            self.next_port += 1
        return server

    def label(self, source: Source, folder: Path, item: str, annotation: Annotation) -> None:
        server = self.server(folder)
        mode = "fill" if annotation.dense else "scribble"
        for z, plane in enumerate(annotation.planes):
            wire = np.where(plane < 0, WIRE_UNLABELLED, plane).astype(np.uint8)
            started = time.perf_counter()
            version = server.get(f"/v1/items/{item}?slice={z}")["version"]
            server.request("PUT", f"/v1/items/{item}/labels?slice={z}&mode={mode}", wire.tobytes(),
                           {"If-Match": version, "Content-Type": "application/octet-stream"})
            if z == 0:
                self._show_next(server, item)
                self.measured["save_to_next_seconds"].append(time.perf_counter() - started)

    def _show_next(self, server: Server, saved: str) -> None:
        """What the page loads to show the next image of the queue after ``saved``."""
        items = server.get("/v1/queue")["items"]
        following = [i for i in items if i["id"] != saved and i["status"] in ("unlabelled", "predicted", "partial")]
        if not following:
            return
        name, model = following[0]["id"], server.get("/v1/training")["model"]
        server.get(f"/v1/items/{name}")
        for part in ("pixels", "labels") + (("proposal", "uncertainty") if model else ()):
            server.request("GET", f"/v1/items/{name}/{part}")

    def train(self, folder: Path, run: Path, minutes: float, seed: int, init: Path | None) -> Path:
        server = self.server(folder, seed, init)
        server.request("PUT", "/v1/settings", json.dumps({"budget_minutes": minutes}).encode(),
                       {"Content-Type": "application/json"})
        started = time.perf_counter()
        server.request("POST", "/v1/training")
        while (training := server.get("/v1/training"))["running"]:
            time.sleep(1)
        trained = time.perf_counter()
        if training["round"]["status"] != "done":
            raise SystemExit(f"the round on {folder} {training['round']['status']}: {training['round']['reason']}")
        ordered(server)
        self.measured["train_to_refresh_seconds"].append(time.perf_counter() - started)
        self.measured["refresh_seconds"].append(time.perf_counter() - trained)
        return folder / ".medseg-label" / training["round"]["run"]

    def suggest(self, run: Path, folder: Path, count: int) -> list[str]:
        server = self.server(folder, init=run)  # the order's folder starts from the run before it
        items = ordered(server)["items"]
        return [i["id"] for i in items if i["status"] in ("unlabelled", "predicted", "partial")][:count]

    def timings(self) -> dict[str, Any]:
        measured = {key: [round(v, 3) for v in values] for key, values in self.measured.items() if values}
        for values in self.measured.values():
            values.clear()
        return measured

    def close(self) -> None:
        for server in self.servers.values():
            server.close()

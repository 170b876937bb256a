"""The labelling service behind the page of `medseg label`: a FastAPI app over a :class:`Workspace` (images and
masks), its :class:`Proposals` (the model's predictions and the queue's order) and its :class:`Rounds` (training in
the background), with the token, limits and JSON errors of `medseg serve` (:func:`medseg.serve.app.add_guards`).

Images, labels, proposals and uncertainty travel as raw little-endian arrays (``application/octet-stream``, one
slice of a volume at a time, its size in ``X-Width``, ``X-Height`` and ``X-Channels``): pixels as float32 in their
own units, so the page windows 16-bit and scanner data itself; labels as uint8 class ids with 255 where nothing is
labelled. A save names the version of the mask it started from (``If-Match``); another version on disk is a 409.

    GET  /v1/project                       classes and their colours, counts, the model in use, the settings
    GET  /v1/queue                         every image with its status, in the queue's order
    GET  /v1/items/{id}?slice=z            an image's size, slices, display window, status and mask version
    GET  /v1/items/{id}/pixels?slice=z     float32 pixels
    GET  /v1/items/{id}/labels?slice=z     the saved labels (255 where none)      PUT: save (?mode=scribble|fill)
    GET  /v1/items/{id}/proposal?slice=z   the model's class ids                   POST .../accept: save them
    GET  /v1/items/{id}/uncertainty?slice=z   the model's scaled entropy (0-255)
    GET  /v1/training    POST: train now    DELETE: stop          PUT /v1/settings   budget, steps, automatic mode
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from medseg.errors import MedsegError
from medseg.label.proposals import Proposals
from medseg.label.rounds import Busy, Rounds
from medseg.label.workspace import Conflict, Workspace
from medseg.serve.app import ServeSettings, ServiceError, add_guards
from medseg.visualize import class_colour

MODES = ("scribble", "fill")


class Settings(BaseModel):
    """What the page may change: the training length and the automatic mode."""

    model_config = ConfigDict(extra="forbid")
    budget_minutes: float | None = Field(None, gt=0, le=600)
    iterations: int | None = Field(None, ge=1)
    auto_every: int | None = Field(None, ge=0)


class Labelling:
    """The workspace, its proposals and its rounds, wired together: a round that ends well is the model in use."""

    def __init__(self, workspace: Workspace, overrides: Sequence[str] = ()) -> None:
        self.workspace = workspace
        self.proposals = Proposals(workspace)
        self.rounds = Rounds(workspace, self.proposals.use, overrides)

    def start(self) -> None:
        model = self.workspace.state.model
        if model is not None and Path(model).is_dir():
            self.proposals.use(Path(model))
        else:
            self.proposals.spread()

    def queue(self) -> dict[str, Any]:
        proposals = self.proposals
        items = []
        for entry_id in proposals.order.ids:
            entry = self.workspace.entry(entry_id)
            error = proposals.errors.get(entry_id)
            status = "error" if error else self.workspace.status(entry_id)
            if status == "unlabelled" and entry_id in proposals.cache:
                status = "predicted"
            assessed = proposals.assessed.get(entry_id)
            items.append({"id": entry_id, "status": status, "slices": entry.slices, "error": error,
                          "uncertainty": None if assessed is None else round(assessed.uncertainty, 4)})
        counts = {status: sum(i["status"] == status for i in items)
                  for status in ("unlabelled", "predicted", "partial", "labelled", "error")}
        return {"order": proposals.order.by, "refreshing": proposals.refreshing, "counts": counts, "items": items}

    def project(self) -> dict[str, Any]:
        state, classes = self.workspace.state, self.workspace.classes
        done = [r for r in state.rounds if r.status == "done"]
        return {"dataset": str(self.workspace.root), "classes": list(classes.names),
                "colours": [class_colour(k) for k in range(classes.count)], "model": state.model,
                "val_dice": done[-1].val_dice if done else None,
                "settings": {"budget_minutes": state.budget_minutes, "iterations": state.iterations,
                             "auto_every": state.auto_every}, "new_labels": state.new_labels}

    def training(self) -> dict[str, Any]:
        status = self.rounds.status()
        return {"running": status.running, "model": self.workspace.state.model,
                "round": None if status.round is None else asdict(status.round),
                "progress": None if status.progress is None else asdict(status.progress),
                "refreshing": self.proposals.refreshing}

    def item(self, entry_id: str, slice_index: int) -> dict[str, Any]:
        entry = self.workspace.entry(entry_id)
        pixels = self.workspace.pixels(entry_id, slice_index)
        _, version = self.workspace.labels(entry_id, slice_index)
        low, high = self.workspace.window(entry_id)
        return {"id": entry_id, "slices": entry.slices, "slice": slice_index, "height": pixels.shape[0],
                "width": pixels.shape[1], "channels": pixels.shape[2], "window": [low, high],
                "range": [float(pixels.min()), float(pixels.max())], "status": self.workspace.status(entry_id),
                "version": version, "volume": entry.volume,
                "accepted": _key(entry_id, slice_index, entry.volume) in self.workspace.state.accepted}

    def save(self, entry_id: str, slice_index: int, wire: np.ndarray, base: str, dense: bool,
             accepted: bool = False) -> dict[str, Any]:
        version = self.workspace.save(entry_id, slice_index, wire, base, dense)
        key = _key(entry_id, slice_index, self.workspace.entry(entry_id).volume)
        kept = tuple(k for k in self.workspace.state.accepted if k != key)
        self.workspace.update(accepted=kept + ((key,) if accepted else ()))
        self.rounds.maybe_start()
        return {"version": version, "status": self.workspace.status(entry_id)}

    def accept(self, entry_id: str, slice_index: int, base: str) -> dict[str, Any]:
        proposal = self.proposals.proposal(entry_id)
        return self.save(entry_id, slice_index, _slice(proposal.labels, slice_index, entry_id), base, dense=True,
                         accepted=True)


def _key(entry_id: str, slice_index: int, volume: bool) -> str:
    return f"{entry_id}:{slice_index}" if volume else entry_id


def _raw(array: np.ndarray, version: str | None = None) -> Response:
    """A ``H x W [x C]`` array as the raw little-endian bytes the page reads, its size in headers."""
    headers = {"X-Height": str(array.shape[0]), "X-Width": str(array.shape[1]),
               "X-Channels": str(array.shape[2] if array.ndim == 3 else 1), "Cache-Control": "no-store"}
    if version is not None:
        headers["X-Version"] = version
    return Response(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes(),
                    media_type="application/octet-stream", headers=headers)


def create_label_app(labelling: Labelling, settings: ServeSettings) -> FastAPI:
    """The labelling service for one workspace."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        labelling.start()
        yield

    app = FastAPI(title="medseg label", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.labelling = labelling
    _add_routes(app, labelling)
    add_guards(app, settings)
    return app


def _add_routes(app: FastAPI, labelling: Labelling) -> None:
    workspace = labelling.workspace

    async def call(function, *args: Any, **kwargs: Any) -> Any:
        """Blocking work (decoding, predicting, writing) in a thread; a one-line error as its status."""
        try:
            return await run_in_threadpool(function, *args, **kwargs)
        except (Conflict, Busy) as exc:
            raise ServiceError(409, str(exc)) from None
        except MedsegError as exc:
            raise ServiceError(404 if exc.reason == "no such image in the dataset" else 422, str(exc)) from None

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("medseg.label").joinpath("page.html").read_text(encoding="utf-8"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/project")
    async def project() -> dict[str, Any]:
        return labelling.project()

    @app.get("/v1/queue")
    async def queue() -> dict[str, Any]:
        return await call(labelling.queue)

    @app.get("/v1/items/{entry_id}")
    async def item(entry_id: str, slice: int = 0) -> dict[str, Any]:
        return await call(labelling.item, entry_id, slice)

    @app.get("/v1/items/{entry_id}/pixels")
    async def pixels(entry_id: str, slice: int = 0) -> Response:
        return _raw((await call(workspace.pixels, entry_id, slice)).astype(np.float32))

    @app.get("/v1/items/{entry_id}/labels")
    async def labels(entry_id: str, slice: int = 0) -> Response:
        wire, version = await call(workspace.labels, entry_id, slice)
        return _raw(wire, version)

    @app.put("/v1/items/{entry_id}/labels")
    async def save(entry_id: str, request: Request, slice: int = 0, mode: str = "scribble") -> dict[str, Any]:
        if mode not in MODES:
            raise ServiceError(422, f"mode {mode!r} is not one of {', '.join(MODES)}")
        base = request.headers.get("if-match")
        if not base:
            raise ServiceError(428, "say which version of the mask the labels start from (If-Match)")
        wire = np.frombuffer(await request.body(), np.uint8)
        return await call(labelling.save, entry_id, slice, wire, base, mode == "fill")

    @app.post("/v1/items/{entry_id}/accept")
    async def accept(entry_id: str, request: Request, slice: int = 0) -> dict[str, Any]:
        base = request.headers.get("if-match")
        if not base:
            raise ServiceError(428, "say which version of the mask the proposal replaces (If-Match)")
        return await call(labelling.accept, entry_id, slice, base)

    @app.get("/v1/items/{entry_id}/proposal")
    async def proposal(entry_id: str, slice: int = 0) -> Response:
        made = await call(labelling.proposals.proposal, entry_id)
        return _raw(_slice(made.labels, slice, entry_id))

    @app.get("/v1/items/{entry_id}/uncertainty")
    async def uncertainty(entry_id: str, slice: int = 0) -> Response:
        made = await call(labelling.proposals.proposal, entry_id)
        return _raw(_slice(made.uncertainty, slice, entry_id))

    @app.get("/v1/training")
    async def training() -> dict[str, Any]:
        return labelling.training()

    @app.post("/v1/training", status_code=202)
    async def train() -> dict[str, Any]:
        return asdict(await call(labelling.rounds.start))

    @app.delete("/v1/training", status_code=202)
    async def stop() -> dict[str, Any]:
        await call(labelling.rounds.stop)
        return {"stopping": True}

    @app.put("/v1/settings")
    async def settings(changes: Settings) -> dict[str, Any]:
        given = changes.model_dump(exclude_unset=True)
        if given.get("iterations") is not None:
            given["budget_minutes"] = None
        elif given.get("budget_minutes") is not None:
            given["iterations"] = None
        workspace.update(**given)
        return labelling.project()["settings"]


def _slice(planes: tuple[np.ndarray, ...], index: int, entry_id: str) -> np.ndarray:
    if not 0 <= index < len(planes):
        raise ServiceError(422, f"{entry_id}: has {len(planes)} slice(s), slice {index} requested")
    return planes[index]


"""The HTTP service: a FastAPI app over an :class:`InferenceQueue`.

``POST /v1/segment`` (multipart upload or raw body; ``?format=png|json|tiff|nifti|uncertainty``), ``GET /v1/model``,
``GET /healthz`` and ``GET /`` (a page to try the model in a browser). Every error is JSON ``{"error": "..."}``
without a traceback. Limits: body size (413), declared pixel count (413, before decoding; a volume's voxels, all
slices, count), queue length (503 with ``Retry-After``), request time (504). With a token, every endpoint but
``/healthz`` needs ``Authorization: Bearer <token>`` (compared in constant time).

Uploads are images (PNG, JPEG, TIFF, BMP, GIF), DICOM files or NIfTI files (``.nii``, ``.nii.gz``), told apart by
content (:mod:`medseg.serve.uploads`). An image, or a volume of one slice, is segmented in 2D: ``png`` is the mask
(binary tasks: {0, 255} grey; multi-class: a palette PNG whose pixel values are the class ids, shown in the legend
colours of :func:`~medseg.visualize.class_colour` with the background transparent), ``json`` the per-class
areas (pixels, and mm² when the upload says its pixel spacing) and objects, ``tiff`` the probabilities. A volume
of several slices is segmented as a volume: ``nifti`` is the label volume (``.nii.gz``, the upload's affine),
``json`` the per-class voxel counts and volumes in mm³; ``nifti`` also takes a single-slice DICOM or NIfTI.
``uncertainty`` is where the model is unsure (:mod:`medseg.inference.uncertainty`): an image's scaled entropy as an
8-bit PNG, a volume's as a float32 NIfTI; ``json`` gives its mean (``uncertainty``) and unsure share.
"""

from __future__ import annotations

import asyncio
import hmac
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from scipy import ndimage
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

import medseg
from medseg.data.intensity import nonzero_channels
from medseg.data.readers import ImageTooLarge, encode_array, mask_pixels
from medseg.inference.predict import VolumePrediction
from medseg.inference.predictor import Predictor
from medseg.inference.uncertainty import entropy_map, entropy_pixels, uncertainty_score, unsure_fraction
from medseg.visualize import class_colour, label_png
from medseg.errors import MedsegError
from medseg.log import get_logger
from medseg.serve.queue import InferenceQueue, QueueFull
from medseg.serve.uploads import Limits, Upload, decode_upload, nifti_labels, nifti_map

RAW_TYPES = ("image/png", "image/jpeg", "image/tiff", "image/bmp", "image/gif", "image/x-ms-bmp",
             "application/octet-stream", "application/dicom", "application/gzip", "application/x-gzip",
             "application/x-www-form-urlencoded", "")  # raw bodies, told apart by content: curl --data-binary
# sends its default form type, and a client may send none
FORMATS = ("png", "json", "tiff", "nifti", "uncertainty")
VOLUME_FORMATS = ("json", "nifti", "uncertainty")  # a volume of several slices has no 2D mask or probability image


@dataclass(frozen=True)
class ServeSettings:
    max_queue: int = 32  # requests waiting for the model; more get 503
    timeout_s: float = 60.0  # per request, upload to response
    max_body_bytes: int = 64 * 2**20
    max_pixels: int = 64_000_000  # declared pixels (a volume: voxels) of an upload, refused before decoding
    max_side: int = 32_768  # longest image side (volume axis)
    batch_size: int = 1  # > 1: same-size requests share forward passes (dynamic batching)
    batch_wait_ms: float = 5.0
    token: str | None = None


class ServiceError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: a body larger than ``limit`` bytes gets 413, from ``Content-Length`` or while it streams."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _error(413, f"body of {int(declared):,} bytes exceeds the limit of {self.limit:,}")(
                scope, receive, send)
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise ServiceError(413, f"body exceeds the limit of {self.limit:,} bytes")
            return message

        await self.app(scope, counting_receive, send)


def public_contract(predictor: Predictor) -> dict[str, Any]:
    """What ``GET /v1/model`` tells a client: no paths, no split ids."""
    contract, spec = predictor.contract, predictor.spec
    return {
        "model": contract.model.name, "in_channels": spec.channels, "n_classes": spec.n_classes,
        "classes": list(spec.class_names), "colours": [class_colour(k) for k in range(spec.n_classes)],
        "threshold": spec.threshold, "postprocess": spec.postprocess.describe(), "tta": spec.tta,
        "input": (f"resize {spec.resize}" if spec.resize else f"tiles of {spec.patch_size}" if spec.patch_size
                  else "whole image"),
        "ensemble_members": len(predictor.backends), "medseg_version": medseg.__version__,
        "trained_with": contract.medseg_version,
    }


def objects_json(labels: np.ndarray, predictor: Predictor,
                 spacing: tuple[float, ...] | None = None) -> dict[str, Any]:
    """Per foreground class: its id, name, legend colour, size and objects (connected components) with their
    bounding boxes. An image (``H x W``): ``area_px``, ``area_fraction``, ``area_mm2`` and boxes (x0, y0, x1, y1;
    exclusive ends); a volume (``X x Y x Z``): ``voxels``, ``volume_fraction``, ``volume_mm3`` and boxes over the
    voxel axes (i0, j0, k0, i1, j1, k1). Sizes in mm need ``spacing`` (mm per axis; else they are null)."""
    spec, volume = predictor.spec, labels.ndim == 3
    size, share, physical = (("voxels", "volume_fraction", "volume_mm3") if volume
                             else ("area_px", "area_fraction", "area_mm2"))
    unit = float(np.prod(spacing)) if spacing is not None else None
    classes = []
    for cls in range(1, spec.n_classes):
        region = labels == cls
        components, count = ndimage.label(region)
        sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
        boxes = ndimage.find_objects(components)
        total = int(sizes.sum())
        classes.append({
            "id": cls, "name": spec.class_names[cls], "colour": class_colour(cls), size: total,
            share: float(region.mean()), physical: total * unit if unit is not None else None,
            "objects": [{"bbox": _bbox(box), size: int(n)} for box, n in zip(boxes, sizes)],
        })
    extent = ({"shape": list(labels.shape)} if volume
              else {"width": int(labels.shape[1]), "height": int(labels.shape[0])})
    return {**extent, "spacing_mm": list(spacing) if spacing is not None else None, "threshold": spec.threshold,
            "postprocess": spec.postprocess.describe(), "classes": classes}


def _bbox(box: tuple[slice, ...]) -> list[int]:
    """x0, y0, x1, y1 of an image's object; i0, j0, k0, i1, j1, k1 of a volume's."""
    if len(box) == 2:
        return [box[1].start, box[0].start, box[1].stop, box[0].stop]
    return [part.start for part in box] + [part.stop for part in box]


def render(result: np.ndarray | VolumePrediction, upload: Upload, predictor: Predictor, fmt: str) -> Response:
    """The response body for a prediction, in the upload's own voxel order: ``result`` is an image's probabilities
    or a volume's prediction (CPU work: run it in a thread)."""
    spec = predictor.spec
    volume = isinstance(result, VolumePrediction)
    if volume:
        labels = upload.to_file(result.labels)
        entropy = None if result.uncertainty is None else upload.to_file(result.uncertainty)
    else:
        probabilities = upload.to_file(result)
        if fmt == "tiff":
            return Response(encode_array(probabilities.astype(np.float32), ".tif", stack=probabilities.ndim == 3),
                            media_type="image/tiff")
        labels, entropy = predictor.labels(probabilities), entropy_map(probabilities, spec.n_classes)
    if fmt == "uncertainty":
        return _uncertainty_response(entropy, upload)
    if fmt == "json":
        summary = objects_json(labels, predictor, upload.file_spacing)
        return JSONResponse({**summary, "uncertainty": uncertainty_score(entropy),
                             "unsure_fraction": unsure_fraction(entropy)})
    if fmt == "nifti":
        shape = upload.volume.orientation.shape if upload.volume.orientation is not None else labels.shape
        return Response(nifti_labels(labels.reshape(shape), upload), media_type="application/gzip",
                        headers={"Content-Disposition": 'attachment; filename="mask.nii.gz"'})
    if predictor.spec.n_classes == 2:
        return Response(encode_array(mask_pixels(labels, 2), ".png"), media_type="image/png")
    return Response(label_png(labels), media_type="image/png")


def _uncertainty_response(entropy: np.ndarray, upload: Upload) -> Response:
    """The scaled entropy map: an image's as an 8-bit grey PNG (255 most unsure), a volume's as a float32 NIfTI
    with the upload's affine."""
    if not upload.is_volume:
        return Response(encode_array(entropy_pixels(entropy), ".png"), media_type="image/png")
    return Response(nifti_map(entropy, upload), media_type="application/gzip",
                    headers={"Content-Disposition": 'attachment; filename="uncertainty.nii.gz"'})


def create_app(predictor: Predictor, settings: ServeSettings) -> FastAPI:
    """The service for one predictor (one model or a fold ensemble). ``app.state.inference`` is its queue."""
    inference = InferenceQueue(predictor, settings.max_queue, settings.batch_size, settings.batch_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        inference.start()
        get_logger().info("serving %s (%s); queue %d, batch %d, timeout %.0f s", predictor.contract.model.name,
                          public_contract(predictor)["input"], settings.max_queue, settings.batch_size,
                          settings.timeout_s)
        yield
        await run_in_threadpool(inference.stop)  # after the server has drained in-flight requests
        get_logger().info("stopped: every queued request was answered")

    app = FastAPI(title="medseg", version=medseg.__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.inference = inference
    _add_routes(app, predictor, inference, settings)
    add_guards(app, settings)
    return app


def add_guards(app: FastAPI, settings: ServeSettings) -> None:
    """What every medseg service puts in front of its routes: the body limit, the token check, and JSON errors for
    everything that goes wrong."""
    _add_error_handlers(app, settings)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)


def _add_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    """The token check, and JSON errors for everything that goes wrong."""

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Response:
        if settings.token and request.url.path != "/healthz":
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {settings.token}".encode()):
                return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        try:
            return await call_next(request)
        except ServiceError as exc:  # raised while the body streams in (BodyLimit)
            return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        get_logger().exception("internal error on %s", request.url.path)
        return _error(500, "internal error (logged on the server)")


def _add_routes(app: FastAPI, predictor: Predictor, inference: InferenceQueue, settings: ServeSettings) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "waiting": inference.waiting}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        return public_contract(predictor)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("medseg.serve").joinpath("page.html").read_text(encoding="utf-8"))

    @app.post("/v1/segment")
    async def segment(request: Request, format: str = "png") -> Response:
        """Admission (503 when full) comes before the body is read, so waiting requests hold no images; the
        timeout covers upload, queue and inference, and cancels a request the worker has not reached."""
        if format not in FORMATS:
            raise ServiceError(422, f"format {format!r} is not one of {', '.join(FORMATS)}")
        try:
            inference.admit()
        except QueueFull as exc:
            raise ServiceError(503, f"busy: {exc}", {"Retry-After": "1"}) from None
        try:
            async with asyncio.timeout(settings.timeout_s):
                upload = await _decode(request, predictor, settings, format)
                result = await _infer(upload, inference, format)
                return await run_in_threadpool(render, result, upload, predictor, format)
        except TimeoutError:
            raise ServiceError(504, f"the request took longer than {settings.timeout_s:g} s") from None
        finally:
            inference.leave()


async def _decode(request: Request, predictor: Predictor, settings: ServeSettings, fmt: str) -> Upload:
    """Upload -> a decoded image or volume, within the limits and fit for ``fmt``."""
    data = await _upload(request)
    if not data:
        raise ServiceError(400, "empty body: send an image")
    limits = Limits(settings.max_pixels, settings.max_side, predictor.spec.channels)
    try:
        nonzero = nonzero_channels(predictor.spec.normalize, predictor.spec.channels)
        upload = await run_in_threadpool(decode_upload, data, limits, "upload", nonzero)
    except ImageTooLarge as exc:
        raise ServiceError(413, exc.reason) from None
    except MedsegError as exc:
        raise ServiceError(422, exc.reason) from None
    if upload.is_volume and fmt not in VOLUME_FORMATS:
        raise ServiceError(422, f"the upload is a {upload.describe()} voxels: ask for format=nifti (the label "
                                f"volume), format=json (the volume of each class) or format=uncertainty")
    if fmt == "nifti" and upload.volume is None:
        raise ServiceError(422, "format=nifti needs a NIfTI or DICOM upload; this is a 2D image (ask for png, json "
                                "or tiff)")
    return upload


async def _infer(upload: Upload, inference: InferenceQueue, fmt: str) -> np.ndarray | VolumePrediction:
    """The queue -> an image's probabilities, or a volume's prediction (with its uncertainty where ``fmt`` needs
    it)."""
    try:
        future = (inference.submit_volume(upload.volume, uncertainty=fmt in ("json", "uncertainty"))
                  if upload.is_volume else inference.submit(upload.image, upload.statistics, upload.plane_spacing))
        return await asyncio.wrap_future(future)  # cancelling this cancels a queued job (stops a volume's)
    except QueueFull as exc:
        raise ServiceError(503, f"busy: {exc}", {"Retry-After": "1"}) from None
    except MedsegError as exc:
        raise ServiceError(422, exc.reason) from None


async def _upload(request: Request) -> bytes:
    """The image bytes of a multipart upload (first file field) or of a raw body."""
    try:
        return await _read_upload(request)
    except ClientDisconnect:
        raise ServiceError(400, "the client disconnected during the upload") from None


async def _read_upload(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=4)
        except (ServiceError, ClientDisconnect):
            raise
        except Exception as exc:
            raise ServiceError(400, f"malformed multipart body ({exc})") from None
        files = [value for value in form.values() if hasattr(value, "read")]
        if not files:
            raise ServiceError(400, "the multipart body has no file field (send the image as 'image')")
        return await files[0].read()
    if content_type not in RAW_TYPES:
        raise ServiceError(415, f"content type {content_type!r} is not an image; send PNG, JPEG, TIFF, "
                                "BMP, GIF, DICOM or NIfTI as the body or as a multipart upload")
    return await request.body()


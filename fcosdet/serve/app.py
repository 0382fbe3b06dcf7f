"""The HTTP server of `fcosdet serve`: a FastAPI app over one Detector and one MicroBatcher, run by uvicorn.

    POST /predict   an image: the raw body, or a multipart file (curl -F file=@a.jpg); query score_thr,
                    classes (names, comma-separated or repeated), max_det -> Results.to_dict() as JSON
    GET  /health    {"status": "ok", "queue": N}
    GET  /info      the model file, its classes and test settings, the server's limits
    GET  /metrics   Prometheus text: requests by endpoint and code, latency, batch sizes, errors by code

Every error is JSON {"error": "one line"} with its status: 400 bad input (undecodable bytes, bad query),
408 a body that does not arrive within --timeout-s, 413 an upload over --max-upload-mb or an image
header over --max-megapixels (never decoded), 503 + Retry-After when the queue is full or no result
came within --result-timeout-s, 500 a failure inside the model (the worker lives on).
"""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import h11
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from fcosdet.deploy.predictor import Detector
from fcosdet.serve.batching import MicroBatcher, QueueFull, padded_shape
from fcosdet.serve.limits import MB, Limits, Refused, decode_image, too_large
from fcosdet.serve.options import apply_options, parse_options

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
RETRY_AFTER_S = "1"


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """One server's batching and limits (the `fcosdet serve` flags; their defaults live in fcosdet.cli.serve)."""
    max_batch: int
    max_wait_ms: float
    queue_size: int
    limits: Limits
    keep_alive_s: float  # uvicorn's timeout_keep_alive: an idle connection between requests closes after this


class Metrics:
    """The Prometheus series of one app (its own registry: two apps in one process do not mix)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("fcosdet_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "code"], registry=self.registry)
        self.errors = Counter("fcosdet_errors", "error responses of POST /predict by status code", ["code"],
                              registry=self.registry)
        self.latency = Histogram("fcosdet_predict_seconds", "POST /predict latency, first body byte to response",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("fcosdet_batch_size", "images per Detector.predict_batch call",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("fcosdet_queue_depth", "images waiting for the model", registry=self.registry)


async def read_body(request: Request, limits: Limits) -> bytes:
    """The body, counted while it arrives: 413 above the limit (Content-Length first), 408 when it has
    not all arrived within limits.timeout_s (a slow or stalled client)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limits.max_upload_bytes:
        raise too_large(int(length), limits)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(limits.timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_upload_bytes:
                    raise too_large(size, limits)
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(408, f"the body did not arrive within {limits.timeout_s:g} s (--timeout-s); "
                           f"{size} bytes came") from None
    except ClientDisconnect:
        raise Refused(400, "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


async def _one_chunk(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def image_bytes(request: Request, limits: Limits) -> bytes:
    """The image file's bytes: the raw body, or the first file part of a multipart/form-data body."""
    body = await read_body(request, limits)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body
    try:
        form = await MultiPartParser(request.headers, _one_chunk(body), max_files=4, max_fields=16).parse()
    except MultiPartException as exc:
        raise Refused(400, f"the multipart body cannot be parsed ({exc.message})") from None
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise Refused(400, "the multipart body has no file part; send the image as a file "
                               "(curl -F file=@image.jpg)")
        return await files[0].read()
    finally:
        await form.close()


def _error(exc: Refused) -> JSONResponse:
    headers = dict(exc.headers)
    if exc.status in (408, 413):  # the rest of the body is never read: the connection cannot carry on
        headers["Connection"] = "close"
    return JSONResponse({"error": exc.reason}, status_code=exc.status, headers=headers)


async def _detect(request: Request, detector: Detector, batcher: MicroBatcher, limits: Limits) -> dict[str, Any]:
    """One /predict request end to end -> the JSON body; Refused for every answer but 200."""
    options = parse_options({k: request.query_params.getlist(k) for k in request.query_params.keys()}, detector)
    data = await image_bytes(request, limits)
    image = await asyncio.to_thread(decode_image, data, max_pixels=limits.max_pixels)  # off the event loop
    try:
        future = batcher.submit(image)
    except QueueFull:
        raise Refused(503, "the server is busy (its queue is full, --queue-size); retry shortly",
                      headers={"Retry-After": RETRY_AFTER_S}) from None
    try:
        results = await asyncio.wait_for(asyncio.wrap_future(future), timeout=limits.result_timeout_s)
    except TimeoutError:
        future.cancel()
        raise Refused(503, f"no result within {limits.result_timeout_s:g} s (--result-timeout-s): the server is "
                           f"overloaded; "
                           f"retry shortly", headers={"Retry-After": RETRY_AFTER_S}) from None
    except Exception as exc:  # noqa: BLE001 - a failure inside the model: a 500 for this request only
        raise Refused(500, f"the model failed on this image ({type(exc).__name__}: {exc})") from None
    return apply_options(results, options).to_dict()


def create_app(detector: Detector, *, model_path: Path, settings: ServeSettings) -> FastAPI:
    """The app; its lifespan starts and stops the batcher's worker thread."""
    metrics = Metrics()
    batcher = MicroBatcher(predict=detector.predict_batch, key_of=lambda im: padded_shape(detector, *im.size),
                           max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000.0,
                           queue_size=settings.queue_size, on_batch=metrics.batch_size.observe)
    metrics.queue_depth.set_function(lambda: batcher.depth)
    limits = settings.limits

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.stop)

    app = FastAPI(title="fcosdet", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.metrics = batcher, metrics

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        try:
            response: Response = JSONResponse(await _detect(request, detector, batcher, limits))
        except Refused as exc:
            response = _error(exc)
            metrics.errors.labels(code=str(exc.status)).inc()
        metrics.latency.observe(time.perf_counter() - start)
        metrics.requests.labels(endpoint="/predict", code=str(response.status_code)).inc()
        return response

    @app.get("/health")
    async def health() -> dict[str, Any]:
        metrics.requests.labels(endpoint="/health", code="200").inc()
        return {"status": "ok", "queue": batcher.depth}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        metrics.requests.labels(endpoint="/info", code="200").inc()
        return {"model": str(model_path), "classes": detector.class_names,
                "category_ids": [detector.category_id(label) for label in range(len(detector.class_names))],
                "device": str(detector.device), "scale": list(detector.config.data.scale),
                "test": asdict(detector.config.test),
                "serve": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                          "queue_size": settings.queue_size, "max_upload_mb": limits.max_upload_bytes / MB,
                          "max_megapixels": limits.max_pixels / 1e6, "timeout_s": limits.timeout_s,
                          "result_timeout_s": limits.result_timeout_s,
                          "keep_alive_s": settings.keep_alive_s}}

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.requests.labels(endpoint="/metrics", code="200").inc()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def header_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline on the request line and headers. uvicorn arms no timer
    before a request's headers are parsed (only the keep-alive one, between requests, which the next
    bytes cancel), so a client that sends half a request line would hold its connection forever: a
    connection still waiting for its headers (h11 IDLE) `timeout_s` after its first byte or its
    opening is closed."""

    class HeaderTimeoutProtocol(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                self._arm()  # bytes of a request line / headers, not all there yet
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self.header_timer is None:
                self.header_timer = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _expire(self) -> None:
            self.header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


def make_server(app: FastAPI, *, host: str, port: int, settings: ServeSettings) -> uvicorn.Server:
    """The uvicorn server (`server.run()` blocks; tests run it in a thread and set `should_exit`).
    A request's headers must arrive within --timeout-s, like its body (`header_timeout_protocol`)."""
    config = uvicorn.Config(app, host=host, port=port, timeout_keep_alive=settings.keep_alive_s,
                            http=header_timeout_protocol(settings.limits.timeout_s),
                            log_level="warning", access_log=False, lifespan="on")
    return uvicorn.Server(config)

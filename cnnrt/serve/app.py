"""The Starlette app: the KServe v2 REST endpoints, the draw-a-digit page and /metrics.

`create_app(sessions, ...)` takes already loaded sessions by served name, so the CLI, the tests
and the load benchmark build the same app. Each model has its own Batcher; inference runs in a
thread pool so the event loop keeps accepting, parsing and answering. On shutdown (uvicorn's
lifespan, after it has stopped accepting connections) every queued request is still answered.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

from .batching import Batcher, ShuttingDown
from .metrics import UNKNOWN_MODEL, Metrics
from .protocol import ApiError, decode_request, encode_response, model_metadata
from .settings import DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_DELAY_MS, DEFAULT_MAX_IMAGE_PIXELS

log = logging.getLogger("cnnrt.serve")


def create_app(sessions: dict, max_batch: int = DEFAULT_MAX_BATCH, max_delay_ms: float = DEFAULT_MAX_DELAY_MS,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
    """A Starlette app serving `sessions` ({name: cnnrt.Session}). The caller owns the sessions."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from .. import __version__

    if not sessions:
        raise ValueError("create_app needs at least one model")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be at least 1, got {max_body_bytes}")
    sessions = dict(sessions)
    metrics = Metrics(sessions)
    batchers = {name: Batcher(s, max_batch, max_delay_ms / 1000, on_batch=metrics.on_batch(name))
                for name, s in sessions.items()}
    for name, b in batchers.items():
        metrics.pending.labels(name).set_function(lambda b=b: b.pending)
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    state = {"ready": False}

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def session_for(request):
        name = request.path_params["name"]
        version = request.path_params.get("version")
        if name not in sessions:
            raise ApiError(404, f"unknown model '{name}'; this server has: {', '.join(sorted(sessions))}")
        if version is not None and version != "1":
            raise ApiError(404, f"model '{name}' has no version '{version}'; it has version '1'")
        return name, sessions[name]

    async def read_body(request) -> bytes:
        limit = max_body_bytes
        too_big = f"the request body is larger than the limit of {limit:,} bytes (cnnrt serve --max-body-bytes)"
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, f"bad Content-Length header {length!r}")
            if int(length) > limit:
                raise ApiError(413, f"the request body is {int(length):,} bytes, larger than the limit of "
                                    f"{limit:,} bytes (cnnrt serve --max-body-bytes)")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, too_big)
            chunks.append(chunk)
        return b"".join(chunks)

    def instrumented(endpoint: str):
        """Map ApiError to a JSON 4xx, anything unexpected to a JSON 500, and count and time each call."""
        def wrap(fn):
            async def handler(request):
                t0 = time.perf_counter()
                name = request.path_params.get("name")
                model = name if name in sessions else UNKNOWN_MODEL
                try:
                    response = await fn(request)
                except ApiError as e:
                    response = error(e.status, e.message)
                except ShuttingDown as e:
                    response = error(503, str(e))
                except Exception as e:  # a bug or a backend failure, never bad input: say so, keep serving
                    log.exception("%s %s failed", request.method, request.url.path)
                    response = error(500, f"internal error: {type(e).__name__}: {e}")
                metrics.requests.labels(model, endpoint, str(response.status_code)).inc()
                metrics.latency.labels(model, endpoint).observe(time.perf_counter() - t0)
                return response
            return handler
        return wrap

    def parameters(session, result) -> dict:
        # what actually ran this request: the backend, its precision, the dynamic batch it shared
        return {"backend": session.backend, "precision": session.precision,
                "batch_size": result.batch_images, "batch_requests": result.batch_requests}

    # ------------------------------------------------------------------ the protocol
    async def server_metadata(request):
        return JSONResponse({"name": "cnnrt", "version": __version__, "extensions": [],
                             "models": sorted(sessions)})

    async def live(request):
        return JSONResponse({"live": True})

    async def ready(request):
        if not state["ready"]:
            return error(503, "the server is not ready (starting or shutting down)")
        return JSONResponse({"ready": True})

    @instrumented("metadata")
    async def metadata(request):
        name, session = session_for(request)
        return JSONResponse(model_metadata(name, session))

    @instrumented("model_ready")
    async def model_ready(request):
        name, _ = session_for(request)
        if not state["ready"]:
            raise ApiError(503, f"model '{name}' is not ready (the server is starting or shutting down)")
        return JSONResponse({"name": name, "ready": True})

    @instrumented("infer")
    async def infer(request):
        name, session = session_for(request)
        body = await read_body(request)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ApiError(400, f"the request body is not JSON: {e}") from None
        x, outputs, request_id = decode_request(name, session, payload)
        result = await batchers[name].infer(x)
        return JSONResponse(encode_response(name, result.probabilities, outputs, request_id,
                                            parameters(session, result)))

    # ------------------------------------------------------------------ the page's own API
    async def index(request):
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    async def list_models(request):
        return JSONResponse({"models": [{"name": n, "backend": s.backend, "precision": s.precision,
                                         "input_shape": list(s.input_shape), "labels": s.labels}
                                        for n, s in sorted(sessions.items())]})

    @instrumented("classify")
    async def classify(request):
        """An image file as the raw body -> the model's input (the MNIST preprocessing) and its answer."""
        from .preprocess import image_to_input

        name, session = session_for(request)
        body = await read_body(request)
        loop = asyncio.get_running_loop()
        x = await loop.run_in_executor(None, image_to_input, body, session, max_image_pixels)
        result = await batchers[name].infer(x)
        p = result.probabilities[0]
        k = int(p.argmax())
        return JSONResponse({"model_name": name, "label": session.labels[k], "class_index": k,
                             "probabilities": p.tolist(), "labels": session.labels,
                             "input": {"shape": list(x.shape[1:]), "datatype": "UINT8", "data": x.ravel().tolist()},
                             "parameters": parameters(session, result)})

    async def metrics_endpoint(request):
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    async def http_error(request, exc):
        return error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # one thread per model at most: a session runs one call at a time anyway (its lock)
        executor = ThreadPoolExecutor(max_workers=len(sessions), thread_name_prefix="cnnrt-infer")
        for b in batchers.values():
            b.start(executor)
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await asyncio.gather(*(b.close() for b in batchers.values()))  # answer what is queued
            executor.shutdown(wait=True)

    routes = [
        Route("/", index),
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/models/{name}", metadata),
        Route("/v2/models/{name}/versions/{version}", metadata),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/api/models", list_models),
        Route("/api/models/{name}/classify", classify, methods=["POST"]),
        Route("/metrics", metrics_endpoint),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.batchers = batchers
    app.state.metrics = metrics
    app.state.sessions = sessions
    return app

"""``feedmill web``: the HTTP endpoint, an ASGI application (FastAPI) served by uvicorn.

- ``/api/v1/...``: the read API (``workers/web/api.py``; OpenAPI at ``/api/v1/openapi.json``),
  behind ``Authorization: Bearer`` when ``FEEDMILL_API_TOKEN`` is set;
- ``GET /feeds/NAME.atom``, ``/feeds/NAME.json``: each subscription as Atom and JSON Feed
  (``workers/web/feeds.py``), behind the same token (or ``?token=``, for feed readers);
- ``GET /websub/<feed id>``: a hub verifying our subscription intent;
- ``POST /websub/<feed id>``: a hub pushing new content (signed);
- ``GET /metrics``: Prometheus gauges of the whole pipeline, read from the
  database and broker at each scrape (``workers/metrics.py``);
- ``GET /healthz``: 200 when the process is up.

Endpoints that touch the database are plain functions: FastAPI runs them in its thread pool,
so a slow query never blocks the event loop.
"""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from schemas.settings import Settings
from tasks.websub import accept_push, verify_intent
from workers.metrics import pipeline_registry
from workers.web.api import API_PREFIX, api_router, require_token
from workers.web.feeds import feeds_router


def make_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="feedmill",
        summary="Processed articles: a change cursor, filters and full-text search.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    registry = pipeline_registry(settings)
    app.middleware("http")(require_token(settings))
    app.include_router(api_router(settings))
    app.include_router(feeds_router(settings))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/websub/{feed_id:int}", include_in_schema=False)
    def websub_verify(feed_id: int, request: Request) -> PlainTextResponse:
        answer = verify_intent(settings, feed_id, dict(request.query_params))
        return PlainTextResponse(answer.body, status_code=200 if answer.status == 200 else 404)

    @app.post("/websub/{feed_id:int}", include_in_schema=False)
    async def websub_push(feed_id: int, request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():  # a pushed document is capped like a fetched one
            body += chunk
            if len(body) > settings.max_body_bytes:
                return PlainTextResponse("too large\n", status_code=413)
        await run_in_threadpool(accept_push, settings, feed_id, bytes(body), request.headers.get("content-type"),
                                request.headers.get("x-hub-signature"))
        return Response(status_code=202)

    return app


def serve(settings: Settings, host: str, port: int) -> None:
    uvicorn.run(make_app(settings), host=host, port=port, log_level="warning", access_log=False)

"""The small HTTP endpoint feedmill exposes: WebSub callbacks, metrics and a health check.

A plain WSGI application, so it runs under any WSGI server; ``feedmill web``
serves it with the standard library's threaded server.

- ``GET /websub/<feed id>``: a hub verifying our subscription intent;
- ``POST /websub/<feed id>``: a hub pushing new content (signed);
- ``GET /metrics``: Prometheus gauges of the whole pipeline, read from the
  database and broker at each scrape (``workers/metrics.py``);
- ``GET /healthz``: 200 when the process is up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from schemas.settings import Settings
from tasks.websub import accept_push, verify_intent
from workers.metrics import metrics_app

_CALLBACK = re.compile(r"^/websub/(\d+)$")
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def make_app(settings: Settings) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    metrics = metrics_app(settings)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path == "/healthz":
            return _reply(start_response, "200 OK", b"ok\n")
        if path == "/metrics":
            return metrics(environ, start_response)
        match = _CALLBACK.match(path)
        if match is None:
            return _reply(start_response, "404 Not Found", b"not found\n")
        feed_id = int(match.group(1))
        if method == "GET":
            params = dict(parse_qsl(environ.get("QUERY_STRING", "")))
            answer = verify_intent(settings, feed_id, params)
            status = "200 OK" if answer.status == 200 else "404 Not Found"
            return _reply(start_response, status, answer.body.encode())
        if method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if length > settings.max_body_bytes:
                return _reply(start_response, "413 Content Too Large", b"too large\n")
            body = environ["wsgi.input"].read(length) if length else b""
            accept_push(settings, feed_id, body, environ.get("CONTENT_TYPE"), environ.get("HTTP_X_HUB_SIGNATURE"))
            return _reply(start_response, "202 Accepted", b"")
        return _reply(start_response, "405 Method Not Allowed", b"")

    return app


def _reply(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def serve(settings: Settings, host: str, port: int) -> None:
    with make_server(host, port, make_app(settings), _ThreadingWSGIServer, _QuietHandler) as server:
        server.serve_forever()

"""A local publisher for the benchmark: serves feed documents, answers conditional GETs.

Each document carries an ``ETag`` and a ``Last-Modified``; a request that
sends back either one (``If-None-Match``, or ``If-Modified-Since`` alone) for
an unchanged document gets ``304 Not Modified`` and no body, as a real
publisher's server or CDN would answer. The server listens on several loopback
addresses (127.0.0.1, 127.0.0.2, ...: all reach this machine on Linux), so
feeds can live on distinct hosts and feedmill's per-host politeness applies
per feed, as across a real subscription list, instead of queueing 200 feeds
behind one host.
"""

from __future__ import annotations

import hashlib
import selectors
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Document:
    body: bytes
    etag: str
    last_modified: str
    #: Seconds the server waits before answering: a slow publisher, so a run lasts a while.
    delay: float = 0.0


def loopback_address(index: int) -> str:
    """The ``index``-th loopback address: 127.0.0.1, 127.0.0.2, ..., 127.0.1.1, ..."""
    return f"127.0.{index // 254}.{index % 254 + 1}"


class Publisher:
    """A threaded HTTP server on ``addresses`` (one port), counting answers by status."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.documents: dict[str, Document] = {}
        self.answers: Counter[int] = Counter()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer((addresses[0], 0), self._handler())
        self.server.daemon_threads = True
        # A client that goes away mid-answer (a worker killed by the fault benchmark) is no error here.
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.port = self.server.server_address[1]
        self.listeners = [self.server.socket] + [_listen(address, self.port) for address in addresses[1:]]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def publish(self, path: str, body: bytes, delay: float = 0.0) -> None:
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        self.documents[path] = Document(body, etag, formatdate(usegmt=True), delay)

    def take_answers(self) -> Counter[int]:
        """Answers given since the last call, by HTTP status."""
        with self.lock:
            answers, self.answers = self.answers, Counter()
        return answers

    def close(self) -> None:
        self.stopping.set()
        self.thread.join()
        for listener in self.listeners:
            listener.close()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            for listener in self.listeners:
                selector.register(listener, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in selector.select(0.2):
                    try:
                        connection, client = key.fileobj.accept()  # type: ignore[union-attr]
                    except OSError:
                        continue
                    self.server.process_request(connection, client)  # a thread per connection

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        publisher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                document = publisher.documents.get(self.path)
                if document is None:
                    self._send(404, b"not found", {"Content-Type": "text/plain"})
                    return
                if document.delay:
                    time.sleep(document.delay)
                headers = {
                    "Content-Type": "application/rss+xml; charset=utf-8",
                    "ETag": document.etag,
                    "Last-Modified": document.last_modified,
                }
                if_none_match = self.headers.get("If-None-Match")
                if if_none_match is not None:
                    unchanged = document.etag in (tag.strip() for tag in if_none_match.split(","))
                else:
                    unchanged = self.headers.get("If-Modified-Since") == document.last_modified
                self._send(304 if unchanged else 200, b"" if unchanged else document.body, headers)

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if status != 304:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with publisher.lock:
                    publisher.answers[status] += 1

        return Handler


def _listen(address: str, port: int) -> socket.socket:
    return socket.create_server((address, port), backlog=128)

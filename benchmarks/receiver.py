"""A local webhook receiver for the delivery benchmark and tests: the subscriber, failing on cue.

Call n (1-based) is answered ``plan.get(n, status)``; ``"stall"`` waits ``stall`` seconds first
(longer than the sender's timeout) and then answers ``status``. Every call is kept with its
headers (lower-cased), body and the status it got, recorded once answered.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    def __init__(self, plan: dict[int, Any] | None = None, stall: float = 15.0, status: int = 200) -> None:
        self.plan, self.stall, self.status = plan or {}, stall, status
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._started = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver._started += 1
                    answer = receiver.plan.get(receiver._started, receiver.status)
                if answer == "stall":
                    time.sleep(receiver.stall)
                    answer = receiver.status
                with receiver.lock:
                    receiver.calls.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                                           "status": answer})
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def acknowledged(self) -> set[int]:
        """The article ids of the events answered with a 2xx."""
        with self.lock:
            return {json.loads(c["body"])["data"]["id"] for c in self.calls if 200 <= c["status"] < 300}

    def close(self) -> None:
        self.server.shutdown()

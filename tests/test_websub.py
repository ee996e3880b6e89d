"""WebSub end to end: a local hub, `feedmill web`, a real worker; pushes land in seconds."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import httpx
import pytest

from schemas.settings import Settings
from tasks.websub import signature_valid
from tests.conftest import (
    Publisher,
    WorkerProcess,
    feedmill,
    feedmill_env,
    free_port,
    use_broker,
)


def websub_feed(hub: str, self_url: str, items: list[tuple[str, str]]) -> str:
    entries = "".join(f"<item><title>{t}</title><guid>{g}</guid><description>Text of {t}.</description></item>" for g, t in items)
    return (
        '<?xml version="1.0"?><rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom"><channel>'
        f'<title>Pushed</title><atom:link rel="hub" href="{hub}"/><atom:link rel="self" href="{self_url}"/>'
        f"{entries}</channel></rss>"
    )


class Hub:
    """A WebSub hub in miniature: takes a subscription, verifies intent, later pushes content."""

    def __init__(self) -> None:
        self.subscriptions: list[dict[str, str]] = []
        self.verified = threading.Event()
        self.verification_answer: str | None = None
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                form = dict(parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
                hub.subscriptions.append(form)
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()
                threading.Thread(target=hub.verify, args=(form,), daemon=True).start()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hub"

    def verify(self, form: dict[str, str]) -> None:
        params = {"hub.mode": "subscribe", "hub.topic": form["hub.topic"], "hub.challenge": "c-8231", "hub.lease_seconds": "3600"}
        self.verification_answer = httpx.get(form["hub.callback"], params=params).text
        self.verified.set()

    def push(self, body: str, secret: str | None = None) -> int:
        form = self.subscriptions[-1]
        signature = hmac.new((secret or form["hub.secret"]).encode(), body.encode(), hashlib.sha256).hexdigest()
        response = httpx.post(
            form["hub.callback"],
            content=body.encode(),
            headers={"Content-Type": "application/rss+xml", "X-Hub-Signature": f"sha256={signature}"},
        )
        return response.status_code

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def hub() -> Hub:
    server = Hub()
    yield server
    server.close()




def test_subscribe_verify_and_push(
    settings: Settings, publisher: Publisher, hub: Hub, start_worker: Callable[..., WorkerProcess]
) -> None:
    feed_url = publisher.url("/pushed.xml")
    publisher.add("/pushed.xml", websub_feed(hub.url, feed_url, [("g1", "First")]))
    assert feedmill(settings, "feeds", "add", "--websub", feed_url).returncode == 0

    port = free_port()
    settings = dataclasses.replace(settings, websub_callback_url=f"http://127.0.0.1:{port}")
    web = subprocess.Popen(
        [sys.executable, "-m", "workers", "web", "--host", "127.0.0.1", "--port", str(port)],
        env=feedmill_env(settings), cwd=settings.home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        worker = start_worker(settings)
        assert feedmill(settings, "run", "--once", "--no-workers").returncode == 0

        use_broker(settings).send_task("feedmill.dispatch", queue="schedule")  # the periodic dispatch
        assert hub.verified.wait(60), worker.output()[-2000:]
        form = hub.subscriptions[-1]
        assert form["hub.mode"] == "subscribe" and form["hub.topic"] == feed_url
        assert len(form["hub.secret"]) == 64
        assert hub.verification_answer == "c-8231"
        shown = json.loads(feedmill(settings, "feeds", "show", feed_url, "--json").stdout)
        assert shown["websub"]["state"] == "active" and shown["websub"]["hub"] == hub.url

        forged = websub_feed(hub.url, feed_url, [("g1", "First"), ("evil", "Forged")])
        assert hub.push(forged, secret="not-the-secret") == 202  # answered, but dropped
        pushed_at = time.monotonic()
        assert hub.push(websub_feed(hub.url, feed_url, [("g1", "First"), ("g2", "Second")])) == 202
        while True:
            titles = {json.loads(line)["title"]: json.loads(line)["stage"] for line in feedmill(settings, "export").stdout.splitlines()}
            if titles.get("Second") == "done":
                break
            assert time.monotonic() - pushed_at < 30, titles
            time.sleep(0.3)
        assert "Forged" not in titles and set(titles) == {"First", "Second"}
        assert publisher.hits("/pushed.xml") == 2  # `feeds add` and the first poll; pushed content needed no poll
        history = json.loads(feedmill(settings, "feeds", "show", feed_url, "--json").stdout)["history"]
        assert [(h["kind"], h["new_entries"]) for h in history][:1] == [("push", 1)]
    finally:
        web.terminate()
        web.wait(10)


def test_signature_check() -> None:
    body = b"<rss/>"
    good = hmac.new(b"k", body, hashlib.sha1).hexdigest()
    assert signature_valid("k", body, f"sha1={good}")
    assert not signature_valid("k", body + b" ", f"sha1={good}")
    assert not signature_valid("k", body, f"md5={good}")
    assert not signature_valid("k", body, None)


def test_web_listens_on_loopback_unless_told_otherwise(sqlite_settings: Settings) -> None:
    """`feedmill web` without --host answers on 127.0.0.1 and on no other address of the machine."""
    port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "workers", "web", "--port", str(port)], env=feedmill_env(sqlite_settings),
                           cwd=sqlite_settings.home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and web.poll() is None
                time.sleep(0.2)
        with pytest.raises(httpx.ConnectError):  # another loopback address reaches the machine, not the server
            httpx.get(f"http://127.0.0.2:{port}/healthz")
    finally:
        web.terminate()
        web.wait(10)

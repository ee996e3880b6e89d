"""Shared fixtures: a publisher HTTP server, real services, real worker processes.

Integration tests need Redis and PostgreSQL. Outside CI they skip with a
clear message when a service is missing; in CI (CI=true) a missing service
fails the test instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from schemas.db import migrate
from schemas.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
REDIS_URL = os.environ.get("FEEDMILL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_ADMIN_URL = os.environ.get("FEEDMILL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_service(name: str, check: Callable[[], None]) -> None:
    try:
        check()
    except Exception as exc:
        message = f"{name} is not reachable ({exc})"
        if IN_CI:
            pytest.fail(f"{message}; CI must run every integration test")
        pytest.skip(f"{message}; start it to run this integration test")


#: The BBC News dataset: read where it lies, beside the repository, never copied into it.
BBC_CORPUS = ROOT.parent / "shared" / "data" / "bbc"


@pytest.fixture(scope="session")
def bbc_corpus() -> Path:
    """The BBC corpus's folder; its evaluations skip without it, except in CI, where they fail."""
    if not BBC_CORPUS.is_dir():
        if IN_CI:
            pytest.fail(f"{BBC_CORPUS} is missing; CI must run the BBC evaluation")
        pytest.skip(f"{BBC_CORPUS} is not here (shared/ sits beside the repo)")
    return BBC_CORPUS


# ------------------------------------------------------------------ publisher


@dataclasses.dataclass
class Resource:
    body: bytes
    content_type: str = "application/rss+xml; charset=utf-8"
    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    etag: str | None = None
    delay: float = 0.0
    #: Sent instead of ``body`` with chunked encoding, ``drip`` seconds apart (endless or slow bodies).
    chunks: Callable[[], Iterator[bytes]] | None = None
    drip: float = 0.0


class Publisher:
    """A local HTTP server playing a feed publisher; answers conditional GETs."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        #: (path, start time, end time) of every answered request, for politeness checks.
        self.timeline: list[tuple[str, float, float]] = []
        self.lock = threading.Lock()
        publisher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                started = time.monotonic()
                try:
                    self._answer()
                finally:
                    with publisher.lock:
                        publisher.timeline.append((self.path, started, time.monotonic()))

            def _answer(self) -> None:
                publisher.requests.append((self.path, dict(self.headers)))
                resource = publisher.resources.get(self.path)
                if resource is None:
                    self._send(404, b"not found", {"Content-Type": "text/plain"})
                    return
                if resource.delay:
                    time.sleep(resource.delay)
                headers = {"Content-Type": resource.content_type, **resource.headers}
                if resource.etag:
                    headers["ETag"] = resource.etag
                    if self.headers.get("If-None-Match") == resource.etag:
                        self._send(304, b"", headers)
                        return
                if resource.chunks is not None:
                    self._stream(resource, headers)
                    return
                self._send(resource.status, resource.body, headers)

            def _stream(self, resource: Resource, headers: dict[str, str]) -> None:
                self.send_response(resource.status)
                for key, value in {**headers, "Transfer-Encoding": "chunked"}.items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    for chunk in resource.chunks():
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                        time.sleep(resource.drip)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as it should
                self.close_connection = True

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if status != 304:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if status != 304:
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, body: bytes | str, **kwargs: object) -> str:
        data = body.encode() if isinstance(body, str) else body
        self.resources[path] = Resource(data, **kwargs)  # type: ignore[arg-type]
        return self.url(path)

    def hits(self, path: str) -> int:
        return sum(1 for requested, _ in self.requests if requested == path)

    def max_concurrent(self) -> int:
        """Most requests the server was answering at one moment."""
        events = sorted([(start, 1) for _, start, _ in self.timeline] + [(end, -1) for _, _, end in self.timeline])
        current = peak = 0
        for _, change in events:
            current += change
            peak = max(peak, current)
        return peak

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    server = Publisher()
    yield server
    server.close()


def rss(items: list[dict[str, str]], title: str = "Test feed") -> str:
    """A small RSS 2.0 document; each item dict maps element name to (escaped) text."""
    body = "".join(
        "<item>" + "".join(f"<{k}>{v}</{k}>" for k, v in item.items()) + "</item>" for item in items
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>{title}</title><link>https://example.org/</link>{body}</channel></rss>"
    )


# ------------------------------------------------------------------ settings and databases


def make_settings(home: Path, database_url: str | None = None, broker_url: str | None = None) -> Settings:
    return dataclasses.replace(
        Settings.from_env(),
        home=home,
        database_url=database_url or f"sqlite:///{home / 'feedmill.db'}",
        broker_url=broker_url or "filesystem://localhost/",
        allow_private_networks=True,
        fetch_timeout=2.0,
        fetch_deadline=4.0,
        host_min_interval=0.0,
        full_text="off",  # tests never fetch pages they did not serve; full-text tests turn it on per feed
    )


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    settings = make_settings(tmp_path)
    migrate(settings)
    return settings


def _postgres_reachable() -> None:
    import psycopg

    psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()


def _redis_reachable() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    require_service("PostgreSQL", _postgres_reachable)
    import psycopg

    name = f"feedmill_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    from schemas.db import get_engine, normalize_url

    get_engine(normalize_url(url)).dispose()
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> str:
    """A Redis database emptied for this test."""
    require_service("Redis", _redis_reachable)
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    return REDIS_URL


@pytest.fixture(params=["embedded", "postgres+redis"])
def settings(request: pytest.FixtureRequest) -> Settings:
    """Each backend in turn, migrated: SQLite with the filesystem broker, PostgreSQL with Redis."""
    return request.getfixturevalue("sqlite_settings" if request.param == "embedded" else "postgres_settings")


def add_feed(settings: Settings, url: str) -> int:
    """A feed row, as `feedmill feeds add` makes it; returns its id."""
    from schemas.db import session_scope
    from schemas.models import Feed

    with session_scope(settings) as session:
        feed = Feed(url=url)
        session.add(feed)
        session.flush()
        return feed.id


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded (its output shown if not)."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def export(settings: Settings) -> list[dict[str, Any]]:
    """Every stored article as `feedmill export` writes it."""
    out = settings.home / "export.jsonl"
    ok(feedmill(settings, "export", "--format", "jsonl", "--output", str(out)))
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture
def postgres_settings(tmp_path: Path, postgres_url: str, redis_url: str) -> Settings:
    settings = make_settings(tmp_path, postgres_url, redis_url)
    migrate(settings)
    return settings


# ------------------------------------------------------------------ processes


def feedmill_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FEEDMILL_HOME=str(settings.home),
        FEEDMILL_DATABASE_URL=settings.database_url,
        FEEDMILL_BROKER_URL=settings.broker_url,
        FEEDMILL_ALLOW_PRIVATE_NETWORKS="1",
        FEEDMILL_FETCH_TIMEOUT=str(settings.fetch_timeout),
        FEEDMILL_FETCH_DEADLINE=str(settings.fetch_deadline),
        FEEDMILL_DISPATCH_EVERY="1",
        FEEDMILL_HOST_MIN_INTERVAL=str(settings.host_min_interval),
        FEEDMILL_HOST_MAX_CONCURRENT=str(settings.host_max_concurrent),
        FEEDMILL_WEBSUB_CALLBACK_URL=settings.websub_callback_url,
        FEEDMILL_FULL_TEXT=settings.full_text,
        FEEDMILL_TASK_EVENTS="1" if settings.task_events else "0",
    )
    return env


def feedmill(settings: Settings, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run the real ``feedmill`` command line as a child process."""
    return subprocess.run(
        [sys.executable, "-m", "workers", *args],
        env=feedmill_env(settings),
        cwd=settings.home,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class WorkerProcess:
    """A real ``feedmill worker`` child process (prefork pool)."""

    def __init__(self, settings: Settings, concurrency: int = 2, queues: str | None = None) -> None:
        self.log_path = settings.home / f"worker-{uuid.uuid4().hex[:6]}.log"
        args = [sys.executable, "-m", "workers", "worker", "--concurrency", str(concurrency)]
        if queues:
            args += ["--queues", queues]
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            args, env=feedmill_env(settings), cwd=settings.home, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.output()}")
            if "ready." in self.output():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        from workers.service import stop_process

        stop_process(self.process, grace=20)
        self.log.close()


@pytest.fixture
def start_worker() -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def _start(settings: Settings, **kwargs: object) -> WorkerProcess:
        worker = WorkerProcess(settings, **kwargs)  # type: ignore[arg-type]
        started.append(worker)
        return worker

    yield _start
    for worker in started:
        worker.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def use_broker(settings: Settings) -> Celery:
    """Make this test process enqueue to ``settings``' broker, as the CLI would."""
    from workers.celery_app import create_app

    app = create_app(settings)
    app.set_current()
    app.set_default()
    return app

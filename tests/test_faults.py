"""Fault tests: real worker and scheduler processes, real PostgreSQL and Redis, faults while work flows.

Each test publishes a fixed set of feeds (``N_FEEDS`` x ``N_ITEMS`` entries), runs them through
``feedmill worker`` and ``feedmill scheduler`` processes, injects a fault at a moment chosen from
what the database and the publisher say is in flight (a fetch is being answered, some feeds are
stored and some are not), and ends with ``assert_stored_exactly_once``: every expected entry is
one article row, at stage ``done`` with status ``ok``, no duplicates, nothing else, and no dead
letters. What each test proves, its timing and its limits: docs/reliability.md, "Fault tests".

These never skip in CI (conftest's ``require_service``); they use the shared PostgreSQL only
through fresh databases and the shared Redis only through ``FEEDMILL_TEST_REDIS_URL``'s
database, and start their own ``redis-server`` when they need to kill or flush one.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from schemas.db import migrate, session_scope
from schemas.models import Article, Failure, Feed, Poll
from schemas.settings import Settings
from tests.conftest import (
    POSTGRES_ADMIN_URL,
    Publisher,
    WorkerProcess,
    add_feed,
    feedmill,
    feedmill_env,
    free_port,
    make_settings,
    ok,
    require_service,
    rss,
    use_broker,
)
from tests.tcp_proxy import TcpProxy

N_FEEDS = 6
N_ITEMS = 10
#: Seconds the publisher takes to answer each feed. A worker of concurrency 2 fetches two
#: feeds at a time, so the feeds arrive over several seconds and a fault injected "while a
#: fetch is in flight and k feeds are stored" lands in the middle of the run.
FETCH_DELAY = 1.0
#: Per-host fetch slots (all feeds are on 127.0.0.1). A fetch killed mid-flight, or whose
#: release hit a dead database, holds its slot until the slot's lease ends (fetch deadline
#: + 30 s); enough slots keep that from stalling the run (politeness has its own tests).
HOST_SLOTS = 10
#: Recovery settings for the tests that lose messages: sweep every second for work
#: untouched 3 s, and free a feed whose fetch was lost after 6 s.
FAST_RECOVERY = {
    "FEEDMILL_SWEEP_EVERY": "1",
    "FEEDMILL_STUCK_AFTER": "3",
    "FEEDMILL_LEASE_SECONDS": "6",
    "FEEDMILL_BATCH_SIZE": "3",
}
#: Longest a run may take to finish after its last fault.
FINISH_TIMEOUT = 90.0

Expected = dict[str, set[str]]
T = TypeVar("T")
R = TypeVar("R")


# ------------------------------------------------------------------ feeds and checks


def publish(publisher: Publisher, feeds: int = N_FEEDS, items: int = N_ITEMS, delay: float = FETCH_DELAY,
            prefix: str = "feed") -> Expected:
    """Serve ``feeds`` feeds of ``items`` distinct entries; returns feed URL -> expected GUIDs."""
    words = "river market council school harbour festival railway museum hospital bridge orchard".split()
    expected: Expected = {}
    for f in range(feeds):
        entries = []
        for i in range(items):
            topic = " ".join(words[(f * 7 + i * 3 + k) % len(words)] for k in range(6))
            entries.append({
                "title": f"{prefix} {f} story {i}: {topic}",
                "guid": f"urn:feedmill-test:{prefix}-{f}-{i}",
                "link": f"https://example.org/{prefix}/{f}/{i}",
                "description": f"<p>Report {f}-{i} on the {topic}. Number {f * 100 + i} in the series.</p>",
            })
        url = publisher.add(f"/{prefix}{f}.xml", rss(entries, title=f"{prefix} {f}"), delay=delay)
        expected[url] = {e["guid"] for e in entries}
    return expected


def subscribe(settings: Settings, expected: Expected) -> None:
    for url in expected:
        add_feed(settings, url)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    feeds_stored: int  # feeds with a parsed poll
    articles: int
    done: int

    def __str__(self) -> str:
        return f"{self.feeds_stored} feed(s) stored, {self.done}/{self.articles} article(s) done"


def snapshot(settings: Settings) -> Snapshot:
    with session_scope(settings) as session:
        stored = session.scalar(select(func.count(func.distinct(Poll.feed_id))).where(Poll.status == "parsed")) or 0
        articles = session.scalar(select(func.count()).select_from(Article)) or 0
        done = session.scalar(
            select(func.count()).select_from(Article).where(Article.stage == "done", Article.status == "ok")
        ) or 0
    return Snapshot(stored, articles, done)


def fetches_in_flight(publisher: Publisher) -> int:
    """Requests the publisher has started and not finished answering."""
    return len(publisher.requests) - len(publisher.timeline)


def wait_until(condition: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> float:
    """Poll ``condition`` until true; fail with ``describe()`` after ``timeout`` s. Returns seconds waited."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not reached after {timeout:g} s: {describe()}")
        time.sleep(0.05)
    return time.monotonic() - started


TASK_LINE = re.compile(r"Task (feedmill\.(?:clean|dedupe|classify))\[([0-9a-f-]+)\] (received|succeeded|retry|raised)")


def article_batches_held(worker: WorkerProcess) -> int:
    """Article-stage messages this worker has taken (received) and not finished: executing or
    reserved, so unacknowledged in the broker. Read from its log (Celery's INFO lines)."""
    held: set[str] = set()
    for _name, task_id, event in TASK_LINE.findall(worker.output()):
        if event == "received":
            held.add(task_id)
        else:
            held.discard(task_id)
    return len(held)


def wait_mid_run(settings: Settings, publisher: Publisher, feeds_stored: int, timeout: float = 60,
                 holding: WorkerProcess | None = None) -> Snapshot:
    """Wait until ``feeds_stored`` feeds are stored and another feed's fetch is being answered
    (and, with ``holding``, that worker holds an unfinished article batch)."""
    state: list[Snapshot] = []

    def ready() -> bool:
        if fetches_in_flight(publisher) < 1 or (holding is not None and article_batches_held(holding) < 1):
            return False
        state[:] = [snapshot(settings)]
        return state[0].feeds_stored >= feeds_stored and fetches_in_flight(publisher) >= 1

    wait_until(ready, timeout, lambda: f"{snapshot(settings)}, {fetches_in_flight(publisher)} fetch(es) in flight")
    moment = state[0]
    print(f"{time.strftime('%X')} fault at {moment}", flush=True)
    assert moment.feeds_stored < len(publisher.resources), f"the fault would land after the run: {moment}"
    return moment


def wait_all_done(settings: Settings, expected: Expected, timeout: float = FINISH_TIMEOUT,
                  logs: Callable[[], str] = lambda: "") -> float:
    total = sum(map(len, expected.values()))
    return wait_until(
        lambda: snapshot(settings).done >= total, timeout,
        lambda: f"{snapshot(settings)} of {total} expected\n{logs()[-4000:]}",
    )


def assert_stored_exactly_once(settings: Settings, expected: Expected, *, dead_letters: bool = False) -> None:
    """Every expected entry is stored once, through every stage; nothing else is stored."""
    with session_scope(settings) as session:
        rows = session.execute(
            select(Feed.url, Article.guid, Article.stage, Article.status, Article.error)
            .join(Feed, Feed.id == Article.feed_id)
        ).all()
        failures = session.execute(select(Failure.task, Failure.subject, Failure.error)).all()
    keys = Counter((url, key) for url, key, *_ in rows)
    duplicates = sorted(key for key, count in keys.items() if count > 1)
    assert not duplicates, f"stored more than once: {duplicates}"
    wanted = {(url, guid) for url, guids in expected.items() for guid in guids}
    assert set(keys) == wanted, f"missing {sorted(wanted - set(keys))}, unexpected {sorted(set(keys) - wanted)}"
    assert len(rows) == len(wanted) == sum(map(len, expected.values()))
    unfinished = [(url, key, stage, status, error) for url, key, stage, status, error in rows
                  if (stage, status) != ("done", "ok")]
    assert not unfinished, f"not through every stage: {unfinished}"
    if not dead_letters:
        assert not failures, f"dead letters recorded: {failures}"


# ------------------------------------------------------------------ processes


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (a Celery worker's pool processes), from /proc."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


def in_parallel(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``function`` on every item at once, in threads (starting or stopping several processes)."""
    items = list(items)
    results: list[R | None] = [None] * len(items)
    errors: list[BaseException] = []

    def call(index: int) -> None:
        try:
            results[index] = function(items[index])
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


class SchedulerProcess:
    """A real ``feedmill scheduler`` (celery beat) child process with its own home for its schedule file."""

    def __init__(self, settings: Settings, name: str = "scheduler") -> None:
        home = settings.home / name
        home.mkdir(parents=True, exist_ok=True)
        env = feedmill_env(settings)
        env["FEEDMILL_HOME"] = str(home)
        self.log_path = settings.home / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workers", "scheduler"], env=env, cwd=home, stdout=self.log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        from workers.service import stop_process

        stop_process(self.process, grace=10)
        self.log.close()


@pytest.fixture
def start_scheduler() -> Iterator[Callable[..., SchedulerProcess]]:
    started: list[SchedulerProcess] = []

    def _start(settings: Settings, name: str = "scheduler") -> SchedulerProcess:
        scheduler = SchedulerProcess(settings, name)
        started.append(scheduler)
        return scheduler

    yield _start
    for scheduler in started:
        scheduler.stop()


def all_output(settings: Settings) -> str:
    """Every log the test's processes wrote under its home, for failure messages."""
    return "\n".join(f"== {path.name}\n{path.read_text(errors='replace')[-3000:]}" for path in sorted(settings.home.glob("*.log")))


@pytest.fixture
def recovery_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FAST_RECOVERY.items():
        monkeypatch.setenv(name, value)


class RedisServer:
    """A ``redis-server`` owned by one test, on a free port, which the test may kill, restart or flush."""

    def __init__(self, folder: Path, password: str | None = None) -> None:
        require_service("redis-server", lambda: shutil.which("redis-server") or (_ for _ in ()).throw(
            FileNotFoundError("no redis-server binary on PATH")))
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self):  # noqa: ANN201
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_connect_timeout=2)

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(self.folder)]
        if self.password:
            args += ["--requirepass", self.password]
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client().ping()
                return
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {(self.folder / 'redis.log').read_text()}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        self.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def with_url(url: str, host: str, port: int) -> str:
    return make_url(url).set(host=host, port=port).render_as_string(hide_password=False)


class ServiceProcess:
    """A real ``feedmill run`` (the supervisor) in a process group of its own, output to a log."""

    def __init__(self, settings: Settings, concurrency: int = 2) -> None:
        self.settings = settings
        self.log_path = settings.home / f"run-{uuid.uuid4().hex[:6]}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workers", "run", "--concurrency", str(concurrency)], env=feedmill_env(settings),
            cwd=settings.home, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.wait_ready(1)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, workers: int, timeout: float = 60) -> None:
        """Until ``workers`` worker starts have said "ready." (a restarted worker says it again)."""
        wait_until(lambda: self.output().count("ready.") >= workers, timeout,
                   lambda: f"{self.output().count('ready.')} worker start(s) ready\n{self.output()[-3000:]}")

    def child(self, name: str) -> int:
        """The pid of the supervisor's worker or scheduler (celery beat) process."""
        wanted = {"worker": " worker ", "scheduler": " beat "}[name]
        for pid in child_pids(self.process.pid):
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if wanted in cmdline.read().replace(b"\0", b" ").decode():
                    return pid
        raise AssertionError(f"no {name} child running\n{self.output()[-3000:]}")

    def group(self) -> list[int]:
        """Live processes of the supervisor's process group (zombies are gone for good already)."""
        pids = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.process.pid and fields[0] != "Z":
                pids.append(int(entry))
        return pids

    def status(self) -> dict:
        import json

        return json.loads(ok(feedmill(self.settings, "status", "--json")))

    def terminate(self, timeout: float = 30) -> float:
        """SIGTERM; the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture
def start_service() -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def _start(settings: Settings, **kwargs: object) -> ServiceProcess:
        service = ServiceProcess(settings, **kwargs)  # type: ignore[arg-type]
        started.append(service)
        return service

    yield _start
    for service in started:
        service.stop()


class PostgresServer:
    """A PostgreSQL cluster owned by one test (initdb in a temporary folder, a free port), which it may
    crash and start again. As root, the server runs as the ``postgres`` user, as PostgreSQL demands."""

    def __init__(self) -> None:
        require_service("PostgreSQL binaries", lambda: shutil.which("initdb") and shutil.which("pg_ctl") or (
            _ for _ in ()).throw(FileNotFoundError("no initdb/pg_ctl on PATH")))
        self.folder = Path(tempfile.mkdtemp(prefix="feedmill-pg-"))
        self.port = free_port()
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.folder / "data"), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.start()

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_owner, *args], check=True, capture_output=True, timeout=60)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off "
                   "-c full_page_writes=off -c max_connections=100 -c shared_buffers=32MB")
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-o", options, "-l", str(self.folder / "log"), "-w", "start")

    def crash(self) -> None:
        """Stop at once, as a crash would (``-m immediate``): clients see their connections drop."""
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")

    def close(self) -> None:
        subprocess.run([*self.as_owner, "pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.close()


# ------------------------------------------------------------------ the tests


#: Makes every article stage write take 50 ms longer (3 rows a batch), so that article batches
#: are in flight for a while and a kill lands on one.
SLOW_ARTICLES = """
CREATE FUNCTION feedmill_test_slow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END $$;
CREATE TRIGGER feedmill_test_slow BEFORE UPDATE ON articles FOR EACH ROW EXECUTE FUNCTION feedmill_test_slow();
"""


def test_service_restarts_sigkilled_children_and_loses_nothing(
    postgres_settings: Settings, postgres_url: str, publisher: Publisher,
    start_service: Callable[..., ServiceProcess],
) -> None:
    """`feedmill run` alone (no outside supervisor, default sweeper and lease settings) while
    SIGKILL hits its worker's pool, its worker's main process holding an article batch, and its
    scheduler: it restarts what died (counted in `status`), the lost messages come back through
    the recovery look (not the 10-minute sweeper or the 5-minute lease), every entry is stored
    once, and SIGTERM then stops it with nothing of its process group left."""
    settings = dataclasses.replace(postgres_settings, host_max_concurrent=HOST_SLOTS)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(SLOW_ARTICLES)
    expected = publish(publisher)
    subscribe(settings, expected)
    service = start_service(settings)

    # 1. The pool processes die mid-task (a fetch at least); the worker's main process starts new
    #    ones and task_reject_on_worker_lost puts the tasks they were running back in the queue.
    wait_mid_run(settings, publisher, feeds_stored=1)
    worker = service.child("worker")
    for pid in child_pids(worker):
        os.kill(pid, signal.SIGKILL)
    # 2. The worker's main process dies holding an article batch (and a fetch), whose messages stay
    #    invisible in Redis for the visibility timeout (an hour); then the scheduler dies too.
    wait_mid_run(settings, publisher, feeds_stored=2, holding=service)  # type: ignore[arg-type]
    os.kill(worker, signal.SIGKILL)
    os.kill(service.child("scheduler"), signal.SIGKILL)
    killed_at = time.monotonic()

    recovered = wait_all_done(settings, expected, logs=service.output)
    print(f"all done {time.monotonic() - killed_at:.1f} s after the worker and scheduler were killed", flush=True)
    assert_stored_exactly_once(settings, expected)
    assert service.process.poll() is None, service.output()[-3000:]
    restarts = {child["name"]: child for child in service.status()["service"]}
    assert restarts["worker"]["restarts"] == 1 and restarts["worker"]["last_exit_code"] == -signal.SIGKILL
    assert restarts["scheduler"]["restarts"] == 1 and not restarts["scheduler"]["crash_loop"]
    assert "worker (pid" in service.output() and "exited with code -9; restarting in" in service.output()
    assert recovered < FINISH_TIMEOUT

    took = service.terminate()
    assert service.process.returncode == 0 and took < 30, service.output()[-3000:]
    assert service.group() == [], "a child of `feedmill run` outlived it"


def test_service_survives_redis_flushed_and_restarted(
    postgres_url: str, tmp_path: Path, redis_server: RedisServer, publisher: Publisher,
    start_service: Callable[..., ServiceProcess],
) -> None:
    """FLUSHALL the broker once, later kill and restart it (empty), under `feedmill run` with the
    default sweeper and lease: the service stays up and the lost work is re-sent from the database
    within one recovery look (10 s for work untouched 10 s) of the broker answering again."""
    settings = dataclasses.replace(make_settings(tmp_path, postgres_url, redis_server.url()), host_max_concurrent=HOST_SLOTS)
    migrate(settings)
    expected = publish(publisher)
    subscribe(settings, expected)
    service = start_service(settings)

    wait_mid_run(settings, publisher, feeds_stored=2)
    redis_server.client().flushall()
    wait_mid_run(settings, publisher, feeds_stored=4)
    redis_server.kill()
    time.sleep(2)  # the broker stays away for a while: workers and scheduler see connection errors
    redis_server.start()
    answering = time.monotonic()

    recovered = wait_all_done(settings, expected, timeout=60, logs=service.output)
    print(f"all done {recovered:.1f} s after Redis answered again", flush=True)
    assert_stored_exactly_once(settings, expected)
    assert service.process.poll() is None, "the service gave up on the broker"
    assert time.monotonic() - answering < 60


def test_service_survives_postgres_crash_and_restart(
    tmp_path: Path, redis_url: str, publisher: Publisher, postgres_server: PostgresServer,
    start_service: Callable[..., ServiceProcess],
) -> None:
    """A test-owned PostgreSQL stopped as by a crash mid-run, down 4 s, started again: database
    errors are transient (retried, not dead letters), the supervisor rides it out, all is stored once."""
    with psycopg.connect(postgres_server.admin_url, autocommit=True) as admin:
        admin.execute("CREATE DATABASE feedmill")
    settings = dataclasses.replace(
        make_settings(tmp_path, postgres_server.admin_url.rsplit("/", 1)[0] + "/feedmill", redis_url),
        host_max_concurrent=HOST_SLOTS,
    )
    migrate(settings)
    expected = publish(publisher)
    subscribe(settings, expected)
    service = start_service(settings)

    wait_mid_run(settings, publisher, feeds_stored=2)
    postgres_server.crash()
    time.sleep(4)
    postgres_server.start()
    answering = time.monotonic()

    recovered = wait_all_done(settings, expected, timeout=60, logs=service.output)
    print(f"all done {recovered:.1f} s after PostgreSQL answered again", flush=True)
    assert_stored_exactly_once(settings, expected)
    assert service.process.poll() is None, service.output()[-3000:]
    assert "retry: Retry in" in service.output() and "OperationalError" in service.output()
    assert time.monotonic() - answering < 60
    service.stop()
    from schemas.db import get_engine, normalize_url

    get_engine(normalize_url(settings.database_url)).dispose()


def test_database_unreachable_mid_run(
    postgres_url: str, tmp_path: Path, redis_url: str, publisher: Publisher,
    start_worker: Callable[..., WorkerProcess], start_scheduler: Callable[..., SchedulerProcess], recovery_env: None,
) -> None:
    """Cut every connection to PostgreSQL (and refuse new ones) for 6 s mid-run, then restore it."""
    admin = make_url(POSTGRES_ADMIN_URL)
    settings = dataclasses.replace(make_settings(tmp_path, postgres_url, redis_url), host_max_concurrent=HOST_SLOTS)
    migrate(settings)
    expected = publish(publisher)
    subscribe(settings, expected)
    with TcpProxy((admin.host or "127.0.0.1", admin.port or 5432)) as proxy:
        # Workers and scheduler reach the database only through the proxy; this test process directly.
        proxied = dataclasses.replace(settings, database_url=with_url(postgres_url, "127.0.0.1", proxy.port))
        scheduler = start_scheduler(proxied)
        worker = start_worker(proxied, concurrency=2)

        wait_mid_run(settings, publisher, feeds_stored=2)
        proxy.cut()
        time.sleep(6)  # the outage; workers keep failing and retrying meanwhile
        assert proxy.refused > 0, "nothing tried to reach the database during the outage"
        proxy.restore()

        wait_all_done(settings, expected, logs=lambda: all_output(settings))
        in_parallel(lambda process: process.stop(), [worker, scheduler])  # while the proxy still runs
    assert_stored_exactly_once(settings, expected)
    # The outage was seen and handled as transient: retried, not dead-lettered.
    assert "retry: Retry in" in worker.output() and "OperationalError" in worker.output()


def test_two_schedulers_and_three_workers(
    postgres_settings: Settings, publisher: Publisher, start_worker: Callable[..., WorkerProcess],
    start_scheduler: Callable[..., SchedulerProcess], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two celery beats and three workers on 8 feeds: each feed fetched once, never concurrently."""
    # Both schedulers dispatch every second and sweep every second for work untouched 2 s, so
    # duplicate messages (two dispatches, sweeper re-sends) reach different workers at once.
    monkeypatch.setenv("FEEDMILL_SWEEP_EVERY", "1")
    monkeypatch.setenv("FEEDMILL_STUCK_AFTER", "2")
    monkeypatch.setenv("FEEDMILL_BATCH_SIZE", "4")
    settings = postgres_settings
    expected = publish(publisher, feeds=8, delay=0.3)
    subscribe(settings, expected)
    start_scheduler(settings, "scheduler-a")
    start_scheduler(settings, "scheduler-b")
    workers = in_parallel(lambda _: start_worker(settings, concurrency=1), range(3))

    wait_all_done(settings, expected, logs=lambda: all_output(settings))
    in_parallel(WorkerProcess.stop, workers)  # faster than the fixture's one by one
    assert_stored_exactly_once(settings, expected)
    with session_scope(settings) as session:
        polls = session.execute(select(Feed.url, Poll.status).join(Feed, Feed.id == Poll.feed_id)).all()
    assert sorted(polls) == sorted((url, "parsed") for url in expected), "a feed was claimed twice"
    for path in publisher.resources:
        spans = sorted((start, end) for requested, start, end in publisher.timeline if requested == path)
        assert len(spans) == 1, f"{path} fetched {len(spans)} times"
    assert len(publisher.timeline) == len(expected)


def test_sigterm_finishes_in_flight_work(
    postgres_settings: Settings, publisher: Publisher, start_worker: Callable[..., WorkerProcess],
) -> None:
    """SIGTERM a worker mid-run (Celery's warm shutdown), start another: nothing lost, nothing redone.

    No scheduler runs, so no sweeper and no lease re-claim: whatever the first worker held must
    be finished by it or given back to the broker on the way out.
    """
    settings = dataclasses.replace(postgres_settings, host_max_concurrent=HOST_SLOTS)
    expected = publish(publisher)
    subscribe(settings, expected)
    first = start_worker(settings, concurrency=2)
    from workers.scheduler import claim_feeds, enqueue_fetches

    use_broker(settings)
    enqueue_fetches(claim_feeds(settings, due_only=False))

    wait_mid_run(settings, publisher, feeds_stored=2)
    in_flight = [path for path in publisher.resources if publisher.hits(path) > sum(
        1 for requested, _, _ in publisher.timeline if requested == path)]
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(30) == 0, first.output()[-3000:]
    assert "Warm shutdown" in first.output()
    # The fetch being answered at SIGTERM was finished and recorded, not abandoned.
    with session_scope(settings) as session:
        statuses = dict(session.execute(select(Feed.url, Poll.status).join(Feed, Feed.id == Poll.feed_id)).all())
    assert in_flight and all(statuses[publisher.url(path)] in ("fetched", "parsed") for path in in_flight), statuses

    second = start_worker(settings, concurrency=2)
    wait_all_done(settings, expected, logs=lambda: first.output()[-2000:] + second.output())
    assert_stored_exactly_once(settings, expected)
    assert all(publisher.hits(path) == 1 for path in publisher.resources), publisher.requests

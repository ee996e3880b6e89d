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
import threading
import time
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
    feedmill_env,
    free_port,
    make_settings,
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


def sigkill_pool(worker: WorkerProcess) -> list[int]:
    """SIGKILL every pool process of a worker; its main process stays and starts new ones."""
    pids = child_pids(worker.process.pid)
    assert pids, "the worker has no pool processes"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def sigkill_worker(worker: WorkerProcess) -> None:
    """SIGKILL a whole worker, main process first so it cannot restore or ack anything."""
    pool = child_pids(worker.process.pid)
    worker.process.kill()
    worker.process.wait()
    for pid in pool:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


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


# ------------------------------------------------------------------ the tests


#: Makes every article stage write take 50 ms longer (3 rows a batch), so that article batches
#: are in flight for a while and a kill lands on one.
SLOW_ARTICLES = """
CREATE FUNCTION feedmill_test_slow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END $$;
CREATE TRIGGER feedmill_test_slow BEFORE UPDATE ON articles FOR EACH ROW EXECUTE FUNCTION feedmill_test_slow();
"""


def test_sigkilled_workers_lose_nothing(
    postgres_settings: Settings, postgres_url: str, publisher: Publisher,
    start_worker: Callable[..., WorkerProcess], start_scheduler: Callable[..., SchedulerProcess], recovery_env: None,
) -> None:
    """SIGKILL the pool, then whole workers, three times while fetches and batches are in flight."""
    settings = dataclasses.replace(postgres_settings, host_max_concurrent=HOST_SLOTS)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(SLOW_ARTICLES)
    expected = publish(publisher)
    subscribe(settings, expected)
    start_scheduler(settings)  # first: it boots while the worker does
    worker = start_worker(settings, concurrency=2)

    # 1. The pool processes die mid-task (a fetch at least); the worker's main process starts new
    #    ones and task_reject_on_worker_lost puts the tasks they were running back in the queue.
    wait_mid_run(settings, publisher, feeds_stored=1)
    sigkill_pool(worker)
    # 2. and 3. The whole worker dies holding an article batch (and a fetch): its unacknowledged
    #    messages stay invisible in Redis for the visibility timeout (an hour). The feed leases
    #    (lost fetches) and the sweeper (lost batches) must finish the work.
    for stored in (2, 3):
        wait_mid_run(settings, publisher, feeds_stored=stored, holding=worker)
        sigkill_worker(worker)
        worker = start_worker(settings, concurrency=2)

    wait_all_done(settings, expected, logs=lambda: all_output(settings))
    assert_stored_exactly_once(settings, expected)


def test_redis_restarted_and_flushed_mid_run(
    postgres_url: str, tmp_path: Path, redis_server: RedisServer, publisher: Publisher,
    start_worker: Callable[..., WorkerProcess], start_scheduler: Callable[..., SchedulerProcess], recovery_env: None,
) -> None:
    """FLUSHALL the broker once, later kill and restart it (empty): the sweeper and leases finish the run."""
    settings = dataclasses.replace(make_settings(tmp_path, postgres_url, redis_server.url()), host_max_concurrent=HOST_SLOTS)
    migrate(settings)
    expected = publish(publisher)
    subscribe(settings, expected)
    scheduler = start_scheduler(settings)
    worker = start_worker(settings, concurrency=2)

    wait_mid_run(settings, publisher, feeds_stored=2)
    redis_server.client().flushall()
    wait_mid_run(settings, publisher, feeds_stored=4)
    redis_server.kill()
    time.sleep(2)  # the broker stays away for a while: workers and scheduler see connection errors
    redis_server.start()

    wait_all_done(settings, expected, logs=lambda: all_output(settings))
    assert_stored_exactly_once(settings, expected)
    assert worker.process.poll() is None and scheduler.process.poll() is None, "a process gave up on the broker"


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

"""The long-running service (`feedmill run`) and the stage runner's failure isolation."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from schemas.db import session_scope
from schemas.models import FAILED, PENDING, Article, Feed
from schemas.pipeline import ARTICLE_STAGES
from schemas.settings import Settings
from tasks.storage.articles import run_article_stage
from tests.conftest import (
    EXAMPLES,
    Publisher,
    add_feed,
    feedmill,
    feedmill_env,
    ok,
    use_broker,
)


def test_run_service_polls_processes_and_stops_on_sigterm(settings: Settings, publisher: Publisher) -> None:
    url = publisher.add("/seed.xml", (EXAMPLES / "seed-news.xml").read_bytes())
    assert feedmill(settings, "feeds", "add", url).returncode == 0
    service = subprocess.Popen(
        [sys.executable, "-m", "workers", "run", "--concurrency", "1"],
        env=feedmill_env(settings),
        cwd=settings.home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            listed = [json.loads(line) for line in feedmill(settings, "export").stdout.splitlines()]
            if len(listed) == 2 and all(a["stage"] == "done" for a in listed):
                break
            assert service.poll() is None, service.stdout.read().decode()
            assert time.monotonic() < deadline, "articles not processed by the running service"
            time.sleep(1)
    finally:
        service.send_signal(signal.SIGTERM)
        output = service.communicate(timeout=60)[0].decode()
    assert service.returncode == 0, output
    assert "beat: Starting" in output  # the scheduler ran alongside the workers
    assert publisher.hits("/seed.xml") >= 1


def test_one_failing_article_never_takes_down_its_batch(sqlite_settings: Settings) -> None:
    with session_scope(sqlite_settings) as session:
        feed = Feed(url="https://example.org/feed")
        session.add(feed)
        session.flush()
        for key in ("a", "b", "c"):
            session.add(Article(feed_id=feed.id, entry_key=key, raw_hash=key, raw_title=key))
    with session_scope(sqlite_settings) as session:
        ids = list(session.scalars(select(Article.id).order_by(Article.id)))

    def explode_on_b(article) -> dict[str, str]:
        if article.entry_key == "b":
            raise ValueError("bad input in b")
        return {"title": article.raw_title.upper()}

    columns = (Article.entry_key, Article.raw_title)
    ready = run_article_stage(sqlite_settings, "clean", ids, columns, explode_on_b)
    assert ready == [ids[0], ids[2]]
    with session_scope(sqlite_settings) as session:
        rows = {a.entry_key: a for a in session.scalars(select(Article))}
        assert (rows["a"].stage, rows["a"].status, rows["a"].title) == ("dedupe", PENDING, "A")
        assert (rows["b"].stage, rows["b"].status, rows["b"].title) == ("clean", FAILED, None)
        assert rows["b"].error == "clean: ValueError: bad input in b"
    # Repeated: nothing left in this stage to do, the same ids are handed on again.
    assert run_article_stage(sqlite_settings, "clean", ids, columns, explode_on_b) == [ids[0], ids[2]]


def test_run_once_resends_work_whose_messages_were_lost(
    sqlite_settings: Settings, publisher: Publisher, start_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from workers import service

    monkeypatch.setattr(service, "STALL_SECONDS", 2.0)
    use_broker(sqlite_settings)
    add_feed(sqlite_settings, publisher.add("/seed.xml", (EXAMPLES / "seed-news.xml").read_bytes()))
    outcome: list[object] = []
    runner = threading.Thread(target=lambda: outcome.append(service.run_once(sqlite_settings, timeout=90)))
    runner.start()
    queue_folder = sqlite_settings.broker_folder / "queue"
    deadline = time.monotonic() + 10
    while not any(queue_folder.iterdir()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for message in queue_folder.iterdir():  # the broker loses the round's fetch message
        message.unlink()
    start_worker(sqlite_settings, concurrency=1)
    runner.join(90)
    summary = outcome[0]
    assert summary.articles_new == 2 and summary.articles_done == 2
    assert publisher.hits("/seed.xml") == 1


def test_progress_checks_do_not_hold_sqlite_write_lock(sqlite_settings: Settings) -> None:
    """`run --once` checks progress while workers write: its read must not make them wait."""
    feed_id = add_feed(sqlite_settings, "https://example.org/feed")
    written = threading.Event()

    def write() -> None:
        with session_scope(sqlite_settings) as session:
            session.get(Feed, feed_id).title = "renamed"
        written.set()

    with session_scope(sqlite_settings, read_only=True) as session:
        assert session.get(Feed, feed_id).title is None
        writer = threading.Thread(target=write)
        writer.start()
        assert written.wait(10), "a write waited for a read-only transaction"
    writer.join()
    with session_scope(sqlite_settings, read_only=True) as session:
        assert session.get(Feed, feed_id).title == "renamed"


def test_worker_loads_classify_models_before_forking_its_pool(settings: Settings, start_worker) -> None:
    """Pool processes share the language model instead of each loading it at its first task;
    a worker that does not consume the classify queue does not load it at all."""
    classifying = start_worker(settings, concurrency=1)
    fetching = start_worker(settings, concurrency=1, queues="fetch")
    loaded = re.search(r"classify models loaded in [\d.]+ s before the pool started", classifying.output())
    assert loaded and loaded.start() < classifying.output().index("ready.")
    assert "classify models loaded" not in fetching.output()


def _task_events_of(app, run: Callable[[], None]) -> list[str]:
    """The types of the task events the broker carried while ``run`` ran."""
    seen: list[str] = []
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": lambda event: seen.append(event["type"])})
        listening = threading.Thread(target=receiver.capture, kwargs={"limit": None, "wakeup": False}, daemon=True)
        listening.start()
        time.sleep(0.5)  # the receiver's queue is bound before anything is sent
        run()
        time.sleep(0.5)
        receiver.should_stop = True
        listening.join(10)
    return [kind for kind in seen if kind.startswith("task-")]


def test_task_events_are_off_until_flower_or_the_setting_turns_them_on(
    postgres_settings: Settings, start_worker
) -> None:
    """Task events cost about 3% of throughput, so workers start without them; Flower's periodic
    ``enable_events`` broadcast turns them on, and FEEDMILL_TASK_EVENTS=1 from the start."""

    def run_task(worker, app, name: str, *args: object) -> Callable[[], None]:
        def run() -> None:
            done = worker.output().count("succeeded in")
            app.send_task(name, args=args)
            deadline = time.monotonic() + 30
            while worker.output().count("succeeded in") == done:
                assert time.monotonic() < deadline, worker.output()
                time.sleep(0.05)
        return run

    worker = start_worker(postgres_settings, concurrency=1, queues="schedule")
    app = use_broker(postgres_settings)
    assert _task_events_of(app, run_task(worker, app, "feedmill.sweep")) == []
    assert app.control.enable_events(reply=True, timeout=5), "the worker did not answer enable_events"
    events = _task_events_of(app, run_task(worker, app, "feedmill.sweep"))
    assert {"task-received", "task-started", "task-succeeded"} <= set(events)

    evented = replace(postgres_settings, task_events=True)
    worker = start_worker(evented, concurrency=1, queues="fetch")
    app = use_broker(evented)
    events = _task_events_of(app, run_task(worker, app, "feedmill.fetch", {"poll_id": 0}))
    assert {"task-sent", "task-received", "task-started", "task-succeeded"} <= set(events)


def test_progress_counts_pending_articles_only_when_asked_and_ends_as_soon_as_none_is_left(settings: Settings) -> None:
    """`run --once` counts the pending articles at most every PENDING_COUNT_EVERY; in between it
    skips them while polls are unfinished and then only asks whether any is left, so the counts it
    reports stay right and the round still ends at the first check that finds nothing pending.
    A dead letter of the round (a poll or an article batch that failed for good) counts as finished."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from schemas.models import OK, POLL_PARSED, Failure, Poll, utcnow
    from workers.service import Progress, Round

    feed_id = add_feed(settings, "https://example.org/feed")
    started = utcnow()
    with session_scope(settings) as session:
        polls = [Poll(feed_id=feed_id), Poll(feed_id=feed_id)]
        session.add_all(polls)
        session.add_all(Article(feed_id=feed_id, entry_key=f"k{i}", raw_hash="-", stage=stage, status=status)
                        for i, (stage, status) in enumerate([
                            ("clean", PENDING), ("dedupe", PENDING), ("classify", PENDING),
                            ("clean", FAILED), ("done", OK),
                        ]))
        session.flush()
        poll_ids = [poll.id for poll in polls]
        # The second poll's parse failed for good during the round.
        session.add(Failure(task="feedmill.parse", stage="parse", subject=f"poll {poll_ids[1]}", error="KeyError: x",
                            poll_id=poll_ids[1], attempts=1, first_seen=started, last_seen=started))
    statements: list[str] = []

    def on_statement(conn, cursor, statement, *_):  # noqa: ANN001, ANN202
        statements.append(" ".join(statement.split()))

    round_ = Round(settings, poll_ids, started)

    def articles_read(last: Progress | None) -> tuple[Progress, list[str]]:
        statements.clear()
        round_.last = last
        if last is not None:
            round_._last_count = time.monotonic()
        event.listen(Engine, "before_cursor_execute", on_statement)
        try:
            progress = round_.progress()
        finally:
            event.remove(Engine, "before_cursor_execute", on_statement)
        return progress, [s for s in statements if "FROM articles" in s]

    counted, reads = articles_read(None)
    by_stage = {stage: 0 for stage in ARTICLE_STAGES} | {"clean": 1, "dedupe": 1, "classify": 1}
    assert counted == Progress(2, 1, 3, by_stage) and len(reads) == 1
    assert "count(" in reads[0]
    # A poll of the round is unfinished: the round cannot end, the articles are not looked at.
    assert articles_read(Progress(2, 1, 7)) == (Progress(2, 1, 7), [])
    with session_scope(settings) as session:
        session.get(Poll, poll_ids[0]).status = POLL_PARSED
    progress, reads = articles_read(Progress(2, 1, 7))
    assert progress == Progress(2, 2, 7) and len(reads) == 1 and "count(" not in reads[0]
    assert articles_read(Progress(2, 2, 0))[0] == Progress(2, 2, 1)  # never 0 while one is pending
    with session_scope(settings) as session:
        for article in session.scalars(select(Article).where(Article.status == PENDING)):
            article.stage, article.status = "done", OK
    assert articles_read(Progress(2, 2, 3))[0] == Progress(2, 2, 0)
    assert articles_read(None)[0].done


def test_restart_backoff_doubles_to_a_cap_and_five_restarts_in_a_minute_are_a_crash_loop() -> None:
    from workers.service import BACKOFF_MAX, BACKOFF_START, in_crash_loop, restart_delay

    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [BACKOFF_START * f for f in (1, 2, 4, 8)]
    assert restart_delay(50) == BACKOFF_MAX
    assert not in_crash_loop(4) and in_crash_loop(5)


#: Marking a poll of the "broken" feed parsed fails for good (SQLSTATE P0001: permanent).
BROKEN_PARSE = """
CREATE FUNCTION feedmill_test_broken() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'parse result refused (injected by the test)'; END $$;
CREATE TRIGGER feedmill_test_broken BEFORE UPDATE ON polls FOR EACH ROW
    WHEN (NEW.status = 'parsed' AND NEW.final_url LIKE '%broken%') EXECUTE FUNCTION feedmill_test_broken();
"""


def processes_in(directory: Path) -> list[int]:
    """Pids of the processes whose working directory is ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == directory:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_run_once_waits_for_a_poll_already_under_way(sqlite_settings: Settings, publisher: Publisher) -> None:
    """`feeds poll` with no worker running leaves a queued poll holding the feed's lease: the next
    `run --once` takes that poll into its round (it used to skip the feed and exit 0 at once)."""
    settings = sqlite_settings
    seed = publisher.add("/seed.xml", (EXAMPLES / "seed-news.xml").read_bytes())
    ok(feedmill(settings, "feeds", "add", seed))
    assert "enqueued 1 fetch(es)" in ok(feedmill(settings, "feeds", "poll", seed))
    round_ = feedmill(settings, "run", "--once", "--json", "--timeout", "60")
    assert round_.returncode == 0, round_.stdout + round_.stderr
    summary = json.loads(round_.stdout)
    assert summary["feeds_skipped"] == 0 and summary["articles_new"] == 2 and summary["articles_done"] == 2
    assert publisher.hits("/seed.xml") == 2  # `feeds add` looked at it once, then one fetch


def test_run_once_tells_what_happened_and_exits_accordingly(
    postgres_settings: Settings, postgres_url: str, publisher: Publisher
) -> None:
    """Exit 1 naming failed feeds (404, a parse that became a dead letter) and deferred ones
    (Retry-After) with their next attempt; the dead letter's lease is released, so the next round
    polls that feed again and calls a 304 "unchanged"; exit 3 naming what is unfinished on timeout."""
    import psycopg

    settings = postgres_settings
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(BROKEN_PARSE)
    seed = publisher.add("/seed.xml", (EXAMPLES / "seed-news.xml").read_bytes(), etag='"v1"')
    broken = publisher.add("/broken.xml", (EXAMPLES / "seed-news.xml").read_bytes())
    busy = publisher.add("/busy.xml", b"slow down", status=429, headers={"Retry-After": "600"})
    missing = publisher.url("/missing.xml")
    ok(feedmill(settings, "feeds", "add", seed, broken, busy, missing))

    started = time.monotonic()
    first = feedmill(settings, "run", "--once", "--json", "--concurrency", "2", "--timeout", "60")
    assert time.monotonic() - started < 60
    assert first.returncode == 1, first.stdout + first.stderr
    assert "\r" not in first.stderr  # no progress line in a pipe
    summary = json.loads(first.stdout)
    failed = {f["url"]: f["error"] for f in summary["failed_feeds"]}
    assert failed.keys() == {broken, missing}
    assert failed[missing] == "HTTP 404 Not Found"
    assert "failed for good in parse" in failed[broken] and "parse result refused" in failed[broken]
    assert [(d["url"], d["status_code"]) for d in summary["deferred_feeds"]] == [(busy, 429)]
    next_attempt = datetime.strptime(summary["deferred_feeds"][0]["next_attempt"], "%Y-%m-%dT%H:%M:%SZ")
    assert next_attempt.replace(tzinfo=UTC) >= datetime.now(UTC) + timedelta(seconds=590)  # Retry-After: 600
    assert summary["articles_new"] >= 2 and summary["articles_failed"] == 0

    second = feedmill(settings, "run", "--once", "--concurrency", "2", "--timeout", "60")
    assert second.returncode == 1, second.stdout + second.stderr
    # A finished round's worker held nothing, so it was stopped at once (no warm shutdown), and no
    # process of it (main or pool child) outlives the command.
    logs = sorted((settings.home / "logs").glob("worker-*.log"))
    assert len(logs) == 2 and all("Warm shutdown" not in log.read_text() for log in logs)
    assert processes_in(settings.home) == []
    assert "1 unchanged (304)" in second.stdout and "skipped" not in second.stdout  # the lease was released
    assert f"failed: {broken}: failed for good in parse" in second.stdout
    assert f"deferred: {busy}: HTTP 429, next attempt 20" in second.stdout

    timed_out = feedmill(settings, "run", "--once", "--no-workers", "--timeout", "1")
    assert timed_out.returncode == 3, timed_out.stdout + timed_out.stderr
    assert "timed out after 1 s with work unfinished: 4 feed(s)" in timed_out.stderr
    assert f"{seed} waiting for fetch" in timed_out.stderr and "are workers running?" in timed_out.stderr

"""Dead letters, failure classification and the sweeper, with real workers where it matters."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from schemas.db import session_scope
from schemas.models import FAILED, POLL_FETCHED, Article, Failure, Feed, Poll, utcnow
from schemas.pipeline import stage_of_task
from schemas.settings import Settings
from tasks.failures import is_transient
from tasks.parse import run_parse
from tasks.storage.articles import run_article_stage
from tests.conftest import (
    WorkerProcess,
    feedmill,
    feedmill_env,
    ok,
    rss,
    use_broker,
)


def test_transient_and_permanent_errors_are_told_apart() -> None:
    assert is_transient(OperationalError("SELECT 1", {}, Exception("server closed the connection")))
    assert is_transient(BrokerError("Error 111 connecting to redis"))
    assert is_transient(ConnectionRefusedError()) and is_transient(TimeoutError()) and is_transient(SoftTimeLimitExceeded())
    assert not is_transient(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_transient(ValueError("bad message")) and not is_transient(KeyError("poll_id"))
    assert stage_of_task("feedmill.clean") == "clean" and stage_of_task("feedmill.websub_subscribe") == "websub"


def items(prefix: str, count: int) -> str:
    return rss([{"title": f"{prefix} story {i}", "guid": f"{prefix}-{i}", "link": f"https://example.org/{prefix}/{i}",
                 "description": f"<p>The {prefix} body number {i}, long enough to be an article.</p>"} for i in range(count)])


def add_fetched_poll(settings: Settings, url: str, body: str, age: float) -> int:
    """A feed with a fetched, unparsed body, as a worker killed after fetch would leave it."""
    with session_scope(settings) as session:
        feed = Feed(url=url, next_poll_at=utcnow() + timedelta(days=1))
        session.add(feed)
        session.flush()
        poll = Poll(feed_id=feed.id, status=POLL_FETCHED, body=body.encode(), content_type="application/rss+xml",
                    final_url=url, requested_at=utcnow() - timedelta(seconds=age), started_at=utcnow() - timedelta(seconds=age))
        session.add(poll)
        session.flush()
        return poll.id


def test_failed_article_is_a_dead_letter_and_requeue_finishes_it(sqlite_settings: Settings) -> None:
    settings = sqlite_settings
    poll_id = add_fetched_poll(settings, "https://example.org/a.xml", items("a", 3), age=0)
    ids = run_parse(settings, poll_id)
    assert len(ids) == 3

    def decide(article) -> dict[str, str]:
        if article.id == ids[1]:
            raise RuntimeError("clean exploded")
        return {}

    ready = run_article_stage(settings, "clean", ids, (), decide)
    assert ready == [ids[0], ids[2]]
    with session_scope(settings) as session:
        failure = session.scalars(select(Failure)).one()
        assert (failure.task, failure.stage, failure.subject) == ("feedmill.clean", "clean", f"article {ids[1]}")
        assert failure.article_ids == [ids[1]] and "clean exploded" in failure.error and "RuntimeError" in failure.traceback
        assert failure.attempts == 1 and failure.requeued_at is None

    listed = json.loads(ok(feedmill(settings, "failures", "list", "--json")))
    assert [f["subject"] for f in listed] == [f"article {ids[1]}"]
    shown = ok(feedmill(settings, "failures", "show", str(failure.id)))
    assert "clean exploded" in shown and "Traceback" in shown
    dry = ok(feedmill(settings, "requeue", "failed", "--stage", "clean", "--dry-run"))
    assert "would re-queue 1 open failure(s)" in dry
    assert "re-queued 1 failure(s)" in ok(feedmill(settings, "requeue", "failed", "--yes"))
    assert json.loads(ok(feedmill(settings, "failures", "list", "--json"))) == []

    # The round finishes the re-queued articles; the feed itself (example.org) cannot be fetched here,
    # which makes the round exit 1 and name it.
    again = feedmill(settings, "run", "--once", "--concurrency", "1")
    assert again.returncode == 1 and "failed: https://example.org/a.xml: " in again.stdout, again.stdout + again.stderr
    with session_scope(settings) as session:
        states = session.execute(select(Article.stage, Article.status)).all()
    assert states == [("done", "ok")] * 3
    assert "deleted 1 re-queued failure(s)" in ok(feedmill(settings, "failures", "purge", "--yes"))


def test_a_message_that_fails_for_good_is_recorded_once_not_retried(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(settings, concurrency=1, queues="parse")
    app = use_broker(settings)
    sent = app.send_task("feedmill.parse", args=[{"not_a_poll": 1}], queue="parse")
    deadline = time.monotonic() + 30
    while f"[{sent.id}] raised unexpected" not in worker.output():
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.2)
    assert "retry" not in worker.output().lower().split("raised unexpected")[0][-2000:]
    with session_scope(settings) as session:
        failure = session.scalars(select(Failure)).one()
    assert failure.task == "feedmill.parse" and failure.stage == "parse" and failure.error.startswith("KeyError")


def test_sweeper_finishes_work_whose_messages_were_lost(
    settings: Settings, start_worker: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Feed a: fetched, never parsed. Feed b: parsed, its articles pending in clean. No message for either.
    add_fetched_poll(settings, "https://example.org/a.xml", items("a", 5), age=60)
    parsed = run_parse(settings, add_fetched_poll(settings, "https://example.org/b.xml", items("b", 4), age=60))
    with session_scope(settings) as session:
        session.execute(update(Article).values(updated_at=utcnow() - timedelta(seconds=60)))
    assert len(parsed) == 4
    monkeypatch.setenv("FEEDMILL_SWEEP_EVERY", "1")
    monkeypatch.setenv("FEEDMILL_STUCK_AFTER", "30")
    start_worker(settings, concurrency=2)
    beat = subprocess.Popen(
        [sys.executable, "-m", "workers", "scheduler"], env=feedmill_env(settings), cwd=settings.home,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with session_scope(settings) as session:
                done = session.scalar(select(func.count()).select_from(Article).where(Article.stage == "done"))
                total = session.scalar(select(func.count()).select_from(Article))
            if total == 9 and done == 9:
                break
            assert time.monotonic() < deadline, f"{done}/{total} done"
            time.sleep(0.5)
    finally:
        beat.terminate()
        beat.wait(20)
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(Article).where(Article.status == FAILED)) == 0
        assert session.scalar(select(func.count()).select_from(Poll).where(Poll.status == POLL_FETCHED)) == 0

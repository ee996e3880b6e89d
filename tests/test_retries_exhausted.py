"""End to end: a transient failure that never clears exhausts its retries into the failures table.

A real worker parses a real feed on PostgreSQL; a trigger the test installs makes every attempt
to mark the poll parsed fail with SQLSTATE 40001 (serialization_failure), which psycopg raises as
an OperationalError: transient, as a hot row under concurrent updates would be. With
FEEDMILL_MAX_RETRIES=2 the parse is tried 3 times (2 s, then 4 s backoff ceilings, full jitter),
then becomes one dead letter that ``feedmill failures list --json`` shows. Once the cause is gone,
``feedmill requeue failed`` finishes the work: every entry stored once, through every stage.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import psycopg
import pytest
from sqlalchemy import select

from schemas.db import session_scope
from schemas.models import Poll
from schemas.settings import Settings
from tests.conftest import Publisher, WorkerProcess, feedmill, ok, use_broker
from tests.test_faults import assert_stored_exactly_once, publish, subscribe, wait_all_done, wait_until

MAX_RETRIES = 2

CONFLICT_TRIGGER = """
CREATE FUNCTION feedmill_test_conflict() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not serialize access due to concurrent update (injected by the test)'
        USING ERRCODE = 'serialization_failure';
END $$;
CREATE TRIGGER feedmill_test_conflict BEFORE UPDATE ON polls FOR EACH ROW
    WHEN (NEW.status = 'parsed') EXECUTE FUNCTION feedmill_test_conflict();
"""


def test_transient_failure_exhausts_retries_into_failures(
    postgres_settings: Settings, postgres_url: str, publisher: Publisher,
    start_worker: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = postgres_settings
    monkeypatch.setenv("FEEDMILL_MAX_RETRIES", str(MAX_RETRIES))
    expected = publish(publisher, feeds=1, items=5, delay=0)
    subscribe(settings, expected)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(CONFLICT_TRIGGER)
    worker = start_worker(settings, concurrency=1)
    from workers.scheduler import claim_feeds, enqueue_fetches

    use_broker(settings)
    (poll_id,) = claim_feeds(settings, due_only=False)
    enqueue_fetches([poll_id])

    def dead_letters() -> list[dict]:
        return json.loads(ok(feedmill(settings, "failures", "list", "--json")))

    started = time.monotonic()
    wait_until(lambda: "raised unexpected" in worker.output(), 60, lambda: worker.output()[-4000:])
    exhausted_after = time.monotonic() - started
    (failure,) = dead_letters()
    assert failure["task"] == "feedmill.parse" and failure["stage"] == "parse"
    assert failure["subject"] == f"poll {poll_id}" and failure["poll_id"] == poll_id
    assert failure["error"].startswith("OperationalError") and "could not serialize access" in failure["error"]
    assert failure["attempts"] == MAX_RETRIES + 1 and failure["requeued_at"] is None  # the first try and its retries
    # Exactly MAX_RETRIES retries, each logged by Celery, then the final failure.
    retries = re.findall(r"feedmill\.parse\[[^\]]+\] retry: Retry in", worker.output())
    assert len(retries) == MAX_RETRIES, worker.output()[-4000:]
    with session_scope(settings) as session:
        assert session.scalar(select(Poll.status).where(Poll.id == poll_id)) == "fetched"  # nothing half-stored
    print(f"retries exhausted after {exhausted_after:.1f} s")

    # The cause goes away; the operator re-queues the dead letter and the work finishes.
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER feedmill_test_conflict ON polls")
    assert "re-queued 1 failure(s)" in ok(feedmill(settings, "requeue", "failed", "--stage", "parse", "--yes"))
    wait_all_done(settings, expected, timeout=60, logs=worker.output)
    assert_stored_exactly_once(settings, expected, dead_letters=True)
    assert dead_letters() == []

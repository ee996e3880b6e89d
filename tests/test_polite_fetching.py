"""Scheduler and polite fetching against a local publisher: 304s, 429/503, redirects, 410,
per-host limits across worker processes, leases, concurrent dispatchers, history."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from schemas.db import session_scope
from schemas.models import Feed, Poll, utcnow
from schemas.settings import Settings
from tasks.fetch import run_fetch
from tasks.parse import run_parse
from tasks.storage.hosts import SlotClaim, claim_host_slot, free_host_slot
from tests.conftest import (
    Publisher,
    WorkerProcess,
    add_feed,
    feedmill,
    make_settings,
    rss,
    use_broker,
)
from workers.scheduler import claim_feeds, enqueue_fetches

FEED = rss([{"title": "One", "guid": "1", "description": "Body of one."}, {"title": "Two", "guid": "2", "description": "Body two."}])






def poll_once(settings: Settings, feed_id: int) -> Poll:
    """Claim, fetch and (if there is a body) parse one feed, as the workers would."""
    (poll_id,) = claim_feeds(settings, due_only=False, feed_ids=[feed_id])
    step = run_fetch(settings, poll_id)
    assert step.wait_seconds is None
    if step.parse:
        run_parse(settings, poll_id)
    with session_scope(settings) as session:
        return session.get(Poll, poll_id)


def feed_row(settings: Settings, feed_id: int) -> Feed:
    with session_scope(settings) as session:
        return session.get(Feed, feed_id)


def test_conditional_get_then_304_costs_no_parse(settings: Settings, publisher: Publisher) -> None:
    settings = dataclasses.replace(settings, max_interval=3600)  # so the publisher's 2 h max-age governs
    feed_id = add_feed(settings, publisher.add("/feed", FEED, etag='"v1"', headers={"Cache-Control": "max-age=7200"}))
    first = poll_once(settings, feed_id)
    assert (first.status, first.new_entries) == ("parsed", 2)
    second = poll_once(settings, feed_id)
    assert (second.status, second.status_code, second.body, second.new_entries) == ("not_modified", 304, None, 0)
    feed = feed_row(settings, feed_id)
    assert feed.etag == '"v1"' and feed.consecutive_errors == 0
    assert feed.next_poll_reason == "Cache-Control max-age (2 h)"
    assert timedelta(hours=2) <= feed.next_poll_at - utcnow() <= timedelta(hours=2.3)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_defers_without_counting_an_error(settings: Settings, publisher: Publisher, status: int) -> None:
    feed_id = add_feed(settings, publisher.add("/busy", "slow down", status=status, headers={"Retry-After": "7200"}))
    poll = poll_once(settings, feed_id)
    assert poll.status == "deferred" and poll.status_code == status
    feed = feed_row(settings, feed_id)
    assert feed.consecutive_errors == 0 and feed.status == "active"
    assert feed.next_poll_reason == "Retry-After (2 h)"
    assert feed.next_poll_at - utcnow() >= timedelta(hours=2) - timedelta(seconds=5)


def test_503_storm_backs_off_and_never_gives_up(settings: Settings, publisher: Publisher) -> None:
    feed_id = add_feed(settings, publisher.add("/down", "down", status=503))
    waits = []
    for _ in range(6):
        poll_once(settings, feed_id)
        feed = feed_row(settings, feed_id)
        waits.append((feed.next_poll_at - utcnow()).total_seconds())
    assert feed.status == "active" and feed.consecutive_errors == 6
    assert feed.last_error == "HTTP 503 Service Unavailable"
    assert all(later > 1.8 * earlier for earlier, later in zip(waits, waits[1:], strict=False)), waits
    assert feed.next_poll_reason.startswith("error backoff: 6 error(s) in a row")
    assert json.loads(feedmill(settings, "feeds", "list", "--json").stdout)[0]["consecutive_errors"] == 6


def test_permanent_redirect_seen_repeatedly_moves_the_feed(settings: Settings, publisher: Publisher) -> None:
    new_url = publisher.add("/new", FEED)
    publisher.add("/old", "", status=301, headers={"Location": "/new"})
    publisher.add("/temporary", "", status=302, headers={"Location": "/new"})
    moved_id = add_feed(settings, publisher.url("/old"))
    temp_id = add_feed(settings, publisher.url("/temporary"))
    for round_no in range(1, settings.redirect_threshold + 1):
        poll_once(settings, moved_id)
        poll_once(settings, temp_id)
        if round_no < settings.redirect_threshold:
            assert feed_row(settings, moved_id).url == publisher.url("/old")
    moved = feed_row(settings, moved_id)
    assert moved.url == new_url
    assert moved.status_reason == f"URL changed from {publisher.url('/old')} after 3 permanent redirects"
    assert feed_row(settings, temp_id).url == publisher.url("/temporary")


def test_410_retires_the_feed_visibly_and_resume_undoes_it(settings: Settings, publisher: Publisher) -> None:
    url = publisher.add("/gone", "gone", status=410)
    feed_id = add_feed(settings, url)
    poll_once(settings, feed_id)
    feed = feed_row(settings, feed_id)
    assert feed.status == "retired" and feed.status_reason.startswith("HTTP 410 Gone on ")
    assert claim_feeds(settings, due_only=False) == []
    shown = json.loads(feedmill(settings, "feeds", "show", url, "--json").stdout)
    assert shown["status"] == "retired" and shown["history"][0]["status_code"] == 410
    resumed = feedmill(settings, "feeds", "resume", url)
    assert resumed.returncode == 0, resumed.stderr
    assert feed_row(settings, feed_id).status == "active"
    assert len(claim_feeds(settings)) == 1


def test_expired_lease_frees_a_feed_whose_worker_died(settings: Settings, publisher: Publisher) -> None:
    feed_id = add_feed(settings, publisher.add("/feed", FEED))
    (lost_poll,) = claim_feeds(settings, due_only=False)
    assert claim_feeds(settings, due_only=False) == []  # leased: nobody else fetches it
    with session_scope(settings) as session:
        session.get(Feed, feed_id).lease_until = utcnow() - timedelta(seconds=1)
    (new_poll,) = claim_feeds(settings, due_only=False)
    with session_scope(settings) as session:
        abandoned = session.get(Poll, lost_poll)
        assert abandoned.status == "error" and abandoned.error.startswith("abandoned")
    assert run_fetch(settings, lost_poll).parse is False  # the lost message, if it ever comes, does nothing
    assert run_fetch(settings, new_poll).parse is True


def test_feeds_show_explains_schedule_and_history(settings: Settings, publisher: Publisher) -> None:
    url = publisher.add("/feed", FEED, etag='"a"')
    feed_id = add_feed(settings, url)
    poll_once(settings, feed_id)
    poll_once(settings, feed_id)
    assert feedmill(settings, "feeds", "set", url, "--interval", "2h").returncode == 0
    poll_once(settings, feed_id)
    shown = json.loads(feedmill(settings, "feeds", "show", url, "--json").stdout)
    for key in ("url", "status", "last_polled_at", "last_status_code", "consecutive_errors",
                "next_poll_at", "next_poll_reason", "etag", "last_modified"):
        assert key in shown
    assert shown["next_poll_reason"] == "operator override: every 2 h"
    assert [h["status"] for h in shown["history"]] == ["not_modified", "not_modified", "parsed"]
    assert shown["history"][-1]["new_entries"] == 2 and shown["history"][-1]["bytes"] == len(FEED)
    text = feedmill(settings, "feeds", "show", url).stdout
    assert "next poll:" in text and "because: operator override: every 2 h" in text


def test_host_slots_limit_concurrency_and_spacing(sqlite_settings: Settings) -> None:
    polite = dataclasses.replace(sqlite_settings, host_max_concurrent=2, host_min_interval=0.5)

    def claim(host: str, poll_id: int) -> SlotClaim:
        with session_scope(polite) as session:
            return claim_host_slot(session, polite, host, poll_id)

    first = claim("news.example.org", 1)
    assert first.slot_id is not None
    too_soon = claim("news.example.org", 2)
    assert too_soon.slot_id is None and 0 < too_soon.wait_seconds <= 0.5
    assert claim("other.example.org", 3).slot_id is not None  # hosts are independent
    time.sleep(0.55)
    second = claim("news.example.org", 2)
    assert second.slot_id is not None
    time.sleep(0.55)
    assert claim("news.example.org", 4).slot_id is None  # two in flight
    with session_scope(polite) as session:
        free_host_slot(session, first.slot_id)
    assert claim("news.example.org", 4).slot_id is not None


def test_a_fetch_delivered_again_takes_over_the_slot_its_dead_delivery_held(settings: Settings) -> None:
    """A worker killed mid-fetch leaves its slot leased for a minute and a half; when the poll's fetch
    is sent again, the new delivery frees that slot instead of waiting behind it. Other polls'
    slots still count."""
    polite = dataclasses.replace(settings, host_max_concurrent=1, host_min_interval=0.0)

    def claim(poll_id: int) -> SlotClaim:
        with session_scope(polite) as session:
            return claim_host_slot(session, polite, "news.example.org", poll_id)

    died = claim(7)
    assert died.slot_id is not None
    assert claim(8).slot_id is None  # the host's one slot is taken
    again = claim(7)  # the same poll, delivered again
    assert again.slot_id is not None and again.slot_id != died.slot_id
    assert claim(8).slot_id is None  # the new delivery's slot counts as the old one did


@pytest.mark.parametrize(
    "spacing, delay", [(0.1, 1.5), (0.5, 0.0)], ids=["concurrency-limit", "start-spacing"]
)
def test_politeness_holds_across_worker_processes(
    postgres_settings: Settings,
    publisher: Publisher,
    start_worker: Callable[..., WorkerProcess],
    spacing: float,
    delay: float,
) -> None:
    polite = dataclasses.replace(postgres_settings, host_max_concurrent=2, host_min_interval=spacing)
    for n in range(8):
        add_feed(polite, publisher.add(f"/feed-{n}", FEED, delay=delay))
    start_worker(polite, concurrency=3, queues="fetch,parse")
    start_worker(polite, concurrency=3, queues="fetch,parse")
    use_broker(polite)
    enqueue_fetches(claim_feeds(polite, due_only=False))
    deadline = time.monotonic() + 60
    while len(publisher.timeline) < 8:
        assert time.monotonic() < deadline, publisher.timeline
        time.sleep(0.1)
    starts = sorted(start for _, start, _ in publisher.timeline)
    # Six worker processes could fetch six at once; the host allows two.
    assert publisher.max_concurrent() <= 2
    # Slot claims are at least `spacing` apart, so 8 fetches span at least 7 spacings; a loaded
    # machine may delay one request after its claim, so the spread, not each gap, is checked.
    assert starts[-1] - starts[0] >= 7 * spacing - 0.3


def _claim_in_process(database_url: str, home: str, rounds: int, queue: multiprocessing.Queue) -> None:
    settings = make_settings(Path(home), database_url)
    claimed = []
    for _ in range(rounds):
        claimed += claim_feeds(settings, due_only=False, limit=7)
    queue.put(claimed)


def test_concurrent_dispatchers_never_double_claim(settings: Settings) -> None:
    with session_scope(settings) as session:
        session.add_all(Feed(url=f"https://example.org/feed/{n}") for n in range(60))
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(target=_claim_in_process, args=(settings.database_url, str(settings.home), 5, queue))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    results = [queue.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(30)
    with session_scope(settings) as session:
        polled_feeds = list(session.scalars(select(Poll.feed_id)))
    assert sum(len(r) for r in results) == 60
    assert sorted(polled_feeds) == sorted(set(polled_feeds)) and len(polled_feeds) == 60

"""Webhook and stream delivery against real receivers: a local HTTP server that plays the
subscriber (failing, stalling), the real `feedmill run`, and Redis streams on the shared Redis."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from benchmarks.receiver import Receiver
from schemas.settings import Settings
from tasks.deliver import backoff, event_data, matches, new_secret, webhook_headers
from tests.conftest import Publisher, feedmill, feedmill_env, ok, rss

FEEDS, ITEMS = 3, 5


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver({1: 500, 2: 500, 3: 500, 7: "stall"}, stall=4.0)
    yield made
    made.close()


def publish(publisher: Publisher) -> list[str]:
    urls = []
    for f in range(FEEDS):
        items = [{"title": f"Feed {f} story {i} about harbour council budgets", "guid": f"urn:delivery:{f}:{i}",
                  "link": f"https://example.org/{f}/{i}",
                  "description": f"<p>Story {f}-{i}: the council met on the harbour budget, number {f * 10 + i}.</p>"}
                 for i in range(ITEMS)]
        urls.append(publisher.add(f"/d{f}.xml", rss(items, title=f"Feed {f}")))
    return urls


def test_webhook_events_survive_errors_and_a_stall_signed_and_once_each(
    settings: Settings, publisher: Publisher, receiver: Receiver
) -> None:
    """`feedmill run` with a webhook subscription whose receiver answers its first 3 calls with 500
    and stalls its 7th past the timeout: every article is acknowledged, every call's signature
    verifies, each retry of one event carries the same webhook-id and body, and the ids differ
    between events."""
    secret = new_secret()
    urls = publish(publisher)
    ok(feedmill(settings, "feeds", "add", *urls))
    ok(feedmill(settings, "subscriptions", "add", "all-news", "--webhook", receiver.url, "--secret", secret))
    env = feedmill_env(settings) | {"FEEDMILL_WEBHOOK_TIMEOUT": "2", "FEEDMILL_DELIVER_EVERY": "1"}
    service = subprocess.Popen([sys.executable, "-m", "workers", "run", "--concurrency", "2"], env=env,
                               cwd=settings.home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:  # until the sender counts every event delivered (the stalled call's 200 came too late for it)
            listed = json.loads(ok(feedmill(settings, "subscriptions", "list", "--json")))
            if listed[0]["deliveries"]["delivered"] == FEEDS * ITEMS:
                break
            assert service.poll() is None, service.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, f"{listed}, {len(receiver.calls)} calls"
            time.sleep(0.5)
    finally:
        service.send_signal(signal.SIGTERM)
        output = service.communicate(timeout=60)[0].decode()
    assert service.returncode == 0, output[-3000:]

    verifier = Webhook(secret)
    by_id: dict[str, set[bytes]] = {}
    for call in receiver.calls:
        event = verifier.verify(call["body"], call["headers"])  # raises if the signature is wrong
        assert event["type"] == "article.created" and event["data"]["feed_url"] in urls
        by_id.setdefault(call["headers"]["webhook-id"], set()).add(call["body"])
    assert all(len(bodies) == 1 for bodies in by_id.values()), "a retry changed its body"
    assert len(by_id) == FEEDS * ITEMS, "one event per article"
    assert len(receiver.acknowledged()) == FEEDS * ITEMS  # and the stalled call's late 200 counted once
    assert len(receiver.calls) >= FEEDS * ITEMS + 4  # 3 refused and 1 stalled calls were retried
    (subscription,) = listed
    assert subscription["deliveries"]["delivered"] == FEEDS * ITEMS
    assert subscription["deliveries"]["dead"] == 0 and subscription["deliveries"]["pending"] == 0
    (shown,) = json.loads(ok(feedmill(settings, "status", "--json")))["subscriptions"]
    assert (shown["name"], shown["delivered"], shown["oldest_pending_seconds"]) == ("all-news", FEEDS * ITEMS, None)


def test_a_subscriber_down_for_good_becomes_a_dead_letter_that_requeue_sends(
    sqlite_settings: Settings, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver that always answers 503, with a retry window of 0 s: the event is dead after one
    attempt, listed in `failures`; once the receiver is fixed, `requeue failed` delivers it."""
    settings = sqlite_settings
    down = Receiver({n: 503 for n in range(1, 1000)})
    try:
        url = publisher.add("/one.xml", rss([{"title": "Harbour budget", "guid": "urn:one", "link": "https://e.org/1",
                                               "description": "<p>The council met on the harbour budget.</p>"}]))
        ok(feedmill(settings, "feeds", "add", url))
        ok(feedmill(settings, "subscriptions", "add", "down", "--webhook", down.url))
        monkeypatch.setenv("FEEDMILL_DELIVERY_RETRY_FOR", "0")
        assert "events: 0 delivered, 0 waiting for a retry (the service sends them), 1 dead" in ok(
            feedmill(settings, "run", "--once"))
        failures = json.loads(ok(feedmill(settings, "failures", "list", "--json")))
        (dead,) = failures
        assert dead["stage"] == "send" and "HTTP 503" in dead["error"] and dead["subject"].startswith("delivery ")
        assert len(down.calls) == 1
        down.plan = {}  # fixed
        monkeypatch.delenv("FEEDMILL_DELIVERY_RETRY_FOR")
        ok(feedmill(settings, "requeue", "failed", "--yes"))
        ok(run_once_then_send(settings))
        assert len(down.calls) == 2 and down.calls[1]["status"] == 200
        assert down.calls[0]["headers"]["webhook-id"] == down.calls[1]["headers"]["webhook-id"]
        assert down.calls[0]["body"] == down.calls[1]["body"]
        listed = json.loads(ok(feedmill(settings, "subscriptions", "list", "--json")))
        assert listed[0]["deliveries"]["delivered"] == 1 and listed[0]["deliveries"]["dead"] == 0
    finally:
        down.close()


def run_once_then_send(settings: Settings) -> subprocess.CompletedProcess[str]:
    """`run --once`, then the send tasks in this process (as a worker would run them): a round
    waits only for the events it made itself, so an event re-opened before it (`requeue`) is sent here."""
    script = (
        "from schemas.settings import current_settings\n"
        "from tasks.deliver import run_send\n"
        "from tasks.storage.deliveries import subscriptions_with_due\n"
        "from schemas.db import session_scope\nfrom schemas.models import utcnow\n"
        "s = current_settings()\n"
        "with session_scope(s) as session: due = subscriptions_with_due(session, utcnow())\n"
        "for i in due: run_send(s, i)\n"
    )
    ok(feedmill(settings, "run", "--once"))
    return subprocess.run([sys.executable, "-c", script], env=feedmill_env(settings), cwd=settings.home,
                          capture_output=True, text=True, timeout=120)


STORY = ("<p>The harbour council approved a new budget for the old pier on Tuesday, after three "
         "months of hearings in which fishermen, shop owners and residents argued over the cost of "
         "repairs, the height of the sea wall and who should pay for the dredging of the channel.</p>")


def test_a_copy_that_turns_out_later_than_its_original_is_sent_again_updated(
    settings: Settings, publisher: Publisher
) -> None:
    """A syndicated copy is delivered first; its original, published two hours earlier, arrives in
    the next round: the copy is re-pointed at it (issue 24) and its subscriber gets an
    `article.updated` event saying so, as well as the original's `article.created`. Each `run --once`
    returns once its events are sent."""
    receiver = Receiver({})
    try:
        copy = publisher.add("/copy.xml", rss([{
            "title": "Harbour budget approved", "guid": "urn:copy", "link": "https://copy.example/1",
            "pubDate": "Tue, 03 Mar 2026 14:00:00 GMT", "description": STORY}], title="Syndicator"))
        ok(feedmill(settings, "feeds", "add", copy))
        ok(feedmill(settings, "subscriptions", "add", "news", "--webhook", receiver.url))
        ok(feedmill(settings, "run", "--once"))
        ((created,),) = [[json.loads(call["body"]) for call in receiver.calls]]
        assert created["type"] == "article.created" and created["data"]["duplicate_of"] is None
        copy_id = created["data"]["id"]

        original = publisher.add("/original.xml", rss([{
            "title": "Harbour budget approved", "guid": "urn:original", "link": "https://original.example/1",
            "pubDate": "Tue, 03 Mar 2026 12:00:00 GMT", "description": STORY}], title="Original"))
        ok(feedmill(settings, "feeds", "add", original))
        ok(feedmill(settings, "run", "--once"))
        events = [json.loads(call["body"]) for call in receiver.calls[1:]]
        by_type = {event["type"]: event["data"] for event in events}
        assert len(events) == 2 and set(by_type) == {"article.created", "article.updated"}, events
        original_id = by_type["article.created"]["id"]
        assert by_type["article.created"]["duplicate_of"] is None
        updated = by_type["article.updated"]
        assert (updated["id"], updated["duplicate_of"], updated["cluster"]) == (copy_id, original_id, original_id)
        listed = json.loads(ok(feedmill(settings, "subscriptions", "list", "--json")))
        assert listed[0]["deliveries"]["delivered"] == 3 and listed[0]["deliveries"]["pending"] == 0
    finally:
        receiver.close()


@pytest.mark.integration
def test_redis_stream_subscription_gets_each_article_once(postgres_settings: Settings, publisher: Publisher) -> None:
    """A stream subscription: one XADD per article, the event JSON under `event`, the id under `id`."""
    import redis

    settings = postgres_settings
    urls = publish(publisher)
    ok(feedmill(settings, "feeds", "add", *urls))
    key = f"feedmill-test-{os.getpid()}"
    client = redis.Redis.from_url(settings.broker_url)
    client.delete(key)
    ok(feedmill(settings, "subscriptions", "add", "stream", "--redis-stream", key, "--query", "harbour budget"))
    summary = json.loads(ok(feedmill(settings, "run", "--once", "--json")))
    assert summary["events"] == {"delivered": FEEDS * ITEMS, "pending": 0, "dead": 0}
    entries = client.xrange(key)
    events = [json.loads(fields[b"event"]) for _id, fields in entries]
    assert len(events) == FEEDS * ITEMS
    assert len({e["data"]["id"] for e in events}) == FEEDS * ITEMS
    assert {fields[b"id"] for _id, fields in entries} and all(e["type"] == "article.created" for e in events)
    client.delete(key)


def test_filters_backoff_and_signatures_are_what_they_say() -> None:
    """Pure functions: a subscription's filters, the retry schedule, the signing headers."""
    @dataclasses.dataclass
    class Sub:
        topics: list[str] | None = None
        feed_ids: list[int] | None = None
        tags: list[str] | None = None
        query: str | None = None

    @dataclasses.dataclass
    class Art:
        id: int = 1
        guid: str = "g"
        url: str = "https://e.org/1"
        link: str = "https://e.org/1"
        title: str = "Harbour budget agreed"
        author: str | None = None
        published_at: datetime | None = None
        summary: str | None = None
        text: str = "The council agreed the harbour budget."
        html: str | None = None
        images: list | None = None
        enclosures: list | None = None
        language: str = "en"
        topics: list = dataclasses.field(default_factory=lambda: [["medtop:04000000", 0.9]])
        places: list | None = None
        tags: list = dataclasses.field(default_factory=lambda: ["Local"])
        dropped_by: int | None = None
        duplicate_of: int | None = None
        duplicate_reason: str | None = None
        cluster_id: int | None = 1
        content_hash: str = "h"
        revision: int = 1
        stage: str = "deliver"
        status: str = "pending"
        error: str | None = None

    data = event_data(Art(), "https://e.org/feed")
    assert "stage" not in data and data["topics"] == ["medtop:04000000"]
    assert matches(Sub(), data, 3)
    assert matches(Sub(topics=["medtop:04000000", "x"], feed_ids=[3], tags=["local"], query="HARBOUR council"), data, 3)
    assert not matches(Sub(topics=["x"]), data, 3)
    assert not matches(Sub(feed_ids=[4]), data, 3)
    assert not matches(Sub(tags=["sport"]), data, 3)
    assert not matches(Sub(query="harbour storm"), data, 3)

    import random
    rng = random.Random(1)
    waits = [backoff(n, 3600, rng) for n in range(1, 16)]
    assert waits[0] <= 5 and all(w <= 3600 for w in waits) and waits[-1] >= 1800
    assert sum(waits) < 86400  # many attempts fit in the 24 h retry window

    secret = new_secret()
    now = datetime.now(UTC)
    headers = webhook_headers(secret, "msg_1", '{"a": 1}', now)
    assert headers["webhook-id"] == "msg_1" and headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify('{"a": 1}', headers) == {"a": 1}
    with pytest.raises(Exception):
        Webhook(secret).verify('{"a": 2}', headers)  # another body: the signature does not hold

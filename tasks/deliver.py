"""Delivery: processed articles pushed out to subscribers, signed, retried, never lost.

The ``deliver`` stage (after classify) turns each finished article into one event per matching
subscription (``article.created``, or ``article.updated`` when that subscription had an earlier
event for it), stored as a ``deliveries`` row in the stage's own transaction, with its body
frozen: every attempt sends the same bytes under the same ``webhook-id``. Sending is a separate
task per subscription (``feedmill.send``): a webhook POST signed per Standard Webhooks, or an
``XADD`` to a Redis stream. A failed attempt waits ``backoff`` (first retry within 10 s, doubling,
capped at ``FEEDMILL_DELIVERY_BACKOFF_CAP``), until ``FEEDMILL_DELIVERY_RETRY_FOR`` has passed:
then the event is a dead letter (``feedmill failures``, ``feedmill requeue failed``). The periodic
``feedmill.deliver_due`` sends what is due (retries, and events whose message was lost), so a
subscriber that is down costs rows in the database, never memory or another subscriber's time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import secrets
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import httpx
from celery import shared_task
from sqlalchemy import Row
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

from schemas.db import session_scope
from schemas.models import Subscription, utcnow
from schemas.payloads import ArticleBatch
from schemas.settings import Settings, current_settings
from tasks.base import StageTask, send
from tasks.storage import deliveries as stored
from tasks.storage.articles import Changes, run_article_stage
from tasks.storage.reading import article_record, iso

STAGE = "deliver"
CREATED, UPDATED = "article.created", "article.updated"
#: Pipeline bookkeeping, not part of what a subscriber is told.
INTERNAL_FIELDS = ("stage", "status", "error")
#: Events one send task takes for one subscription, and the seconds it may spend on them, before
#: it hands on to the next task (so one busy subscription does not hold a worker process long).
SEND_BATCH = 200
SEND_BUDGET = 60.0


# ------------------------------------------------------------------ pure functions


def event_data(article: Any, feed_url: str) -> dict[str, Any]:
    """The article object an event carries: the export's fields without the pipeline's bookkeeping."""
    data = article_record(article, feed_url)
    for name in INTERNAL_FIELDS:
        data.pop(name)
    return data


def digest_of(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def matches(subscription: Any, data: dict[str, Any], feed_id: int) -> bool:
    """Does the article pass the subscription's filters? Each given filter must hold: one of its
    topics, one of its feeds, one of its tags, and every word of its query in the title or text."""
    if subscription.topics and not set(subscription.topics) & set(data["topics"]):
        return False
    if subscription.feed_ids and feed_id not in subscription.feed_ids:
        return False
    if subscription.tags and not {t.lower() for t in subscription.tags} & {t.lower() for t in data["tags"]}:
        return False
    if subscription.query:
        words = f"{data['title'] or ''} {data['text'] or ''}".lower()
        return all(word in words for word in subscription.query.lower().split())
    return True


def event_body(event_type: str, data: dict[str, Any], now: datetime) -> str:
    """The event as sent: Standard Webhooks' recommended envelope."""
    return json.dumps({"type": event_type, "timestamp": iso(now), "data": data}, ensure_ascii=False)


def backoff(attempts: int, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: 5 s doubling, capped, with
    jitter (half to all of it), so the first retry comes within 5 s and retries of many events spread."""
    return min(cap, 5.0 * 2 ** (attempts - 1)) * (rng or random).uniform(0.5, 1.0)


def webhook_headers(secret: str, event_id: str, body: str, now: datetime) -> dict[str, str]:
    """Standard Webhooks headers: id, timestamp and the v1 HMAC-SHA256 signature of id.timestamp.body."""
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, now, body),
    }


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and a random 24-byte key in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


# ------------------------------------------------------------------ the deliver stage


class DeliverBatch:
    """Inside the stage's transaction: the batch's events, written in one statement; an article
    whose event cannot be made fails alone (``decide`` raises its error)."""

    columns = ()

    def __init__(self) -> None:
        self.errors: dict[int, Exception] = {}
        self.notify: set[int] = set()

    def prepare(self, session: Session, rows: Sequence[Row[Any]]) -> None:
        subscriptions = stored.all_subscriptions(session)
        if not subscriptions:
            return
        ids = [row.id for row in rows]
        earlier = stored.delivered_pairs(session, ids)
        now = utcnow()
        events = []
        for article, feed_url in stored.articles_for_events(session, ids):
            try:
                if article.dropped_by is not None:
                    continue
                data = event_data(article, feed_url)
                digest = digest_of(data)
                for subscription in subscriptions:
                    if matches(subscription, data, article.feed_id):
                        kind = UPDATED if (subscription.id, article.id) in earlier else CREATED
                        events.append({
                            "subscription_id": subscription.id, "article_id": article.id, "event_type": kind,
                            "event_id": f"msg_{uuid.uuid4().hex}", "digest": digest,
                            "body": event_body(kind, data, now), "status": "pending", "attempts": 0,
                            "next_attempt_at": now, "created_at": now,
                        })
            except Exception as exc:  # this article fails in its stage; the others go on
                self.errors[article.id] = exc
        self.notify = stored.add_deliveries(session, events)

    def decide(self, row: Row[Any]) -> Changes:
        if row.id in self.errors:
            raise self.errors[row.id]
        return {}


def run_deliver(settings: Settings, article_ids: Sequence[int]) -> set[int]:
    """Make the batch's events; return the subscriptions that got new ones."""
    batch = DeliverBatch()
    run_article_stage(settings, STAGE, article_ids, batch.columns, batch.decide, prepare=batch.prepare)
    return batch.notify


@shared_task(base=StageTask, name="feedmill.deliver")
def deliver_task(message: dict) -> None:
    for subscription_id in sorted(run_deliver(current_settings(), ArticleBatch.from_message(message).article_ids)):
        send("send", {"subscription_id": subscription_id})


# ------------------------------------------------------------------ sending


def attempt(subscription: Subscription, event: stored.DueDelivery, settings: Settings, client: httpx.Client) -> None:
    """One attempt; raises with the reason when the subscriber did not take it."""
    if subscription.kind == stored.REDIS_STREAM:
        stream_redis(settings).xadd(subscription.target, {"id": event.event_id, "event": event.body},
                                    maxlen=settings.stream_maxlen, approximate=True)
        return
    response = client.post(subscription.target, content=event.body.encode(),
                           headers=webhook_headers(subscription.secret or "", event.event_id, event.body, utcnow()))
    if not 200 <= response.status_code < 300:
        raise DeliveryRefused(f"HTTP {response.status_code}")


class DeliveryRefused(Exception):
    """The subscriber answered, but not with a 2xx."""


def stream_redis_url(settings: Settings) -> str | None:
    """Where stream subscriptions write: FEEDMILL_STREAM_REDIS_URL, else the broker if it is Redis."""
    if settings.stream_redis_url:
        return settings.stream_redis_url
    return settings.broker_url if settings.broker_url.startswith(("redis://", "rediss://")) else None


@cache
def _redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


def stream_redis(settings: Settings) -> Any:
    url = stream_redis_url(settings)
    if url is None:
        raise DeliveryRefused("no Redis for streams: set FEEDMILL_STREAM_REDIS_URL (the broker is not Redis)")
    return _redis_client(url)


def run_send(settings: Settings, subscription_id: int) -> bool:
    """Send a subscription's due events, oldest first, until one fails, SEND_BATCH are sent or
    SEND_BUDGET s have passed; record the outcomes in one transaction. Return whether more may be
    due (the task then sends itself again).

    The claim's lease covers the budget plus one attempt, so events a killed worker held are due
    again within about a minute and a half. A worker killed after sending but before recording
    sends those events again, under the same ids: delivery is at least once.
    """
    started = time.monotonic()
    with session_scope(settings) as session:
        subscription = session.get(Subscription, subscription_id)
        lease = SEND_BUDGET + settings.webhook_timeout + 5
        claimed = stored.claim_due(session, subscription_id, utcnow(), SEND_BATCH, lease)
        if subscription is not None:
            session.expunge(subscription)
    if not claimed or subscription is None:
        return False
    delivered: list[int] = []
    failure: tuple[stored.DueDelivery, Exception] | None = None
    with httpx.Client(timeout=settings.webhook_timeout) as client:
        for event in claimed:
            if time.monotonic() - started > SEND_BUDGET:
                break
            try:
                attempt(subscription, event, settings, client)
            except Exception as exc:  # noqa: BLE001 - every failure is the subscriber's, retried
                failure = (event, exc)
                break
            delivered.append(event.id)
    now = utcnow()
    with session_scope(settings) as session:
        stored.mark_delivered(session, delivered, now)
        if failure is not None:
            _failed(session, settings, subscription, *failure, now)
        tried = set(delivered) | ({failure[0].id} if failure else set())
        stored.release(session, [event.id for event in claimed if event.id not in tried])
    return failure is None and len(claimed) == SEND_BATCH


def _failed(session: Session, settings: Settings, subscription: Subscription, event: stored.DueDelivery,
            exc: Exception, now: datetime) -> None:
    """A failed attempt: retried after ``backoff``, or past the retry window a dead letter."""
    error = str(exc) if isinstance(exc, DeliveryRefused) else f"{type(exc).__name__}: {exc}"
    if now - event.created_at >= timedelta(seconds=settings.delivery_retry_for):
        stored.mark_dead(session, event.id, subscription.name,
                         f"gave up after {event.attempts + 1} attempt(s): {error}", attempts=event.attempts + 1)
    else:
        wait = backoff(event.attempts + 1, settings.delivery_backoff_cap)
        stored.mark_retry(session, event.id, now + timedelta(seconds=wait), error)


@shared_task(base=StageTask, name="feedmill.send")
def send_task(message: dict) -> None:
    subscription_id = int(message["subscription_id"])
    if run_send(current_settings(), subscription_id):
        send("send", {"subscription_id": subscription_id})


@shared_task(base=StageTask, name="feedmill.deliver_due")
def deliver_due_task() -> int:
    """Periodic (celery beat, every FEEDMILL_DELIVER_EVERY s): a send task for each subscription
    with events due, retries and events whose message was lost alike."""
    with session_scope(current_settings(), read_only=True) as session:
        due = stored.subscriptions_with_due(session, utcnow())
    for subscription_id in due:
        send("send", {"subscription_id": subscription_id})
    return len(due)

"""Subscriptions and deliveries: where processed articles go, and each event until it is delivered.

A delivery row is created in the deliver stage's transaction (so an article finishes its
pipeline exactly when its events exist), claimed by a sender with a lease, and ends
``delivered`` or, after ``FEEDMILL_DELIVERY_RETRY_FOR``, ``dead`` with a dead letter in
``failures``. Everything a sender needs is in the row, so nothing pending lives in the broker.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select, update
from sqlalchemy.orm import Session

from schemas.db import insert_for
from schemas.models import PENDING, Article, Delivery, Feed, Failure, Subscription, utcnow
from tasks.storage.failures import record_failure
from tasks.storage.reading import LISTED

ACTIVE, PAUSED = "active", "paused"
DELIVERED, DEAD = "delivered", "dead"
WEBHOOK, REDIS_STREAM = "webhook", "redis_stream"


@dataclass(frozen=True)
class DueDelivery:
    """What a sender needs of one claimed event."""

    id: int
    event_id: str
    body: str
    attempts: int
    created_at: datetime


# ------------------------------------------------------------------ subscriptions


def add_subscription(session: Session, **fields: Any) -> Subscription:
    subscription = Subscription(**fields)
    session.add(subscription)
    session.flush()
    return subscription


def subscription_named(session: Session, name: str) -> Subscription | None:
    return session.scalar(select(Subscription).where(Subscription.name == name))


def all_subscriptions(session: Session) -> list[Subscription]:
    return list(session.scalars(select(Subscription).order_by(Subscription.name)))


def remove_subscription(session: Session, subscription_id: int) -> None:
    """The subscription and its deliveries (ON DELETE CASCADE); its dead letters stay, closed."""
    session.execute(
        update(Failure).where(Failure.delivery_id.in_(
            select(Delivery.id).where(Delivery.subscription_id == subscription_id)
        ), Failure.requeued_at.is_(None)).values(requeued_at=utcnow())
    )
    session.execute(delete(Subscription).where(Subscription.id == subscription_id))


def feed_urls(session: Session, feed_ids: Collection[int]) -> dict[int, str]:
    """The URLs of these feeds (a subscription's feed filter, shown)."""
    if not feed_ids:
        return {}
    return dict(session.execute(select(Feed.id, Feed.url).where(Feed.id.in_(list(feed_ids)))).all())


# ------------------------------------------------------------------ the deliver stage


def articles_for_events(session: Session, article_ids: Sequence[int]) -> list[tuple[Article, str]]:
    """The articles with their feed's URL: what an event's ``data`` is made of."""
    rows = session.execute(
        select(Article, Feed.url).join(Feed, Feed.id == Article.feed_id).where(Article.id.in_(list(article_ids)))
    ).all()
    return [(article, url) for article, url in rows]


def delivered_pairs(session: Session, article_ids: Sequence[int]) -> set[tuple[int, int]]:
    """(subscription id, article id) of these articles' earlier events: a new one is an update."""
    return {
        (subscription_id, article_id)
        for subscription_id, article_id in session.execute(
            select(Delivery.subscription_id, Delivery.article_id).where(Delivery.article_id.in_(list(article_ids)))
        )
    }


def add_deliveries(session: Session, rows: Sequence[dict[str, Any]]) -> set[int]:
    """Insert these events; one already there (same subscription, article and digest: a redelivered
    batch) is left as it is. Return the subscriptions that got a new event."""
    if not rows:
        return set()
    insert = insert_for(session, Delivery.__table__)
    added = session.execute(
        insert.values(list(rows))
        .on_conflict_do_nothing(index_elements=["subscription_id", "article_id", "digest"])
        .returning(Delivery.subscription_id)
    ).scalars().all()
    return set(added)


def evented_articles(session: Session, subscription_id: int) -> Iterator[tuple[Article, str]]:
    """The listed articles this subscription has had an event for, with their feed's URL, last
    changed first (read 200 at a time): what its published feed is made of."""
    has_event = select(Delivery.id).where(
        Delivery.subscription_id == subscription_id, Delivery.article_id == Article.id
    ).exists()
    rows = session.execute(
        select(Article, Feed.url).join(Feed, Feed.id == Article.feed_id).where(*LISTED, has_event)
        .order_by(Article.change_seq.desc(), Article.id.desc())
    ).yield_per(200)
    for article, feed_url in rows:
        yield article, feed_url


# ------------------------------------------------------------------ sending


def subscriptions_with_due(session: Session, now: datetime) -> list[int]:
    """Active subscriptions with an event due now that no sender holds."""
    return list(session.scalars(
        select(Delivery.subscription_id.distinct())
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .where(Subscription.status == ACTIVE, *_due(now))
    ))


def _due(now: datetime) -> tuple[Any, ...]:
    return (Delivery.status == PENDING, Delivery.next_attempt_at <= now,
            or_(Delivery.lease_until.is_(None), Delivery.lease_until < now))


def claim_due(session: Session, subscription_id: int, now: datetime, limit: int, lease: float) -> list[DueDelivery]:
    """Take up to ``limit`` due events of an active subscription, oldest first, for ``lease`` s."""
    subscription = session.get(Subscription, subscription_id)
    if subscription is None or subscription.status != ACTIVE:
        return []
    rows = session.scalars(
        select(Delivery).where(Delivery.subscription_id == subscription_id, *_due(now))
        .order_by(Delivery.id).limit(limit).with_for_update(skip_locked=True)
    ).all()
    for delivery in rows:
        delivery.lease_until = now + timedelta(seconds=lease)
    return [DueDelivery(d.id, d.event_id, d.body, d.attempts, d.created_at) for d in rows]


def mark_delivered(session: Session, delivery_ids: Sequence[int], now: datetime) -> None:
    if delivery_ids:
        session.execute(update(Delivery).where(Delivery.id.in_(list(delivery_ids))).values(
            status=DELIVERED, attempts=Delivery.attempts + 1, delivered_at=now, lease_until=None, last_error=None))


def mark_retry(session: Session, delivery_id: int, next_attempt_at: datetime, error: str) -> None:
    session.execute(update(Delivery).where(Delivery.id == delivery_id).values(
        attempts=Delivery.attempts + 1, next_attempt_at=next_attempt_at, lease_until=None, last_error=error[:2000]))


def mark_dead(session: Session, delivery_id: int, subscription_name: str, error: str, attempts: int) -> None:
    """Give up on an event: ``dead``, with a dead letter that ``feedmill requeue failed`` sends again."""
    session.execute(update(Delivery).where(Delivery.id == delivery_id).values(
        status=DEAD, attempts=Delivery.attempts + 1, lease_until=None, last_error=error[:2000]))
    record_failure(session, "feedmill.send", f"delivery {delivery_id} to {subscription_name}", error,
                   delivery_id=delivery_id, attempts=attempts)


def release(session: Session, delivery_ids: Sequence[int]) -> None:
    """Give back claimed events not attempted (the sender stopped early): due again at once."""
    if delivery_ids:
        session.execute(update(Delivery).where(Delivery.id.in_(list(delivery_ids))).values(lease_until=None))


def reopen_deliveries(session: Session, delivery_ids: Sequence[int]) -> set[int]:
    """Dead (or pending) events due again now with a fresh retry window; return their subscriptions."""
    now = utcnow()
    session.execute(update(Delivery).where(Delivery.id.in_(list(delivery_ids)), Delivery.status != DELIVERED).values(
        status=PENDING, next_attempt_at=now, lease_until=None, created_at=now))
    return set(session.scalars(select(Delivery.subscription_id).where(Delivery.id.in_(list(delivery_ids)))))


def untried_events_since(session: Session, since: datetime) -> int:
    """Events made since ``since`` that no attempt has been made at yet, of active subscriptions
    whose receiver is not known to be down (none of their events is waiting for a retry): what a
    round of ``run --once`` waits to see sent."""
    down = select(Delivery.subscription_id).where(Delivery.status == PENDING, Delivery.attempts > 0)
    return session.scalar(
        select(func.count()).select_from(Delivery)
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .where(Subscription.status == ACTIVE, Delivery.status == PENDING, Delivery.attempts == 0,
               Delivery.created_at >= since, Delivery.subscription_id.not_in(down))
    ) or 0


def events_since(session: Session, since: datetime) -> dict[str, int]:
    """How many events made since ``since`` are delivered, pending (waiting to be tried or retried) and dead."""
    counts = dict(session.execute(
        select(Delivery.status, func.count()).where(Delivery.created_at >= since).group_by(Delivery.status)
    ).all())
    return {status: counts.get(status, 0) for status in (DELIVERED, PENDING, DEAD)}


# ------------------------------------------------------------------ status


def delivery_counts(session: Session, now: datetime) -> list[dict[str, Any]]:
    """Per subscription: delivered, pending (not yet tried), retrying, dead, and the age in seconds
    of its oldest undelivered event (the delivery lag)."""
    retrying = and_(Delivery.status == PENDING, Delivery.attempts > 0)
    rows = session.execute(
        select(
            Subscription.name, Subscription.kind, Subscription.status,
            func.count(case((Delivery.status == DELIVERED, 1))),
            func.count(case((and_(Delivery.status == PENDING, Delivery.attempts == 0), 1))),
            func.count(case((retrying, 1))),
            func.count(case((Delivery.status == DEAD, 1))),
            func.min(case((Delivery.status == PENDING, Delivery.created_at))),
        )
        .select_from(Subscription).outerjoin(Delivery, Delivery.subscription_id == Subscription.id)
        .group_by(Subscription.id, Subscription.name, Subscription.kind, Subscription.status)
        .order_by(Subscription.name)
    ).all()
    return [
        {"name": name, "kind": kind, "status": status, "delivered": delivered, "pending": pending,
         "retrying": retrying_count, "dead": dead,
         "oldest_pending_seconds": round((now - _aware(oldest)).total_seconds(), 1) if oldest else None}
        for name, kind, status, delivered, pending, retrying_count, dead, oldest in rows
    ]


def _aware(value: datetime) -> datetime:
    """``min()`` over a UTC column may come back naive from SQLite."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)

"""The scheduler: claim feeds that are due and enqueue one fetch per feed.

A claim sets the feed's lease and creates its poll row in one transaction
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's write lock serialises
claims), so several schedulers never fetch one feed twice at once, and a
lease that expires frees a feed whose worker died.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from celery import shared_task
from sqlalchemy import func, or_, select, update

from schemas.db import session_scope
from schemas.models import (
    PENDING,
    POLL_ERROR,
    POLL_FETCHED,
    POLL_QUEUED,
    Article,
    Feed,
    Poll,
    utcnow,
)
from schemas.payloads import PollRef
from schemas.pipeline import ARTICLE_STAGES
from schemas.settings import Settings, current_settings
from tasks.base import StageTask, send, send_articles
from tasks.websub import feeds_to_subscribe

log = logging.getLogger(__name__)

#: Most feeds one dispatch claims; the next dispatch takes the rest.
DISPATCH_LIMIT = 500


def claim_feeds(
    settings: Settings,
    *,
    due_only: bool = True,
    feed_ids: Sequence[int] | None = None,
    limit: int = DISPATCH_LIMIT,
) -> list[int]:
    """Lease active feeds not being fetched (due ones, unless ``due_only`` is off); return new poll ids."""
    now = utcnow()
    with session_scope(settings) as session:
        query = (
            select(Feed)
            .where(
                Feed.status == "active",
                or_(Feed.lease_until.is_(None), Feed.lease_until < now),
            )
            .order_by(Feed.next_poll_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if due_only:
            query = query.where(Feed.next_poll_at <= now)
        if feed_ids is not None:
            query = query.where(Feed.id.in_(feed_ids))
        feeds = session.scalars(query).all()
        # A feed whose lease expired had a fetch that never finished (worker killed, message lost).
        session.execute(
            update(Poll)
            .where(Poll.feed_id.in_([feed.id for feed in feeds]), Poll.status == POLL_QUEUED)
            .values(status=POLL_ERROR, error="abandoned: its fetch did not finish before the lease expired", finished_at=now)
        )
        polls = []
        for feed in feeds:
            feed.lease_until = now + timedelta(seconds=settings.lease_seconds)
            poll = Poll(feed_id=feed.id, requested_at=now)
            session.add(poll)
            polls.append(poll)
        session.flush()
        return [poll.id for poll in polls]


def enqueue_fetches(poll_ids: Sequence[int]) -> None:
    for poll_id in poll_ids:
        send("fetch", PollRef(poll_id).to_message())


def requeue_unfinished(settings: Settings, older_than: float | None = None) -> dict[str, int]:
    """Enqueue every article still pending in a stage and every unparsed body,
    or with ``older_than`` (seconds) only those untouched for that long (the sweeper).

    Stages are idempotent, so re-sending work that is also still queued
    costs a little time and changes nothing.
    """
    counts: dict[str, int] = {}
    polls = select(Poll.id).where(Poll.status == POLL_FETCHED)
    articles = select(Article.stage, Article.id).where(Article.status == PENDING, Article.stage.in_(ARTICLE_STAGES))
    if older_than is not None:
        cutoff = utcnow() - timedelta(seconds=older_than)
        polls = polls.where(func.coalesce(Poll.started_at, Poll.requested_at) < cutoff)
        articles = articles.where(Article.updated_at < cutoff)
    with session_scope(settings) as session:
        unparsed = list(session.scalars(polls))
        pending = session.execute(articles.order_by(Article.id)).all()
    for poll_id in unparsed:
        send("parse", PollRef(poll_id).to_message())
    counts["parse"] = len(unparsed)
    for stage in ARTICLE_STAGES:
        ids = [article_id for row_stage, article_id in pending if row_stage == stage]
        send_articles(stage, ids)
        counts[stage] = len(ids)
    return counts


@shared_task(base=StageTask, name="feedmill.dispatch")
def dispatch_task() -> int:
    """Periodic (celery beat): claim due feeds, enqueue their fetches and WebSub (re)subscriptions."""
    settings = current_settings()
    poll_ids = claim_feeds(settings)
    enqueue_fetches(poll_ids)
    for feed_id in feeds_to_subscribe(settings):
        send("websub", feed_id)
    return len(poll_ids)


@shared_task(base=StageTask, name="feedmill.sweep")
def sweep_task() -> dict[str, int]:
    """Periodic (celery beat): re-enqueue work stuck longer than FEEDMILL_STUCK_AFTER
    (worker killed, message lost, broker flushed), so the database, not the broker, is the guarantee."""
    settings = current_settings()
    counts = requeue_unfinished(settings, older_than=settings.stuck_after)
    if any(counts.values()):
        log.warning("sweeper re-enqueued stuck work: %s", counts)
    return counts

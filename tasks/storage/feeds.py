"""Feeds: the end of a poll (errors counted, lease released, next poll decided) and the publishing rate."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schemas.models import Article, Feed, utcnow
from schemas.settings import Settings
from tasks.schedule import (
    MIN_ENTRIES_FOR_RATE,
    WEEK,
    FeedHints,
    HttpHints,
    PollOutcome,
    SchedulePolicy,
    decide_next_poll,
)

#: How far back the publishing rate of a feed is measured.
RATE_WINDOW = timedelta(days=28)


def finish_poll_of_feed(
    session: Session,
    settings: Settings,
    feed: Feed,
    kind: str,
    http: HttpHints,
    error: str | None = None,
) -> None:
    """A poll of ``feed`` ended (``kind``: ok, error or deferred): count errors,
    release the lease, and decide the next poll with its reason."""
    now = utcnow()
    if kind == "ok":
        feed.consecutive_errors, feed.last_error = 0, None
    elif kind == "error":
        feed.consecutive_errors += 1
        feed.last_error = error
    feed.lease_until = None
    outcome = PollOutcome(
        kind=kind,
        consecutive_errors=feed.consecutive_errors,
        entries_per_week=entries_per_week(session, feed.id, now),
        override_seconds=feed.interval_override,
        http=http,
        feed=FeedHints.from_dict(feed.schedule_hints),
    )
    decision = decide_next_poll(outcome, SchedulePolicy.from_settings(settings), now)
    feed.next_poll_at, feed.next_poll_reason = decision.next_poll_at, decision.reason


def entries_per_week(session: Session, feed_id: int, now: datetime) -> float | None:
    """The feed's publishing rate over ``RATE_WINDOW``; None while it has too few entries to tell."""
    seen_at = func.coalesce(Article.published_at, Article.created_at)
    total, recent = session.execute(
        select(func.count(), func.count().filter(seen_at >= now - RATE_WINDOW)).where(Article.feed_id == feed_id)
    ).one()
    if total < MIN_ENTRIES_FOR_RATE:
        return None
    return recent / (RATE_WINDOW.total_seconds() / WEEK)

"""The pipeline's counts, read for ``feedmill status``, ``feedmill healthcheck`` and the gauges of
``/metrics``: articles by stage and status, feeds by health, open dead letters, the last hour's
throughput, the feeds in trouble and the oldest unfinished item."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from schemas.db import get_engine, normalize_url
from schemas.models import (
    PENDING,
    POLL_FETCHED,
    POLL_NOT_MODIFIED,
    POLL_PARSED,
    POLL_QUEUED,
    Article,
    Failure,
    Feed,
    Poll,
)
from schemas.pipeline import ARTICLE_STAGES, DONE
from schemas.settings import Settings

#: Feeds listed as in trouble, worst first.
TROUBLE_LIMIT = 10


def ping_database(settings: Settings) -> None:
    """Raise unless the database answers a trivial query."""
    with get_engine(normalize_url(settings.database_url)).connect() as connection:
        connection.execute(text("SELECT 1"))


def article_counts(session: Session) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for stage, status, count in session.execute(
        select(Article.stage, Article.status, func.count()).group_by(Article.stage, Article.status)
    ):
        counts.setdefault(stage, {})[status] = count
    return counts


def feed_health(session: Session) -> dict[str, int]:
    """Feeds by health: ok, failing (active with errors in a row), paused, retired."""
    failing = Feed.consecutive_errors > 0
    counts = {"ok": 0, "failing": 0, "paused": 0, "retired": 0}
    for status, is_failing, count in session.execute(
        select(Feed.status, failing, func.count()).group_by(Feed.status, failing)
    ):
        key = ("failing" if is_failing else "ok") if status == "active" else status
        counts[key] = counts.get(key, 0) + count
    return counts


def open_failures_by_stage(session: Session) -> dict[str, int]:
    return dict(
        session.execute(
            select(Failure.stage, func.count()).where(Failure.requeued_at.is_(None)).group_by(Failure.stage)
        ).all()
    )


def duplicates_by_reason(session: Session) -> dict[str, int]:
    return dict(
        session.execute(
            select(Article.duplicate_reason, func.count())
            .where(Article.duplicate_of.is_not(None))
            .group_by(Article.duplicate_reason)
        ).all()
    )


def last_hour(session: Session, now: datetime) -> dict[str, Any]:
    """Throughput and errors of the last hour: polls finished, articles stored and finished, failures."""
    since = now - timedelta(hours=1)
    polls = dict(
        session.execute(
            select(Poll.status, func.count()).where(Poll.finished_at >= since).group_by(Poll.status)
        ).all()
    )
    return {
        "polls": polls,
        "articles_new": session.scalar(select(func.count()).select_from(Article).where(Article.created_at >= since)),
        "articles_done": session.scalar(
            select(func.count()).select_from(Article).where(Article.stage == DONE, Article.updated_at >= since)
        ),
        "failures": dict(
            session.execute(
                select(Failure.stage, func.count()).where(Failure.last_seen >= since).group_by(Failure.stage)
            ).all()
        ),
    }


def feeds_in_trouble(session: Session, limit: int = TROUBLE_LIMIT) -> list[dict[str, Any]]:
    """Active feeds whose last polls failed, most errors in a row first, with their last success."""
    last_success = (
        select(func.max(Poll.finished_at))
        .where(Poll.feed_id == Feed.id, Poll.status.in_([POLL_PARSED, POLL_NOT_MODIFIED]))
        .scalar_subquery()
    )
    rows = session.execute(
        select(Feed.id, Feed.url, Feed.consecutive_errors, Feed.last_error, Feed.last_status_code,
               Feed.next_poll_at, last_success.label("last_success"))
        .where(Feed.status == "active", Feed.consecutive_errors > 0)
        .order_by(Feed.consecutive_errors.desc(), Feed.id)
        .limit(limit)
    ).all()
    return [
        {"id": r.id, "url": r.url, "consecutive_errors": r.consecutive_errors, "last_error": r.last_error,
         "last_status_code": r.last_status_code, "last_success": r.last_success, "next_poll_at": r.next_poll_at}
        for r in rows
    ]


def oldest_stuck(session: Session, now: datetime) -> dict[str, Any] | None:
    """The unfinished item waiting longest: an article pending in a stage, or a poll not yet fetched or parsed."""
    article = session.execute(
        select(Article.id, Article.stage, Article.updated_at)
        .where(Article.status == PENDING, Article.stage.in_(ARTICLE_STAGES))
        .order_by(Article.updated_at, Article.id)
        .limit(1)
    ).first()
    since = func.coalesce(Poll.started_at, Poll.requested_at)
    poll = session.execute(
        select(Poll.id, Poll.status, since.label("since"))
        .where(Poll.status.in_([POLL_QUEUED, POLL_FETCHED]))
        .order_by(since, Poll.id)
        .limit(1)
    ).first()
    candidates = []
    if article is not None:
        candidates.append({"kind": "article", "id": article.id, "stage": article.stage, "since": article.updated_at})
    if poll is not None:
        stage = "fetch" if poll.status == POLL_QUEUED else "parse"
        candidates.append({"kind": "poll", "id": poll.id, "stage": stage, "since": poll.since})
    if not candidates:
        return None
    oldest = min(candidates, key=lambda item: item["since"])
    return {**oldest, "age_seconds": round((now - oldest["since"]).total_seconds(), 1)}

"""What the pipeline is doing right now, from the broker and the database: ``feedmill status``,
``feedmill healthcheck`` and the gauges of ``/metrics`` (workers/metrics.py) all read it here.

Queue depth is the broker's own message count per stage queue: on Redis the
length of the queue's list plus its priority lists (kombu names them
``<queue>\\x06\\x16<priority>``), on the embedded broker the message files of
that queue. URLs are shown with their passwords hidden, and so are error texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from kombu import Connection
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from schemas.db import get_engine, normalize_url, redact_url, session_scope
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
    utcnow,
)
from schemas.pipeline import ARTICLE_STAGES, DONE, QUEUES
from schemas.settings import Settings
from workers.celery_app import celery_config

#: Feeds listed as in trouble, worst first.
TROUBLE_LIMIT = 10
#: Seconds to wait for workers to answer a ping, and for the broker or database to answer.
REPLY_TIMEOUT = 1.0
CONNECT_TIMEOUT = 3


def broker_connection(settings: Settings) -> Connection:
    config = celery_config(settings)
    return Connection(
        config["broker_url"], transport=config.get("broker_transport"),
        transport_options=config["broker_transport_options"], connect_timeout=CONNECT_TIMEOUT,
    )


def scrub(message: str, settings: Settings) -> str:
    """An error text with the database's and broker's passwords taken out, on one line."""
    for url in (settings.database_url, settings.broker_url):
        try:
            password = make_url(url).password
        except Exception:
            password = None
        if password:
            message = message.replace(str(password), "***")
    return (message.splitlines() or [""])[0]


@dataclass(frozen=True)
class Check:
    """One service's health: reachable or not, and why not."""

    name: str
    url: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "url": self.url, "error": self.error}


def check_database(settings: Settings) -> Check:
    url = redact_url(settings.database_url)
    try:
        with get_engine(normalize_url(settings.database_url)).connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        return Check("database", url, scrub(f"{type(exc).__name__}: {exc}", settings))
    return Check("database", url)


def check_broker(settings: Settings) -> Check:
    url = redact_url(settings.broker_url)
    try:
        with broker_connection(settings) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=CONNECT_TIMEOUT)
    except Exception as exc:
        return Check("broker", url, scrub(f"{type(exc).__name__}: {exc}", settings))
    return Check("broker", url)


def queue_depths(settings: Settings) -> dict[str, int]:
    """Messages waiting in each stage queue (delayed retries on Redis are not in a queue yet)."""
    with broker_connection(settings) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=CONNECT_TIMEOUT)
        channel = connection.default_channel
        if hasattr(channel, "_size"):  # kombu's virtual transports: Redis and the embedded broker
            return {queue: channel._size(queue) for queue in QUEUES}
        return {queue: channel.queue_declare(queue, passive=True).message_count for queue in QUEUES}  # RabbitMQ


def live_workers(app: Celery) -> dict[str, list[str]]:
    """Workers that answered within REPLY_TIMEOUT, with the queues each consumes."""
    replies = app.control.inspect(timeout=REPLY_TIMEOUT).active_queues() or {}
    return {name: sorted(queue["name"] for queue in queues) for name, queues in sorted(replies.items())}


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


def pipeline_status(settings: Settings, app: Celery | None = None) -> dict[str, Any]:
    """Everything ``feedmill status`` shows; workers are asked only when ``app`` is given.

    A broker that cannot be reached leaves ``queues`` (and ``workers``) None,
    with the reason in ``broker_error``; the database part is still shown.
    """
    now = utcnow()
    status: dict[str, Any] = {
        "time": now,
        "database": redact_url(settings.database_url),
        "broker": redact_url(settings.broker_url),
        "broker_error": None,
        "queues": None,
        "workers": None,
    }
    try:
        status["queues"] = queue_depths(settings)
        if app is not None:
            status["workers"] = live_workers(app)
    except Exception as exc:
        status["broker_error"] = scrub(f"{type(exc).__name__}: {exc}", settings)
    with session_scope(settings) as session:
        status.update(
            articles=article_counts(session),
            failures_open=open_failures_by_stage(session),
            last_hour=last_hour(session, now),
            feeds=feed_health(session),
            feeds_in_trouble=feeds_in_trouble(session),
            oldest_stuck=oldest_stuck(session, now),
            stuck_after=settings.stuck_after,
        )
    return status

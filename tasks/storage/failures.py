"""Dead letters: the ``failures`` table, one row per failed article or per task message that failed
for good; listing them and taking them back for ``feedmill requeue failed``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, func, or_, select, true, update
from sqlalchemy.orm import Session

from schemas.db import session_scope
from schemas.models import FAILED, PENDING, Article, Failure, Poll, utcnow
from schemas.pipeline import stage_of_task
from schemas.settings import Settings

log = logging.getLogger(__name__)

TEXT_LIMIT = 2000
TRACEBACK_LIMIT = 20000


def record_failure(
    session: Session,
    task: str,
    subject: str,
    error: str,
    *,
    traceback: str | None = None,
    article_ids: Sequence[int] | None = None,
    poll_id: int | None = None,
    feed_id: int | None = None,
    delivery_id: int | None = None,
    attempts: int = 1,
) -> Failure:
    """Add a dead letter, or bump the open one for the same stage and subject by ``attempts``."""
    stage = stage_of_task(task)
    now = utcnow()
    failure = session.scalar(
        select(Failure).where(Failure.stage == stage, Failure.subject == subject, Failure.requeued_at.is_(None))
    )
    if failure is None:
        failure = Failure(
            task=task, stage=stage, subject=subject, attempts=0, first_seen=now,
            article_ids=list(article_ids) if article_ids is not None else None, poll_id=poll_id, feed_id=feed_id,
            delivery_id=delivery_id,
        )
        session.add(failure)
    failure.attempts += attempts
    failure.last_seen = now
    failure.error = error[:TEXT_LIMIT]
    failure.traceback = traceback[-TRACEBACK_LIMIT:] if traceback else None
    return failure


def record_task_failure(
    settings: Settings, task: str, args: Sequence[Any], exc: BaseException, traceback: str | None,
    attempts: int = 1,
) -> None:
    """Record a task message that failed for good (after ``attempts`` tries); its arguments say what to re-queue."""
    try:
        subject, fields = _subject(task, args)
    except (TypeError, ValueError):  # a malformed message: keep it as it came
        subject, fields = f"{task} {list(args)!r}", {}
    error = f"{type(exc).__name__}: {exc}"
    try:
        with session_scope(settings) as session:
            record_failure(
                session, task, subject[:TEXT_LIMIT], error, traceback=traceback, attempts=attempts, **fields
            )
    except Exception:  # the database itself may be what failed; the log keeps the record then
        log.exception("could not record the failure of %s (%s): %s", task, subject, error)


def _subject(task: str, args: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """What a message is about, and the ids to re-queue it by."""
    message = args[0] if args else None
    if isinstance(message, dict) and "article_ids" in message:
        ids = [int(i) for i in message["article_ids"]]
        return "articles " + ",".join(map(str, ids)), {"article_ids": ids}
    if isinstance(message, dict) and "poll_id" in message:
        poll_id = int(message["poll_id"])
        return f"poll {poll_id}", {"poll_id": poll_id}
    if isinstance(message, dict) and "subscription_id" in message:
        return f"subscription {int(message['subscription_id'])}", {}
    if isinstance(message, int):
        return f"feed {message}", {"feed_id": message}
    if message is None:
        return task, {}
    raise ValueError("unknown message shape")


@dataclass(frozen=True)
class FailureFilter:
    stage: str | None = None
    feed_id: int | None = None
    since: datetime | None = None


def open_failures(session: Session, selection: FailureFilter = FailureFilter()) -> list[Failure]:
    """Failures not yet re-queued, newest first, narrowed by stage, feed and last_seen."""
    query = select(Failure).where(Failure.requeued_at.is_(None)).order_by(Failure.last_seen.desc(), Failure.id.desc())
    if selection.stage:
        query = query.where(Failure.stage == selection.stage)
    if selection.since:
        query = query.where(Failure.last_seen >= selection.since)
    failures = list(session.scalars(query))
    if selection.feed_id is not None:
        failures = [f for f in failures if selection.feed_id in _feeds_of(session, f)]
    return failures


def _feeds_of(session: Session, failure: Failure) -> set[int]:
    if failure.feed_id is not None:
        return {failure.feed_id}
    if failure.article_ids:
        return set(session.scalars(select(Article.feed_id).where(Article.id.in_(failure.article_ids))))
    if failure.poll_id is not None:
        return set(session.scalars(select(Poll.feed_id).where(Poll.id == failure.poll_id)))
    return set()


def take_open_failures(session: Session, failure_ids: Sequence[int]) -> list[Failure]:
    """Lock these failures if still open and mark them re-queued; the caller sends them on after commit."""
    failures = session.scalars(
        select(Failure).where(Failure.id.in_(list(failure_ids)), Failure.requeued_at.is_(None)).with_for_update()
    ).all()
    now = utcnow()
    for failure in failures:
        failure.requeued_at = now
    return list(failures)


def reopen_failed_articles(session: Session, article_ids: Sequence[int], stage: str) -> None:
    """Failed articles of ``stage`` go back to pending in it."""
    session.execute(
        update(Article)
        .where(Article.id.in_(list(article_ids)), Article.stage == stage, Article.status == FAILED)
        .values(status=PENDING, error=None, updated_at=utcnow())
    )


def close_article_failures(session: Session, article_ids: Sequence[int]) -> int:
    """Mark the open failures of these articles re-queued (they were sent back some other way)."""
    return session.execute(
        update(Failure)
        .where(Failure.requeued_at.is_(None), Failure.subject.in_([f"article {i}" for i in article_ids]))
        .values(requeued_at=utcnow())
    ).rowcount


def _purgeable(everything: bool, unseen_before: datetime | None) -> ColumnElement[bool]:
    if everything:
        return true()
    resolved = Failure.requeued_at.is_not(None)
    return resolved if unseen_before is None else or_(resolved, Failure.last_seen < unseen_before)


def count_purgeable(session: Session, everything: bool = False, unseen_before: datetime | None = None) -> int:
    return session.scalar(select(func.count()).select_from(Failure).where(_purgeable(everything, unseen_before))) or 0


def purge_failures(session: Session, everything: bool = False, unseen_before: datetime | None = None) -> int:
    """Delete re-queued failures; with ``everything`` every failure, with ``unseen_before`` also
    open ones not seen since then (the periodic prune). Return how many."""
    return session.execute(delete(Failure).where(_purgeable(everything, unseen_before))).rowcount

"""Dead letters for operators: list them, and send them back to their stage.

``requeue_failures`` re-opens failed articles (status back to pending in the
stage that failed) and re-sends the message of a failed task; stages are
idempotent, so re-queuing something that meanwhile succeeded changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from schemas.db import session_scope
from schemas.models import FAILED, PENDING, Article, Failure, Poll, utcnow
from schemas.payloads import ArticleBatch, PollRef, chunked
from schemas.pipeline import ARTICLES, BY_NAME, FEED, NOTHING, POLL
from schemas.settings import Settings
from tasks.base import send


@dataclass(frozen=True)
class FailureFilter:
    stage: str | None = None
    feed_id: int | None = None
    since: datetime | None = None


def open_failures(settings: Settings, selection: FailureFilter = FailureFilter()) -> list[Failure]:
    """Failures not yet re-queued, newest first, narrowed by stage, feed and last_seen."""
    with session_scope(settings) as session:
        query = select(Failure).where(Failure.requeued_at.is_(None)).order_by(Failure.last_seen.desc(), Failure.id.desc())
        if selection.stage:
            query = query.where(Failure.stage == selection.stage)
        if selection.since:
            query = query.where(Failure.last_seen >= selection.since)
        failures = list(session.scalars(query))
        if selection.feed_id is not None:
            failures = [f for f in failures if selection.feed_id in _feeds_of(session, f)]
        return failures


def _feeds_of(session, failure: Failure) -> set[int]:
    if failure.feed_id is not None:
        return {failure.feed_id}
    if failure.article_ids:
        return set(session.scalars(select(Article.feed_id).where(Article.id.in_(failure.article_ids))))
    if failure.poll_id is not None:
        return set(session.scalars(select(Poll.feed_id).where(Poll.id == failure.poll_id)))
    return set()


def requeue_failures(settings: Settings, failure_ids: Sequence[int]) -> int:
    """Send these failures back to their stage and mark them re-queued; return how many."""
    sends: list[tuple[str, tuple[Any, ...]]] = []
    with session_scope(settings) as session:
        failures = session.scalars(
            select(Failure).where(Failure.id.in_(list(failure_ids)), Failure.requeued_at.is_(None)).with_for_update()
        ).all()
        for failure in failures:
            failure.requeued_at = utcnow()
            stage = BY_NAME.get(failure.stage)
            message = stage.message if stage is not None else None
            if failure.article_ids and message == ARTICLES:
                session.execute(
                    update(Article)
                    .where(Article.id.in_(failure.article_ids), Article.stage == failure.stage, Article.status == FAILED)
                    .values(status=PENDING, error=None, updated_at=utcnow())
                )
                for batch in chunked(failure.article_ids, settings.batch_size):
                    sends.append((failure.stage, (ArticleBatch(tuple(batch)).to_message(),)))
            elif failure.poll_id is not None and message == POLL:
                sends.append((failure.stage, (PollRef(failure.poll_id).to_message(),)))
            elif failure.feed_id is not None and message == FEED:
                sends.append((failure.stage, (failure.feed_id,)))
            elif message == NOTHING:
                sends.append((failure.stage, ()))
    # After the commit: a worker must find the articles pending when the message arrives.
    for stage_name, args in sends:
        send(stage_name, *args)
    return len(failures)


def close_article_failures(settings: Settings, article_ids: Sequence[int]) -> int:
    """Mark the open failures of these articles re-queued (they were sent back some other way)."""
    with session_scope(settings) as session:
        return session.execute(
            update(Failure)
            .where(Failure.requeued_at.is_(None), Failure.subject.in_([f"article {i}" for i in article_ids]))
            .values(requeued_at=utcnow())
        ).rowcount

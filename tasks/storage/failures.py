"""Dead letters: the ``failures`` table, one row per failed article or per task message that failed for good."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.db import session_scope
from schemas.models import Failure, utcnow
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
    if isinstance(message, int):
        return f"feed {message}", {"feed_id": message}
    if message is None:
        return task, {}
    raise ValueError("unknown message shape")

"""The SQL side of the article stages: claim a batch, apply a stage, advance it.

Every article stage (clean, dedupe, classify) runs through
``run_article_stage``. It only touches articles still waiting for that stage,
so a redelivered or repeated task changes nothing; and it returns the ids now
waiting for the next stage, including those a previous delivery advanced but
never handed on, so a crash between commit and enqueue loses no step.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.db import session_scope
from schemas.models import FAILED, OK, PENDING, STAGES, Article, Feed, utcnow
from schemas.settings import Settings

log = logging.getLogger(__name__)

#: A stage's work on one article: reads the row, writes its results onto it.
ApplyStage = Callable[[Session, Article], None]

ERROR_TEXT_LIMIT = 2000


def next_stage(stage: str) -> str:
    return STAGES[STAGES.index(stage) + 1]


def run_article_stage(
    settings: Settings, stage: str, article_ids: Sequence[int], apply: ApplyStage
) -> list[int]:
    """Apply one stage to a batch in one transaction; return ids ready for the next."""
    following = next_stage(stage)
    with session_scope(settings) as session:
        articles = session.scalars(
            select(Article)
            .where(Article.id.in_(article_ids), Article.stage == stage, Article.status == PENDING)
            .order_by(Article.id)
            .with_for_update(skip_locked=True)
        ).all()
        for article in articles:
            try:
                with session.begin_nested():
                    apply(session, article)
                    article.stage = following
                    article.status = OK if following == "done" else PENDING
                    article.error = None
                    article.updated_at = utcnow()
            except Exception as exc:  # one bad article never takes down its batch
                log.warning("%s failed for article %s: %s", stage, article.id, exc)
                session.refresh(article)
                article.status = FAILED
                article.error = _error_text(stage, exc)
                article.updated_at = utcnow()
        if following == "done":
            return []
        return list(
            session.scalars(
                select(Article.id)
                .where(
                    Article.id.in_(article_ids),
                    Article.stage == following,
                    Article.status == PENDING,
                )
                .order_by(Article.id)
            )
        )


def _error_text(stage: str, exc: BaseException) -> str:
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return f"{stage}: {detail}"[:ERROR_TEXT_LIMIT]


def chunked(ids: Sequence[int], size: int) -> list[list[int]]:
    """Split ids into batches of at most ``size`` for stage messages."""
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def finish_poll_of_feed(feed: Feed, settings: Settings, error: str | None) -> None:
    """A poll of ``feed`` ended: count errors, release the lease, schedule the next poll."""
    now = utcnow()
    if error is None:
        feed.consecutive_errors = 0
        feed.last_error = None
    else:
        feed.consecutive_errors += 1
        feed.last_error = error
    feed.lease_until = None
    feed.next_poll_at = now + timedelta(seconds=settings.poll_interval)

"""Re-running a stage on stored articles: send them back to it, then enqueue it.

Used after a model or rule change (``--stage classify``) or a change to
cleaning or deduplication. An article goes back only if it has reached the
stage (articles still before it will pass through it anyway); it then runs
that stage and every stage after it. Each stage is idempotent, so a
message still queued for the article's old stage finds nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from schemas.db import session_scope
from schemas.models import PENDING, Article, utcnow
from schemas.payloads import ArticleBatch, chunked
from schemas.pipeline import positions_from
from schemas.settings import Settings
from tasks.base import send


@dataclass(frozen=True)
class Selection:
    """Which stored articles to send back to ``stage``."""

    stage: str
    feed_id: int | None = None
    #: Only articles stored at or after this time.
    since: datetime | None = None
    #: Only these articles (``feedmill requeue article``).
    article_ids: tuple[int, ...] | None = None

    def conditions(self) -> list:
        conditions = [Article.stage.in_(positions_from(self.stage))]
        if self.article_ids is not None:
            conditions.append(Article.id.in_(self.article_ids))
        if self.feed_id is not None:
            conditions.append(Article.feed_id == self.feed_id)
        if self.since is not None:
            conditions.append(Article.created_at >= self.since)
        return conditions


def count_selected(settings: Settings, selection: Selection) -> int:
    with session_scope(settings) as session:
        return session.scalar(select(func.count()).select_from(Article).where(*selection.conditions())) or 0


def reset_to_stage(settings: Settings, selection: Selection) -> list[int]:
    """Put the selected articles back to their stage, pending; return their ids."""
    with session_scope(settings) as session:
        ids = session.scalars(
            update(Article)
            .where(*selection.conditions())
            .values(stage=selection.stage, status=PENDING, error=None, updated_at=utcnow())
            .returning(Article.id)
        ).all()
    return sorted(ids)


def enqueue_stage(settings: Settings, stage: str, article_ids: list[int]) -> int:
    """Send the articles to the stage's queue in batches; return how many batches."""
    batches = chunked(article_ids, settings.batch_size)
    for batch in batches:
        send(stage, ArticleBatch(tuple(batch)).to_message())
    return len(batches)

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
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schemas.db import session_scope
from schemas.models import FAILED, OK, PENDING, STAGES, Article, Feed, utcnow
from schemas.settings import Settings
from tasks import metrics
from tasks.failures import record_failure
from tasks.schedule import (
    MIN_ENTRIES_FOR_RATE,
    WEEK,
    FeedHints,
    HttpHints,
    PollOutcome,
    SchedulePolicy,
    decide_next_poll,
)

log = logging.getLogger(__name__)

#: A stage's work on one article: reads the row, writes its results onto it.
ApplyStage = Callable[[Session, Article], None]
#: Optional work on the whole claimed batch before ``apply`` runs on each article,
#: so a stage can read what the batch needs in a few queries instead of one per article.
PrepareBatch = Callable[[Session, Sequence[Article]], None]

ERROR_TEXT_LIMIT = 2000
#: How far back the publishing rate of a feed is measured.
RATE_WINDOW = timedelta(days=28)


def next_stage(stage: str) -> str:
    return STAGES[STAGES.index(stage) + 1]


def run_article_stage(
    settings: Settings,
    stage: str,
    article_ids: Sequence[int],
    apply: ApplyStage,
    *,
    prepare: PrepareBatch | None = None,
) -> list[int]:
    """Apply one stage to a batch in one transaction; return ids ready for the next."""
    following = next_stage(stage)
    with session_scope(settings) as session:
        articles = session.scalars(
            select(Article)
            .where(Article.id.in_(article_ids), Article.stage == stage, Article.status == PENDING)
            .order_by(Article.id)
            # NO KEY UPDATE: other transactions may still reference these rows (duplicate_of).
            .with_for_update(skip_locked=True, key_share=True)
        ).all()
        if prepare is not None and articles:
            prepare(session, articles)
        # Usually all at once; if anything failed, nothing was written and each article goes on its own.
        one_by_one = [] if _apply_all(session, articles, apply, following) else articles
        for article in one_by_one:
            try:
                with session.begin_nested():
                    apply(session, article)
                    _advance(article, following)
            except Exception as exc:  # one bad article never takes down its batch
                log.warning("%s failed for article %s: %s", stage, article.id, exc)
                session.refresh(article)
                article.status = FAILED
                article.error = _error_text(stage, exc)
                article.updated_at = utcnow()
                record_failure(
                    session, f"feedmill.{stage}", f"article {article.id}", article.error,
                    traceback="".join(traceback.format_exception(exc)), article_ids=[article.id],
                )
        metrics.count_articles(stage, total=len(articles), failed=sum(a.status == FAILED for a in articles))
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


def _apply_all(session: Session, articles: Sequence[Article], apply: ApplyStage, following: str) -> bool:
    """Apply the stage to the whole batch under one savepoint and write it in one flush.

    One savepoint and one flush per article cost more than most stages' work, so this is
    the usual path. False, with nothing written, when any article raised or the flush
    failed: the caller then gives each article a savepoint of its own.
    """
    try:
        with session.begin_nested(), session.no_autoflush:
            for article in articles:
                apply(session, article)
                _advance(article, following)
    except Exception:
        return False
    return True


def _advance(article: Article, following: str) -> None:
    article.stage = following
    article.status = OK if following == "done" else PENDING
    article.error = None
    article.updated_at = utcnow()


def _error_text(stage: str, exc: BaseException) -> str:
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return f"{stage}: {detail}"[:ERROR_TEXT_LIMIT]


def chunked(ids: Sequence[int], size: int) -> list[list[int]]:
    """Split ids into batches of at most ``size`` for stage messages."""
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


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
    decision = decide_next_poll(outcome, schedule_policy(settings), now)
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


def schedule_policy(settings: Settings) -> SchedulePolicy:
    return SchedulePolicy(
        default_interval=settings.poll_interval,
        min_interval=settings.min_interval,
        max_interval=settings.max_interval,
        error_backoff_cap=settings.error_backoff_cap,
        jitter=settings.schedule_jitter,
    )

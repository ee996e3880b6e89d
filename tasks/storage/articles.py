"""Articles in their stages: claim a batch, apply a stage's decisions, advance it.

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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Row, case, func, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from schemas.db import session_scope
from schemas.models import FAILED, OK, PENDING, Article, Feed, utcnow
from schemas.payloads import RawEntry
from schemas.pipeline import (
    ANNOUNCE_STAGE,
    DONE,
    FIRST_ARTICLE_STAGE,
    article_position_after,
    positions_from,
    stage_named,
)
from schemas.settings import Settings
from tasks import metrics
from tasks.failures import is_transient
from tasks.storage import changes
from tasks.storage.failures import record_failure

log = logging.getLogger(__name__)

#: What a stage writes onto one article, by column name; the stage bookkeeping
#: (stage, status, error, updated_at) is added by ``run_article_stage``.
Changes = dict[str, Any]
#: A stage's decision for one article, from the row its columns read; raises for a bad article.
DecideArticle = Callable[[Row[Any]], Changes]
#: Optional work on the whole locked batch before ``decide`` runs on each article,
#: so a stage can read what the batch needs in a few queries instead of one per article.
PrepareBatch = Callable[[Session, Sequence[Row[Any]]], None]

ERROR_TEXT_LIMIT = 2000


def run_article_stage(
    settings: Settings,
    stage: str,
    article_ids: Sequence[int],
    columns: Sequence[InstrumentedAttribute[Any]],
    decide: DecideArticle,
    *,
    prepare: PrepareBatch | None = None,
) -> list[int]:
    """Apply one stage to a batch in one transaction; return ids ready for the next.

    Locks the batch's articles still waiting for ``stage`` and reads only their id and
    ``columns`` (not whole rows: the raw and clean texts are most of a row's bytes); every
    decision is made in Python first and all of them go in one executemany. A stage computes
    its expensive results before this transaction, keyed by what they were computed from
    (``raw_hash``, ``updated_at``), and ``decide`` reuses them when that has not changed.
    """
    following = article_position_after(stage)
    with session_scope(settings) as session:
        rows = session.execute(
            select(Article.id, *columns)
            .where(Article.id.in_(article_ids), Article.stage == stage, Article.status == PENDING)
            .order_by(Article.id)
            # NO KEY UPDATE: other transactions may still reference these rows (duplicate_of).
            .with_for_update(skip_locked=True, key_share=True)
        ).all()
        if prepare is not None and rows:
            prepare(session, rows)
        now = utcnow()
        decided: dict[int, Changes] = {}
        failed: dict[int, Exception] = {}
        for row in rows:
            try:  # one bad article never takes down its batch
                decided[row.id] = decide(row) | _advanced(following, now)
            except Exception as exc:
                failed[row.id] = exc
        failed |= _write_changes(session, decided, stamp=not stage_named(stage).announces)
        for article_id, exc in failed.items():
            _record_failed(session, stage, article_id, exc, now)
        metrics.count_articles(stage, total=len(rows), failed=len(failed))
        if following == DONE:
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


def _advanced(following: str, now: datetime) -> Changes:
    return {"stage": following, "status": OK if following == DONE else PENDING, "error": None, "updated_at": now}


def reopened() -> dict[str, Any]:
    """Column values for a write that changes articles, some perhaps finished: a finished one goes
    back to ``ANNOUNCE_STAGE``, pending, so that its change is announced; the others keep theirs."""
    finished = Article.stage == DONE
    return {"stage": case((finished, ANNOUNCE_STAGE), else_=Article.stage),
            "status": case((finished, PENDING), else_=Article.status)}


def _write_changes(session: Session, decided: dict[int, Changes], stamp: bool = True) -> dict[int, Exception]:
    """Write every article's changes, with this transaction's change value (the rows are
    locked) unless ``stamp`` is off (an announcing stage changes nothing readers see), in one
    executemany under a savepoint. If the database refuses that, write each under a savepoint
    of its own; return those it refused."""
    if not decided:
        return {}
    if stamp:
        seq = changes.current(session)
        decided = {article_id: {**values, "change_seq": seq} for article_id, values in decided.items()}
    try:
        with session.begin_nested():
            session.execute(update(Article), [{"id": article_id, **values} for article_id, values in decided.items()])
        return {}
    except Exception as exc:
        if is_transient(exc):
            raise
    refused: dict[int, Exception] = {}
    for article_id, values in decided.items():
        try:
            with session.begin_nested():
                session.execute(update(Article), [{"id": article_id, **values}])
        except Exception as exc:
            if is_transient(exc):
                raise
            refused[article_id] = exc
    return refused


def _record_failed(session: Session, stage: str, article_id: int, exc: Exception, now: datetime) -> None:
    log.warning("%s failed for article %s: %s", stage, article_id, exc)
    error = _error_text(stage, exc)
    session.execute(update(Article).where(Article.id == article_id).values(status=FAILED, error=error, updated_at=now))
    record_failure(
        session, f"feedmill.{stage}", f"article {article_id}", error,
        traceback="".join(traceback.format_exception(exc)), article_ids=[article_id],
    )


def _error_text(stage: str, exc: BaseException) -> str:
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return f"{stage}: {detail}"[:ERROR_TEXT_LIMIT]


@dataclass(frozen=True)
class Selection:
    """Which stored articles to send back to ``stage`` (``feedmill reprocess``, ``requeue article``)."""

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


def count_selected(session: Session, selection: Selection) -> int:
    return session.scalar(select(func.count()).select_from(Article).where(*selection.conditions())) or 0


def reset_to_stage(session: Session, selection: Selection) -> list[int]:
    """Put the selected articles back to their stage, pending; return their ids."""
    ids = session.scalars(
        update(Article)
        .where(*selection.conditions())
        .values(stage=selection.stage, status=PENDING, error=None, updated_at=utcnow())
        .returning(Article.id)
    ).all()
    return sorted(ids)


def stages_of(session: Session, article_ids: Sequence[int]) -> dict[int, str]:
    """The stage each of these articles is at; ids of no article are left out."""
    return dict(session.execute(select(Article.id, Article.stage).where(Article.id.in_(article_ids))).all())


def article_rows(
    session: Session, article_ids: Sequence[int], columns: Sequence[Any], waiting_for: str | None = None
) -> list[Row[Any]]:
    """(id, *columns) of these articles; with ``waiting_for``, only those still pending in that stage.

    How a stage reads its batch before the writing transaction (and what changed since, inside it).
    """
    query = select(Article.id, *columns).where(Article.id.in_(list(article_ids)))
    if waiting_for is not None:
        query = query.where(Article.stage == waiting_for, Article.status == PENDING)
    return list(session.execute(query).all())


def article_with_feed_url(session: Session, article_id: int) -> tuple[Article, str] | None:
    row = session.execute(
        select(Article, Feed.url).join(Feed, Feed.id == Article.feed_id).where(Article.id == article_id)
    ).first()
    return (row[0], row[1]) if row is not None else None


#: The columns an entry is cleaned from, with its id and feed: what ``raw_entry`` reads.
RAW_ENTRY_COLUMNS = (
    Article.id, Article.feed_id, Article.entry_key, Article.guid, Article.link, Article.raw_title,
    Article.raw_author, Article.published_at, Article.raw_summary_html, Article.raw_content_html, Article.raw_hash,
)


class WaitingEntry(NamedTuple):
    """An article waiting for a stage, as parse stored its entry, with its feed's full-text mode."""

    id: int
    entry: RawEntry
    full_text: str | None


def raw_entry(row: Any) -> RawEntry:
    """The entry as parse stored it, from a row of ``RAW_ENTRY_COLUMNS``."""
    return RawEntry(
        entry_key=row.entry_key,
        guid=row.guid,
        link=row.link,
        title=row.raw_title,
        author=row.raw_author,
        published_at=row.published_at,
        summary_html=row.raw_summary_html,
        content_html=row.raw_content_html,
        raw_hash=row.raw_hash,
    )


def waiting_entries(settings: Settings, stage: str, article_ids: Sequence[int]) -> list[WaitingEntry]:
    """The entries of these articles still waiting for ``stage``, by id, read in a short read-only transaction."""
    with session_scope(settings, read_only=True) as session:
        rows = session.execute(
            select(*RAW_ENTRY_COLUMNS, Feed.full_text)
            .join(Feed, Feed.id == Article.feed_id)
            .where(Article.id.in_(article_ids), Article.stage == stage, Article.status == PENDING)
            .order_by(Article.id)
        ).all()
    return [WaitingEntry(row.id, raw_entry(row), row.full_text) for row in rows]


class DuePage(NamedTuple):
    """An article whose linked page is due, claimed for a while by one page task."""

    id: int
    link: str
    created_at: datetime


def due_pages(session: Session, now: datetime, limit: int) -> list[tuple[int, str]]:
    """(article id, link) of the articles whose linked page is due, the longest waiting first."""
    return [tuple(row) for row in session.execute(
        select(Article.id, Article.link).where(Article.page_due_at <= now, Article.link.is_not(None))
        .order_by(Article.page_due_at, Article.id).limit(limit)
    )]


def claim_due_pages(session: Session, article_ids: Sequence[int], now: datetime, lease: float) -> list[DuePage]:
    """Take these articles' pages that are due for ``lease`` s (another page task skips them
    meanwhile; a task that dies leaves them due again when the lease ends)."""
    rows = session.execute(
        update(Article)
        .where(Article.id.in_(list(article_ids)), Article.page_due_at <= now, Article.link.is_not(None))
        .values(page_due_at=now + timedelta(seconds=lease))
        .returning(Article.id, Article.link, Article.created_at)
        .execution_options(synchronize_session=False)
    ).all()
    return sorted(DuePage(*row) for row in rows)


def pages_due_later(session: Session, article_ids: Sequence[int], when: datetime) -> None:
    """These articles' pages could not be fetched yet (their host is busy): due again at ``when``."""
    if article_ids:
        session.execute(update(Article).where(Article.id.in_(list(article_ids)), Article.page_due_at.is_not(None))
                        .values(page_due_at=when))


def back_to_clean_with_page(session: Session, article_ids: Sequence[int]) -> list[int]:
    """These articles' pages came (or gave up): they are wanted no more, and the articles go back
    to clean, pending, to be cleaned with them. Return those still waiting for their page."""
    if not article_ids:
        return []
    return sorted(session.scalars(
        update(Article)
        .where(Article.id.in_(list(article_ids)), Article.page_due_at.is_not(None))
        .values(page_due_at=None, stage=FIRST_ARTICLE_STAGE, status=PENDING, error=None, updated_at=utcnow())
        .returning(Article.id)
        .execution_options(synchronize_session=False)
    ))


def pages_waiting(session: Session) -> int:
    """Articles that went on with their summary and still want their linked page."""
    return session.scalar(select(func.count()).select_from(Article).where(Article.page_due_at.is_not(None))) or 0


def raw_entries(session: Session, article_ids: Sequence[int]) -> dict[int, RawEntry]:
    """The entries of these articles as parse stored them, by id."""
    rows = session.execute(select(*RAW_ENTRY_COLUMNS).where(Article.id.in_(article_ids)))
    return {row.id: raw_entry(row) for row in rows}


def largest_clusters(session: Session, limit: int, min_size: int) -> list[dict[str, Any]]:
    """Clusters of at least ``min_size`` articles, largest first, each with its articles (``feedmill clusters``)."""
    size = func.count().label("size")
    top = session.execute(
        select(Article.cluster_id, size)
        .where(Article.cluster_id.is_not(None))
        .group_by(Article.cluster_id)
        .having(func.count() >= min_size)
        .order_by(size.desc(), Article.cluster_id)
        .limit(limit)
    ).all()
    members: dict[int, list[dict[str, Any]]] = {cluster_id: [] for cluster_id, _ in top}
    rows = session.execute(
        select(Article, Feed.url)
        .join(Feed, Feed.id == Article.feed_id)
        .where(Article.cluster_id.in_(list(members)))
        .order_by(Article.id)
    ).all()
    for article, feed_url in rows:
        members[article.cluster_id].append({
            "id": article.id,
            "feed_url": feed_url,
            "url": article.url or article.link,
            "title": article.title,
            "published_at": article.published_at,
            "duplicate_of": article.duplicate_of,
            "duplicate_reason": article.duplicate_reason,
        })
    clusters = []
    for cluster_id, count in top:
        articles = members[cluster_id]
        first = next((a for a in articles if a["id"] == cluster_id), articles[0])
        clusters.append({
            "cluster_id": cluster_id,
            "size": count,
            "title": first["title"],
            "feeds": sorted({a["feed_url"] for a in articles}),
            "articles": articles,
        })
    return clusters

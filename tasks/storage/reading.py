"""What leaves feedmill: the article record ``feedmill export`` writes and the read API serves,
and the queries that find articles, feeds and clusters for them.

An article is listed once every stage that changes it has run (``stage`` deliver or done: deliver
only announces it) and no drop rule matched it: the articles export writes, less those still in
the pipeline. Lists follow the change sequence
(``tasks/storage/changes.py``): a position is ``(change_seq, id)``, and a reader asks for the
changes after the last position it saw.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    column,
    func,
    literal_column,
    select,
    table,
    text,
    true,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from schemas.models import Article, Feed, Poll
from schemas.pipeline import READABLE_POSITIONS

#: A place in the change sequence: (change_seq, article id). (0, 0) is before every change.
Position = tuple[int, int]
START: Position = (0, 0)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, or None."""
    return value.isoformat().replace("+00:00", "Z") if value else None


def article_record(article: Article, feed_url: str) -> dict[str, Any]:
    """One stored article as export writes it and the API serves it."""
    return {
        "id": article.id,
        "feed_url": feed_url,
        "guid": article.guid,
        "url": article.url or article.link,
        "title": article.title,
        "author": article.author,
        "published_at": iso(article.published_at),
        "summary": article.summary,
        "text": article.text,
        "html": article.html,
        "images": article.images or [],
        "enclosures": article.enclosures or [],
        "language": article.language,
        "topics": [label for label, _score in (article.topics or [])],
        "topic_scores": {label: score for label, score in (article.topics or [])},
        # The best topic's score: how sure the classifier is of ``topics[0]`` (None: no topic).
        "topic_confidence": article.topics[0][1] if article.topics else None,
        "places": article.places or [],
        "tags": article.tags or [],
        "dropped_by": article.dropped_by,
        "duplicate_of": article.duplicate_of,
        "duplicate_reason": article.duplicate_reason,
        "cluster": article.cluster_id,  # the field the read API names (issue 20)
        "cluster_id": article.cluster_id,
        "content_hash": article.content_hash,
        "revision": article.revision,
        "stage": article.stage,
        "status": article.status,
        "error": article.error,
    }


def exported(include_dropped: bool) -> ColumnElement[bool]:
    """Export's rule: every stored article, less those a drop rule matched unless asked for."""
    return true() if include_dropped else Article.dropped_by.is_(None)


#: What the read API lists: articles past every stage that changes them (finished, or only to be
#: announced) that no drop rule matched.
LISTED = (Article.stage.in_(READABLE_POSITIONS), Article.dropped_by.is_(None))


def export_count(session: Session, include_dropped: bool) -> int:
    return session.scalar(select(func.count()).select_from(Article).where(exported(include_dropped))) or 0


def export_rows(session: Session, include_dropped: bool) -> Iterator[tuple[Article, str]]:
    """(article, feed URL) of every exported article, by id, read 500 at a time."""
    rows = session.execute(
        select(Article, Feed.url).join(Feed, Feed.id == Article.feed_id)
        .where(exported(include_dropped)).order_by(Article.id)
    ).yield_per(500)
    for article, feed_url in rows:
        yield article, feed_url


@dataclass(frozen=True)
class ArticleFilter:
    """The read API's filters; every one given must hold."""

    q: str | None = None
    topic: str | None = None
    place: str | None = None
    language: str | None = None
    #: A feed id, or its URL.
    feed: str | None = None
    cluster: int | None = None
    tag: str | None = None
    #: Only articles published at or after this time.
    since: datetime | None = None


def _json_list_has(session: Session, column_: Any, name: str, value: str, path: str | None = None) -> ColumnElement[bool]:
    """The JSON array ``column_`` holds ``value`` (its items' first element, for ``path`` '$[0]')."""
    if _is_postgresql(session):
        return type_coerce(column_, JSONB).contains([[value]] if path else [value])
    item = f"json_extract(value, '{path}')" if path else "value"
    return text(f"EXISTS (SELECT 1 FROM json_each(articles.{column_.key}) WHERE {item} = :{name})").bindparams(
        **{name: value}
    )


def _filtered(session: Session, filters: ArticleFilter, *columns: Any) -> Select[Any]:
    """The listed articles ``filters`` name (all but ``q``), as ``columns`` (default: article and feed URL)."""
    query = select(*(columns or (Article, Feed.url))).join(Feed, Feed.id == Article.feed_id).where(*LISTED)
    if filters.topic:
        query = query.where(_json_list_has(session, Article.topics, "topic", filters.topic, "$[0]"))
    if filters.place:
        query = query.where(_json_list_has(session, Article.places, "place", filters.place))
    if filters.tag:
        query = query.where(_json_list_has(session, Article.tags, "tag", filters.tag))
    if filters.language:
        query = query.where(Article.language == filters.language)
    if filters.feed:
        query = query.where(Article.feed_id == int(filters.feed) if filters.feed.isdigit() else Feed.url == filters.feed)
    if filters.cluster is not None:
        query = query.where(Article.cluster_id == filters.cluster)
    if filters.since is not None:
        query = query.where(Article.published_at >= filters.since)
    return query


#: FTS5 query syntax has operators; the API's SQLite search asks for all the words of ``q``.
_WORD = re.compile(r"\w+")


def _matching(session: Session, query: Select[Any], q: str) -> tuple[Select[Any], ColumnElement[Any]]:
    """``query`` restricted to the articles matching ``q``, and the rank to order them by
    (ascending: best first)."""
    if _is_postgresql(session):
        vector = literal_column("articles.search_vector")  # PostgreSQL only (migration 0013), no model
        # Parsed once per statement (an InitPlan): a prepared statement's generic plan would
        # otherwise parse it again for every match it ranks.
        tsquery = select(func.article_search_query(q)).scalar_subquery()
        return query.where(vector.op("@@")(tsquery)), -func.ts_rank(vector, tsquery)
    words = " ".join(f'"{word}"' for word in _WORD.findall(q)) or '""'
    fts = table("article_search", column("rowid"), column("rank"))
    found = (
        select(fts.c.rowid.label("id"), fts.c.rank.label("rank"))
        .where(text("article_search MATCH :fts_query").bindparams(fts_query=words))
        .subquery()
    )
    return query.join(found, found.c.id == Article.id), found.c.rank  # bm25: lower is better


def changes_after(session: Session, filters: ArticleFilter, after: Position, limit: int) -> list[tuple[Article, str]]:
    """The listed articles matching ``filters`` whose last change comes after ``after``, in change order."""
    query = _filtered(session, filters)
    if filters.q:
        query, _rank = _matching(session, query, filters.q)
    return list(
        session.execute(
            query.where(tuple_(Article.change_seq, Article.id) > tuple_(*after))
            .order_by(Article.change_seq, Article.id).limit(limit)
        ).tuples()
    )


def latest_position(session: Session) -> Position:
    """The position of the newest change stored: a cursor from here sees only later changes."""
    row = session.execute(
        select(Article.change_seq, Article.id).where(Article.change_seq.is_not(None))
        .order_by(Article.change_seq.desc(), Article.id.desc()).limit(1)
    ).first()
    return (row[0], row[1]) if row else START


def best_matches(session: Session, filters: ArticleFilter, upto: Position, limit: int) -> list[tuple[Article, str]]:
    """The listed articles matching ``filters`` (with ``q``) changed up to ``upto``, best ranked first."""
    assert filters.q
    query, rank = _matching(session, _filtered(session, filters, Article.id, Article.change_seq), filters.q)
    # Every match ranked by id in a materialized CTE, the bound applied outside it, then only the
    # best ``limit`` rows loaded whole (sorting whole rows of every match cost 30 times more). With
    # the bound inside, the generic plan of the prepared statement (psycopg prepares a statement
    # run five times) ANDs a bitmap of the whole change_seq index into the search's: +5 ms at 100k.
    matches = query.add_columns(rank.label("rank")).cte("matches").prefix_with("MATERIALIZED", dialect="postgresql")
    best = (
        select(matches.c.id, matches.c.rank).where(tuple_(matches.c.change_seq, matches.c.id) <= tuple_(*upto))
        .order_by(matches.c.rank, matches.c.id).limit(limit).subquery("best")
    )
    return list(session.execute(
        select(Article, Feed.url).join(best, best.c.id == Article.id).join(Feed, Feed.id == Article.feed_id)
        .order_by(best.c.rank, best.c.id)
    ).tuples())


def cluster_members(session: Session, cluster_id: int) -> list[tuple[Article, str]]:
    """The listed articles of one story cluster, by id (the cluster's own article first)."""
    return list(
        session.execute(
            select(Article, Feed.url).join(Feed, Feed.id == Article.feed_id)
            .where(Article.cluster_id == cluster_id, *LISTED).order_by(Article.id)
        ).tuples()
    )


def feed_record(feed: Feed, last_poll: Poll | None) -> dict[str, Any]:
    """One feed as ``feeds list|show --json`` print it and the API serves it."""
    return {
        "id": feed.id,
        "url": feed.url,
        "title": feed.title,
        "site_url": feed.site_url,
        "tags": feed.tags or [],
        "status": feed.status,
        "status_reason": feed.status_reason,
        "last_polled_at": iso(feed.last_polled_at),
        "last_status_code": feed.last_status_code,
        "last_result": last_poll.status if last_poll else None,
        "last_error": feed.last_error,
        "consecutive_errors": feed.consecutive_errors,
        "next_poll_at": iso(feed.next_poll_at),
        "next_poll_reason": feed.next_poll_reason,
        "interval_override": feed.interval_override,
        "full_text": feed.full_text,
        "retention": feed.retention,
        "schedule_hints": feed.schedule_hints,
        "etag": feed.etag,
        "last_modified": feed.last_modified,
        "websub": {
            "wanted": feed.websub_wanted,
            "hub": feed.websub_hub,
            "topic": feed.websub_topic,
            "state": feed.websub_state,
            "expires_at": iso(feed.websub_expires_at),
        },
    }


def latest_polls(session: Session, feed_ids: list[int]) -> dict[int, Poll]:
    """Each feed's newest poll (not WebSub push), by feed id."""
    latest = select(func.max(Poll.id)).where(Poll.feed_id.in_(feed_ids), Poll.kind == "poll").group_by(Poll.feed_id)
    return {poll.feed_id: poll for poll in session.scalars(select(Poll).where(Poll.id.in_(latest)))}


def feed_records(session: Session, feed_id: int | None = None) -> list[dict[str, Any]]:
    """Every feed (or the one with ``feed_id``) with its last poll's result, by id."""
    query = select(Feed).order_by(Feed.id)
    if feed_id is not None:
        query = query.where(Feed.id == feed_id)
    feeds = session.scalars(query).all()
    latest = latest_polls(session, [feed.id for feed in feeds])
    return [feed_record(feed, latest.get(feed.id)) for feed in feeds]


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"

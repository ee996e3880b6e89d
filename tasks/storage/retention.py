"""Retention: deleting articles with everything derived from them, tombstones, and the
housekeeping of fetch history; the SQL of ``tasks.retention`` and ``feedmill feeds remove``.

``delete_articles`` is the one way articles leave the store: band rows and signatures of the
near-duplicate index (``minhash_bands`` has no foreign key), their open dead letters, the row
itself (``paragraph_fingerprints`` and ``minhash_signatures`` go by cascade), and a cluster
whose canonical article goes keeps its survivors, named by the earliest published one.
Deletes run in batches of ``DELETE_BATCH`` articles, each its own short transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.orm import Session

from schemas.db import get_engine, insert_for, session_scope
from schemas.models import PENDING, POLL_FINISHED, Article, ArticleTombstone, Failure, Feed, Poll
from schemas.settings import Settings
from tasks.storage import changes
from tasks.storage.articles import reopened
from tasks.storage.clusters import delete_index_rows, lock_decisions, repoint_cluster

#: Articles deleted per transaction: short enough never to hold the write lock for long.
DELETE_BATCH = 500
#: Polls deleted per transaction.
POLL_BATCH = 5000


def item_fingerprint(link: str | None, title: str | None) -> str | None:
    """An item's identity beside its ``entry_key``: its link and title, which a feed keeps when it
    gives the item a new GUID on every fetch. None without a link (title alone is too common)."""
    if not link:
        return None
    return hashlib.sha256(f"{link}\n{title or ''}".encode()).hexdigest()


# --- reads ------------------------------------------------------------------------


def feeds_with_retention(session: Session, feed_ids: Sequence[int] | None = None) -> list[Row]:
    """(id, url, retention) of these feeds (all without ``feed_ids``), in id order."""
    query = select(Feed.id, Feed.url, Feed.retention).order_by(Feed.id)
    if feed_ids is not None:
        query = query.where(Feed.id.in_(list(feed_ids)))
    return list(session.execute(query))


def article_counts(session: Session, feed_ids: Sequence[int] | None = None) -> dict[int, int]:
    """Feed id -> how many articles it has stored (every feed's without ``feed_ids``)."""
    query = select(Article.feed_id, func.count()).group_by(Article.feed_id)
    if feed_ids is not None:
        query = query.where(Article.feed_id.in_(list(feed_ids)))
    return {feed_id: count for feed_id, count in session.execute(query)}


def aging_articles(session: Session, feed_id: int, cutoff: datetime) -> list[Row]:
    """(id, published_at, created_at) of the feed's articles published or first seen before
    ``cutoff``: every one whose age may pass it, and a few more (``tasks.retention`` decides).
    Articles still pending in a stage are left until it has finished with them."""
    return list(session.execute(
        select(Article.id, Article.published_at, Article.created_at).where(
            Article.feed_id == feed_id,
            (Article.published_at < cutoff) | (Article.created_at < cutoff),
            Article.status != PENDING,
        )
    ))


def feed_article_ids(session: Session, feed_ids: Sequence[int]) -> list[int]:
    return list(session.scalars(select(Article.id).where(Article.feed_id.in_(list(feed_ids))).order_by(Article.id)))


# --- deleting articles ------------------------------------------------------------


def delete_articles(
    session: Session, article_ids: Sequence[int], now: datetime, *, tombstones: bool
) -> tuple[int, list[int]]:
    """Delete these articles and their derived rows in this transaction; with ``tombstones``,
    keep each one's identity so its feed does not bring it back. Return how many were deleted,
    and the ids of the survivors their clusters' re-naming changed.

    Dedupe's decision lock is taken first, so no batch links a new copy to a cluster while its
    canonical article goes; the articles are locked (PostgreSQL) before their signatures are read.
    """
    lock_decisions(session)
    ids = list(session.scalars(
        select(Article.id).where(Article.id.in_(list(article_ids))).order_by(Article.id).with_for_update()
    ))
    if not ids:
        return 0, []
    if tombstones:
        rows = [
            {"feed_id": feed_id, "entry_key": key, "item_fingerprint": item_fingerprint(link, title),
             "pruned_at": now, "last_listed_at": now}
            for feed_id, key, link, title in session.execute(
                select(Article.feed_id, Article.entry_key, Article.link, Article.raw_title).where(Article.id.in_(ids))
            )
        ]
        insert = insert_for(session, ArticleTombstone.__table__)
        session.execute(insert.on_conflict_do_nothing(index_elements=["feed_id", "entry_key"]), rows)
    delete_index_rows(session, ids)
    session.execute(delete(Failure).where(
        Failure.requeued_at.is_(None), Failure.subject.in_([f"article {i}" for i in ids])
    ))
    # paragraph_fingerprints and minhash_signatures cascade; a survivor's duplicate_of is set NULL.
    session.execute(delete(Article).where(Article.id.in_(ids)))
    return len(ids), _repoint_orphaned_clusters(session, ids, now)


def _repoint_orphaned_clusters(session: Session, gone: Sequence[int], now: datetime) -> list[int]:
    """Clusters named by a deleted article are named by their earliest published survivor
    (ties: the lowest id), which all the others point at; finished ones go back to the
    announcing stage (``articles.reopened``). Return the ids of the articles changed."""
    published = func.coalesce(Article.published_at, Article.created_at)
    first: dict[int, tuple[datetime, int]] = {}
    for article_id, cluster_id, when in session.execute(
        select(Article.id, Article.cluster_id, published).where(Article.cluster_id.in_(list(gone)))
    ):
        first[cluster_id] = min(first.get(cluster_id, (when, article_id)), (when, article_id))
    changed: list[int] = []
    for cluster_id, (_, canonical) in sorted(first.items()):
        changed += repoint_cluster(session, cluster_id, canonical, None, now)
        session.execute(
            update(Article).where(Article.id == canonical)
            .values(cluster_id=canonical, duplicate_of=None, duplicate_reason=None, updated_at=now, **reopened())
        )
        changes.note(session, [canonical])
        changed.append(canonical)
    return changed


def delete_in_batches(
    settings: Settings, article_ids: Sequence[int], now: datetime, *, tombstones: bool
) -> tuple[int, list[int]]:
    """``delete_articles`` in transactions of ``DELETE_BATCH`` articles; (deleted, survivors changed) in all."""
    deleted, changed = 0, []
    ordered = sorted(article_ids)
    for start in range(0, len(ordered), DELETE_BATCH):
        with session_scope(settings) as session:
            gone, moved = delete_articles(session, ordered[start:start + DELETE_BATCH], now, tombstones=tombstones)
        deleted, changed = deleted + gone, changed + moved
    return deleted, changed


# --- tombstones and history -------------------------------------------------------


def expire_tombstones(session: Session, listed_before: datetime) -> int:
    """Delete tombstones of items no document has listed since ``listed_before``."""
    return session.execute(delete(ArticleTombstone).where(ArticleTombstone.last_listed_at < listed_before)).rowcount


def purge_poll_history(settings: Settings, before: datetime) -> int:
    """Delete finished polls requested before ``before``, except each feed's latest poll (its
    last result, shown by ``feeds list``), in transactions of ``POLL_BATCH``; return how many."""
    latest = select(func.max(Poll.id)).group_by(Poll.feed_id)
    deleted = 0
    while True:
        with session_scope(settings) as session:
            ids = list(session.scalars(
                select(Poll.id).where(
                    Poll.requested_at < before, Poll.status.in_(POLL_FINISHED), Poll.id.not_in(latest)
                ).order_by(Poll.id).limit(POLL_BATCH)
            ))
            if ids:
                deleted += session.execute(delete(Poll).where(Poll.id.in_(ids))).rowcount
        if len(ids) < POLL_BATCH:
            return deleted


def reclaim_space(settings: Settings) -> None:
    """SQLite: give the pages a prune freed back to the file system (the embedded database is
    created with ``auto_vacuum=INCREMENTAL``, ``schemas/db.py``); PostgreSQL's autovacuum does
    this by itself. ``executescript`` runs the pragma to its end: one ``execute`` frees one page."""
    engine = get_engine(settings.database_url)
    if engine.dialect.name != "sqlite":
        return
    connection = engine.raw_connection()
    try:
        connection.driver_connection.executescript("PRAGMA incremental_vacuum")
    finally:
        connection.close()

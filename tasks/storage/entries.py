"""Entries: the parse stage's reads and writes (a fetched document, articles inserted or revised
idempotently, the poll's and feed's outcome)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, defer

from schemas.db import insert_for
from schemas.models import PENDING, POLL_ERROR, POLL_FETCHED, POLL_PARSED, Article, ArticleTombstone, Feed, Poll, utcnow
from schemas.payloads import ParsedFeed, RawEntry
from schemas.pipeline import FIRST_ARTICLE_STAGE
from schemas.settings import Settings
from tasks.schedule import http_hints
from tasks.storage import changes
from tasks.storage.feeds import finish_poll_of_feed
from tasks.storage.retention import item_fingerprint

#: Stores a document's entries for a feed and poll: (new ids, changed ids).
StoreEntries = Callable[[Session, int, int, Sequence[RawEntry]], tuple[list[int], list[int]]]


@dataclass(frozen=True)
class FetchedDocument:
    body: bytes
    content_type: str | None
    url: str | None
    #: False once an earlier delivery parsed it.
    awaiting_parse: bool


def fetched_document(session: Session, poll_id: int) -> FetchedDocument | None:
    """Only what parsing needs: the body (about 130 kB a document) is read once, here."""
    row = session.execute(
        select(Poll.status, Poll.body, Poll.content_type, Poll.final_url).where(Poll.id == poll_id)
    ).first()
    if row is None:
        return None
    return FetchedDocument(row.body or b"", row.content_type, row.final_url, row.status == POLL_FETCHED)


def articles_awaiting_clean(session: Session, poll_id: int) -> list[int]:
    return list(
        session.scalars(
            select(Article.id)
            .where(Article.poll_id == poll_id, Article.stage == FIRST_ARTICLE_STAGE, Article.status == PENDING)
            .order_by(Article.id)
        )
    )


def stored_guid_entries(session: Session, feed_id: int, guid_keys: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
    """The (link, title) of the feed's stored entries with these GUID keys."""
    if not guid_keys:
        return {}
    rows = session.execute(
        select(Article.entry_key, Article.link, Article.raw_title).where(
            Article.feed_id == feed_id, Article.entry_key.in_(list(guid_keys))
        )
    )
    return {key: (link, title) for key, link, title in rows}


def without_pruned(session: Session, feed_id: int, entries: Sequence[RawEntry]) -> list[RawEntry]:
    """The entries whose item was not pruned from this feed (no tombstone by entry key, or by link
    and title for an item under a new GUID); the tombstones of the others are marked listed now,
    so they last while the feed still lists their item."""
    if not entries:
        return []
    fingerprints = {e.entry_key: item_fingerprint(e.link, e.title) for e in entries}
    wanted = [fp for fp in fingerprints.values() if fp]
    found = session.execute(
        select(ArticleTombstone.entry_key, ArticleTombstone.item_fingerprint).where(
            ArticleTombstone.feed_id == feed_id,
            or_(ArticleTombstone.entry_key.in_(list(fingerprints)), ArticleTombstone.item_fingerprint.in_(wanted)),
        )
    ).all()
    if not found:
        return list(entries)
    keys = {key for key, _ in found}
    pruned = {fp for _, fp in found if fp}
    session.execute(
        update(ArticleTombstone)
        .where(ArticleTombstone.feed_id == feed_id,
               or_(ArticleTombstone.entry_key.in_(sorted(keys)), ArticleTombstone.item_fingerprint.in_(sorted(pruned))))
        .values(last_listed_at=utcnow())
    )
    return [e for e in entries if e.entry_key not in keys and fingerprints[e.entry_key] not in pruned]


def insert_or_update(
    session: Session, feed_id: int, poll_id: int | None, entries: Sequence[RawEntry]
) -> tuple[list[int], list[int]]:
    """Insert new entries, update changed ones (``INSERT ... ON CONFLICT`` on feed and entry
    identity); return (new ids, changed ids)."""
    if not entries:
        return [], []
    now = utcnow()
    rows = [
        {
            "feed_id": feed_id,
            "poll_id": poll_id,
            "entry_key": e.entry_key,
            "guid": e.guid,
            "link": e.link,
            "published_at": e.published_at,
            "raw_title": e.title,
            "raw_author": e.author,
            "raw_summary_html": e.summary_html,
            "raw_content_html": e.content_html,
            "raw_tags": list(e.tags),
            "enclosures": [enclosure.to_dict() for enclosure in e.enclosures] or None,
            "raw_hash": e.raw_hash,
            "revision": 1,
            "stage": FIRST_ARTICLE_STAGE,
            "status": PENDING,
            "created_at": now,
            "updated_at": now,
        }
        for e in entries
    ]
    insert = insert_for(session, Article.__table__)
    # Rows as executemany parameters, not one VALUES list: the statement compiles once per
    # process instead of once per poll, and SQLAlchemy still sends few multi-row INSERTs.
    new_ids = list(
        session.scalars(
            insert.on_conflict_do_nothing(index_elements=["feed_id", "entry_key"]).returning(Article.id),
            rows,
        )
    )
    changes.note(session, new_ids)
    if len(new_ids) == len(rows):
        return sorted(new_ids), []  # all new: nothing stored to compare with
    by_key = {e.entry_key: e for e in entries}
    existing = session.scalars(
        select(Article)
        .where(
            Article.feed_id == feed_id,
            Article.entry_key.in_(list(by_key)),
            Article.id.not_in(new_ids),
        )
        .with_for_update()
    ).all()
    changed_ids = []
    for article in existing:
        entry = by_key[article.entry_key]
        if article.raw_hash == entry.raw_hash:
            continue
        article.guid, article.link = entry.guid, entry.link
        article.published_at = entry.published_at
        article.raw_title, article.raw_author = entry.title, entry.author
        article.raw_summary_html, article.raw_content_html = entry.summary_html, entry.content_html
        article.raw_tags = list(entry.tags)
        article.enclosures = [enclosure.to_dict() for enclosure in entry.enclosures] or None
        article.raw_hash = entry.raw_hash
        article.revision += 1
        article.poll_id = poll_id
        article.stage, article.status, article.error = FIRST_ARTICLE_STAGE, PENDING, None
        article.updated_at = now
        changed_ids.append(article.id)
    changes.note(session, changed_ids)
    return sorted(new_ids), sorted(changed_ids)


def record_parse(
    session: Session,
    settings: Settings,
    poll_id: int,
    parsed: ParsedFeed | None,
    error: str | None,
    store: StoreEntries,
) -> list[int]:
    """Store a parsed document's entries with ``store`` and finish its poll (or record why it is
    not a feed); return the article ids awaiting clean. Nothing when another delivery did it."""
    # No autoflush: the poll and the feed are written in one UPDATE each, at commit, instead of
    # being flushed half-updated by the queries in between (the changed articles are flushed
    # explicitly before the publishing rate counts them).
    with session.no_autoflush:
        # The poll and its feed locked in one query, without the body read before: it is only cleared.
        locked = session.execute(
            select(Poll, Feed)
            .join(Feed, Feed.id == Poll.feed_id)
            .where(Poll.id == poll_id)
            .options(defer(Poll.body))
            .with_for_update()
        ).first()
        if locked is None or locked[0].status != POLL_FETCHED:
            return []
        poll, feed = locked
        now = utcnow()
        pushed = poll.kind == "push"  # a WebSub delivery: the feed's own poll schedule is untouched
        if parsed is None:
            poll.finished_at, poll.body = now, None
            poll.status, poll.error = POLL_ERROR, error
            if not pushed:
                finish_poll_of_feed(session, settings, feed, "error", http_hints(poll.cache_headers or {}, now), error)
            return []
        new_ids, changed_ids = store(session, feed.id, poll.id, parsed.entries)
        session.flush()  # the changed articles (their dates count in the publishing rate); nothing else is dirty yet
        poll.finished_at, poll.body = now, None
        poll.status = POLL_PARSED
        poll.new_entries, poll.updated_entries = len(new_ids), len(changed_ids)
        poll.error = f"malformed but usable: {parsed.bozo_error}"[:500] if parsed.bozo_error else None
        feed.title = parsed.title or feed.title
        feed.site_url = parsed.site_url or feed.site_url
        feed.websub_hub = parsed.hub_url or feed.websub_hub
        feed.websub_topic = parsed.self_url or feed.websub_topic
        if not pushed:
            feed.etag, feed.last_modified = poll.etag, poll.last_modified
            feed.schedule_hints = parsed.schedule_hints
            finish_poll_of_feed(session, settings, feed, "ok", http_hints(poll.cache_headers or {}, now))
        return sorted(new_ids + changed_ids)

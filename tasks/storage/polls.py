"""Polls: one row per poll of a feed or per WebSub push, with the fetched body until parse stores it;
the fetch stage's reads and writes (start a fetch, record its outcome, follow a feed that moved)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from schemas.models import POLL_ERROR, POLL_FETCHED, POLL_QUEUED, Feed, Poll, utcnow
from schemas.payloads import FetchResult
from schemas.settings import Settings
from tasks.links import BadFeedUrl, feed_url_key
from tasks.schedule import http_hints
from tasks.storage.feeds import finish_poll_of_feed
from tasks.storage.hosts import SlotClaim


def claim_due_feeds(
    session: Session,
    lease_seconds: float,
    *,
    due_only: bool = True,
    feed_ids: Sequence[int] | None = None,
    limit: int,
) -> list[int]:
    """Lease active feeds not being fetched (due ones, unless ``due_only`` is off) and add a poll
    for each; return the new poll ids. ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite's write
    lock serialises claims), so two schedulers never claim one feed."""
    now = utcnow()
    query = (
        select(Feed)
        .where(Feed.status == "active", or_(Feed.lease_until.is_(None), Feed.lease_until < now))
        .order_by(Feed.next_poll_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if due_only:
        query = query.where(Feed.next_poll_at <= now)
    if feed_ids is not None:
        query = query.where(Feed.id.in_(feed_ids))
    feeds = session.scalars(query).all()
    # A feed whose lease expired had a fetch that never finished (worker killed, message lost).
    session.execute(
        update(Poll)
        .where(Poll.feed_id.in_([feed.id for feed in feeds]), Poll.status == POLL_QUEUED)
        .values(status=POLL_ERROR, error="abandoned: its fetch did not finish before the lease expired", finished_at=now)
    )
    polls = []
    for feed in feeds:
        feed.lease_until = now + timedelta(seconds=lease_seconds)
        poll = Poll(feed_id=feed.id, requested_at=now)
        session.add(poll)
        polls.append(poll)
    session.flush()
    return [poll.id for poll in polls]


def add_pushed_poll(session: Session, feed_id: int, url: str, body: bytes, content_type: str | None) -> int:
    """A document a WebSub hub pushed, stored as a ``push`` poll ready to parse; its id."""
    now = utcnow()
    poll = Poll(
        feed_id=feed_id,
        kind="push",
        status=POLL_FETCHED,
        requested_at=now,
        started_at=now,
        status_code=200,
        final_url=url,
        body=body,
        size_bytes=len(body),
        content_type=content_type,
    )
    session.add(poll)
    session.flush()
    return poll.id


@dataclass(frozen=True)
class FetchRequest:
    """What the fetch stage sends: the feed's URL and its validators."""

    url: str
    etag: str | None
    last_modified: str | None


@dataclass(frozen=True)
class FetchStart:
    """A fetch to make now (``request`` with the host ``slot_id``), or none: then either the
    poll awaits parsing already (a redelivery) or the host asks to wait ``wait_seconds``."""

    request: FetchRequest | None = None
    slot_id: int | None = None
    awaiting_parse: bool = False
    wait_seconds: float | None = None


def start_fetch(session: Session, settings: Settings, poll_id: int, claim: Callable[[str], SlotClaim]) -> FetchStart:
    """Claim the host's slot (``claim`` with the feed URL) for a queued poll and mark its start."""
    poll, feed = poll_and_feed(session, poll_id)
    if poll is None or poll.status != POLL_QUEUED:
        # Redelivered after it was recorded: hand on to parse again only if unparsed.
        return FetchStart(awaiting_parse=poll is not None and poll.status == POLL_FETCHED)
    assert feed is not None
    slot = claim(feed.url)
    if slot.slot_id is None:
        # Waiting our turn is not a stuck fetch: keep the feed's lease alive.
        feed.lease_until = utcnow() + timedelta(seconds=settings.lease_seconds)
        return FetchStart(wait_seconds=slot.wait_seconds)
    poll.started_at = utcnow()
    return FetchStart(FetchRequest(feed.url, feed.etag, feed.last_modified), slot.slot_id)


def poll_and_feed(session: Session, poll_id: int, lock: bool = False) -> tuple[Poll | None, Feed | None]:
    """A poll and its feed in one query (a 304 is a handful of statements, so each one counts)."""
    query = select(Poll, Feed).join(Feed, Feed.id == Poll.feed_id).where(Poll.id == poll_id)
    row = session.execute(query.with_for_update() if lock else query).first()
    return (row[0], row[1]) if row is not None else (None, None)


@dataclass(frozen=True)
class FetchOutcome:
    """How a fetch ends its poll (``poll_status``) and, unless the body awaits parsing, the
    feed's poll (``feed_result``: ok, error or deferred); ``retire`` when the feed is gone (410)."""

    poll_status: str
    feed_result: str | None = None
    error: str | None = None
    retire: bool = False


@dataclass(frozen=True)
class RecordedFetch:
    #: False when another delivery had recorded this poll already.
    first_record: bool
    awaiting_parse: bool


def record_fetch(
    session: Session, settings: Settings, poll_id: int, result: FetchResult, outcome: FetchOutcome, duration_ms: int
) -> RecordedFetch:
    """Write a fetch's result and outcome to its poll and feed (ignored when another delivery did)."""
    poll, feed = poll_and_feed(session, poll_id, lock=True)
    if poll is None or poll.status != POLL_QUEUED:
        return RecordedFetch(False, poll is not None and poll.status == POLL_FETCHED)
    assert feed is not None
    now = utcnow()
    poll.status_code = result.status_code
    poll.final_url = result.final_url
    poll.duration_ms = duration_ms
    poll.cache_headers = result.cache_headers or None
    feed.last_polled_at = now
    feed.last_status_code = result.status_code
    follow_permanent_redirect(session, settings, feed, result.permanent_redirect)
    poll.status = outcome.poll_status
    if outcome.feed_result is None:  # a body for the parse stage
        poll.body = result.body
        poll.size_bytes = len(result.body or b"")
        poll.content_type = result.content_type
        poll.etag = result.etag
        poll.last_modified = result.last_modified
        return RecordedFetch(True, True)
    poll.error, poll.finished_at = outcome.error, now
    if outcome.retire:
        feed.status = "retired"
        feed.status_reason = (
            f"HTTP 410 Gone on {now:%Y-%m-%d %H:%M} UTC: the publisher removed this feed "
            "(`feedmill feeds resume URL` polls it again)"
        )
    error = outcome.error if outcome.feed_result == "error" else None
    finish_poll_of_feed(session, settings, feed, outcome.feed_result, http_hints(result.cache_headers, now), error=error)
    return RecordedFetch(True, False)


def follow_permanent_redirect(session: Session, settings: Settings, feed: Feed, target: str | None) -> None:
    """Move the feed to its new URL once enough polls in a row saw the same permanent redirect;
    a feed whose new URL is another feed's (in any spelling) is retired into that one."""
    key = _key_or_none(target)
    if target is None or key == feed.url_key or target == feed.url:
        feed.redirect_target, feed.redirect_count = None, 0
        return
    if feed.redirect_target == target:
        feed.redirect_count += 1
    else:
        feed.redirect_target, feed.redirect_count = target, 1
    if feed.redirect_count < settings.redirect_threshold:
        return
    owner = session.scalar(select(Feed.id).where(or_(Feed.url == target, Feed.url_key == key), Feed.id != feed.id))
    if owner is None:
        feed.status_reason = f"URL changed from {feed.url} after {feed.redirect_count} permanent redirects"
        feed.url, feed.url_key = target, key
    else:
        feed.status = "retired"
        feed.status_reason = f"moved permanently to {target}, which is already subscribed as feed {owner}"
    feed.redirect_target, feed.redirect_count = None, 0


def _key_or_none(url: str | None) -> str | None:
    try:
        return feed_url_key(url) if url else None
    except BadFeedUrl:
        return None

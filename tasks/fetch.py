"""Fetch stage: one conditional HTTP GET of a feed, recorded on its poll row.

``fetch_feed`` does the HTTP and returns a ``FetchResult``; it refuses
non-http(s) URLs and private addresses, follows a bounded number of
redirects itself (checking each hop), caps the body after decompression and
gives up on slow servers. ``run_fetch`` waits its turn for the host (see
``politeness``), fetches, and records the outcome: the body waits in the
poll row for the parse stage; 304, errors, 410 and Retry-After finish the
poll here and schedule the next one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import timedelta
from urllib.parse import urlsplit

from celery import shared_task
from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.db import relaxed_commit, session_scope
from schemas.models import (
    POLL_DEFERRED,
    POLL_ERROR,
    POLL_FETCHED,
    POLL_NOT_MODIFIED,
    POLL_QUEUED,
    Feed,
    Poll,
    utcnow,
)
from schemas.payloads import FetchResult, PollRef
from schemas.settings import Settings, current_settings
from tasks import metrics
from tasks.base import StageTask, hand_on
from tasks.http import safe_get
from tasks.schedule import http_hints
from tasks.storage.feeds import finish_poll_of_feed
from tasks.storage.hosts import claim_host_slot, free_host_slot

ERROR_TEXT_LIMIT = 500
CACHE_HEADERS = ("cache-control", "expires", "retry-after")


def fetch_feed(
    url: str, etag: str | None, last_modified: str | None, settings: Settings
) -> FetchResult:
    """GET ``url`` conditionally; every failure becomes a ``FetchResult`` with ``error``."""
    headers = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    answer = safe_get(url, settings, headers)
    cache_headers = {name: answer.headers[name] for name in CACHE_HEADERS if name in answer.headers}
    code = answer.status_code
    if answer.error is None and code == 304:
        return FetchResult(304, answer.url, None, None, None, None, cache_headers=cache_headers, permanent_redirect=answer.moved_to)
    if answer.error is None and code is not None and not 200 <= code < 300:
        answer = replace(answer, error=f"HTTP {code} {answer.reason}".strip())
    if answer.error is not None:
        return FetchResult(
            code, answer.url, None, None, None, None, error=answer.error[:ERROR_TEXT_LIMIT], cache_headers=cache_headers
        )
    return FetchResult(
        status_code=code,
        final_url=answer.url,
        body=answer.body,
        etag=answer.headers.get("etag"),
        last_modified=answer.headers.get("last-modified"),
        content_type=answer.headers.get("content-type"),
        cache_headers=cache_headers,
        permanent_redirect=answer.moved_to,
    )


@dataclass(frozen=True)
class FetchStep:
    """What the fetch task does next: hand the body to parse, or ask again later."""

    parse: bool = False
    wait_seconds: float | None = None


def run_fetch(settings: Settings, poll_id: int) -> FetchStep:
    """Fetch the feed of a queued poll when its host allows, and record the outcome.

    Two transactions around the request, because each costs a round trip and, on SQLite,
    the write lock: one reads the poll, claims the host's slot and marks the start; the
    other frees the slot and records the outcome.
    """
    with session_scope(settings) as session:
        relaxed_commit(session)  # lost in a database crash, the poll is claimed and fetched again
        poll, feed = poll_and_feed(session, poll_id)
        if poll is None or poll.status != POLL_QUEUED:
            # Redelivered after it was recorded: hand on to parse again only if unparsed.
            return FetchStep(parse=poll is not None and poll.status == POLL_FETCHED)
        assert feed is not None
        url, etag, last_modified = feed.url, feed.etag, feed.last_modified
        claim = claim_host_slot(session, settings, urlsplit(url).hostname or "", poll_id)
        if claim.slot_id is None:
            # Waiting our turn is not a stuck fetch: keep the feed's lease alive.
            feed.lease_until = utcnow() + timedelta(seconds=settings.lease_seconds)
            return FetchStep(wait_seconds=claim.wait_seconds)
        poll.started_at = utcnow()
    try:
        started = time.monotonic()
        result = fetch_feed(url, etag, last_modified, settings)
        duration_ms = int((time.monotonic() - started) * 1000)
        # No autoflush: the publishing-rate count would otherwise flush the feed half-updated,
        # and it would be written twice; this way the poll and the feed are one UPDATE each.
        with session_scope(settings) as session, session.no_autoflush:
            relaxed_commit(session)
            free_host_slot(session, claim.slot_id)
            return FetchStep(parse=record_fetch(session, settings, poll_id, result, duration_ms))
    except BaseException:
        # Nothing recorded: free the slot now rather than when its lease ends.
        with session_scope(settings) as session:
            free_host_slot(session, claim.slot_id)
        raise


def poll_and_feed(session: Session, poll_id: int, lock: bool = False) -> tuple[Poll | None, Feed | None]:
    """A poll and its feed in one query (a 304 is a handful of statements, so each one counts)."""
    query = select(Poll, Feed).join(Feed, Feed.id == Poll.feed_id).where(Poll.id == poll_id)
    row = session.execute(query.with_for_update() if lock else query).first()
    return (row[0], row[1]) if row is not None else (None, None)


def record_fetch(
    session: Session, settings: Settings, poll_id: int, result: FetchResult, duration_ms: int
) -> bool:
    """Write a fetch outcome to its poll and feed; True when the body awaits parsing.

    Ignored when another delivery already recorded this poll.
    """
    poll, feed = poll_and_feed(session, poll_id, lock=True)
    if poll is None or poll.status != POLL_QUEUED:
        return poll is not None and poll.status == POLL_FETCHED
    assert feed is not None
    metrics.count_fetch(result.status_code)
    now = utcnow()
    poll.status_code = result.status_code
    poll.final_url = result.final_url
    poll.duration_ms = duration_ms
    poll.cache_headers = result.cache_headers or None
    feed.last_polled_at = now
    feed.last_status_code = result.status_code
    follow_permanent_redirect(session, settings, feed, result.permanent_redirect)
    hints = http_hints(result.cache_headers, now)
    if result.status_code in (429, 503) and hints.retry_after is not None:
        poll.status, poll.error, poll.finished_at = POLL_DEFERRED, result.error, now
        finish_poll_of_feed(session, settings, feed, "deferred", hints)
        return False
    if result.status_code == 410:
        poll.status, poll.error, poll.finished_at = POLL_ERROR, result.error, now
        feed.status = "retired"
        feed.status_reason = (
            f"HTTP 410 Gone on {now:%Y-%m-%d %H:%M} UTC: the publisher removed this feed "
            "(`feedmill feeds resume URL` polls it again)"
        )
        finish_poll_of_feed(session, settings, feed, "error", hints, error=result.error)
        return False
    if result.error is not None or (result.body is None and not result.not_modified):
        poll.status, poll.error, poll.finished_at = POLL_ERROR, result.error or "empty response", now
        finish_poll_of_feed(session, settings, feed, "error", hints, error=poll.error)
        return False
    if result.not_modified:
        poll.status, poll.finished_at = POLL_NOT_MODIFIED, now
        finish_poll_of_feed(session, settings, feed, "ok", hints)
        return False
    poll.status = POLL_FETCHED
    poll.body = result.body
    poll.size_bytes = len(result.body or b"")
    poll.content_type = result.content_type
    poll.etag = result.etag
    poll.last_modified = result.last_modified
    return True


def follow_permanent_redirect(session: Session, settings: Settings, feed: Feed, target: str | None) -> None:
    """Move the feed to its new URL once enough polls in a row saw the same permanent redirect."""
    if target is None or target == feed.url:
        feed.redirect_target, feed.redirect_count = None, 0
        return
    if feed.redirect_target == target:
        feed.redirect_count += 1
    else:
        feed.redirect_target, feed.redirect_count = target, 1
    if feed.redirect_count < settings.redirect_threshold:
        return
    owner = session.scalar(select(Feed.id).where(Feed.url == target))
    if owner is None:
        feed.status_reason = f"URL changed from {feed.url} after {feed.redirect_count} permanent redirects"
        feed.url = target
    else:
        feed.status = "retired"
        feed.status_reason = f"moved permanently to {target}, which is already subscribed as feed {owner}"
    feed.redirect_target, feed.redirect_count = None, 0


@shared_task(base=StageTask, name="feedmill.fetch")
def fetch_task(message: dict) -> None:
    step = run_fetch(current_settings(), PollRef.from_message(message).poll_id)
    if step.wait_seconds is not None:
        fetch_task.apply_async((message,), countdown=step.wait_seconds)
    elif step.parse:
        hand_on("fetch", message)

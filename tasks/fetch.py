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
from datetime import datetime
from urllib.parse import urlsplit

from celery import shared_task

from schemas.db import relaxed_commit, session_scope
from schemas.models import POLL_DEFERRED, POLL_ERROR, POLL_FETCHED, POLL_NOT_MODIFIED, utcnow
from schemas.payloads import FetchResult, PollRef
from schemas.settings import Settings, current_settings
from tasks import metrics
from tasks.base import StageTask, hand_on
from tasks.http import safe_get
from tasks.schedule import http_hints
from tasks.storage import polls
from tasks.storage.hosts import claim_host_slot, free_host_slot
from tasks.storage.polls import FetchOutcome

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


def fetch_outcome(result: FetchResult, now: datetime) -> FetchOutcome:
    """What a fetch result means for its poll and feed: a body to parse, a 304, a request
    to come back later (429/503 with a Retry-After we can read), the feed gone (410), or an error."""
    if result.status_code in (429, 503) and http_hints(result.cache_headers, now).retry_after is not None:
        return FetchOutcome(POLL_DEFERRED, "deferred", result.error)
    if result.status_code == 410:
        return FetchOutcome(POLL_ERROR, "error", result.error, retire=True)
    if result.error is not None or (result.body is None and not result.not_modified):
        return FetchOutcome(POLL_ERROR, "error", result.error or "empty response")
    if result.not_modified:
        return FetchOutcome(POLL_NOT_MODIFIED, "ok")
    return FetchOutcome(POLL_FETCHED)


def run_fetch(settings: Settings, poll_id: int) -> FetchStep:
    """Fetch the feed of a queued poll when its host allows, and record the outcome.

    Two transactions around the request, because each costs a round trip and, on SQLite,
    the write lock: one reads the poll, claims the host's slot and marks the start; the
    other frees the slot and records the outcome.
    """
    with session_scope(settings) as session:
        relaxed_commit(session)  # lost in a database crash, the poll is claimed and fetched again
        start = polls.start_fetch(session, settings, poll_id, lambda url: claim_host_slot(
            session, settings, urlsplit(url).hostname or "", poll_id))
    if start.request is None:
        return FetchStep(parse=start.awaiting_parse, wait_seconds=start.wait_seconds)
    request, slot_id = start.request, start.slot_id
    try:
        started = time.monotonic()
        result = fetch_feed(request.url, request.etag, request.last_modified, settings)
        duration_ms = int((time.monotonic() - started) * 1000)
        # No autoflush: the publishing-rate count would otherwise flush the feed half-updated,
        # and it would be written twice; this way the poll and the feed are one UPDATE each.
        with session_scope(settings) as session, session.no_autoflush:
            relaxed_commit(session)
            free_host_slot(session, slot_id)
            recorded = polls.record_fetch(session, settings, poll_id, result, fetch_outcome(result, utcnow()), duration_ms)
        if recorded.first_record:
            metrics.count_fetch(result.status_code)
        return FetchStep(parse=recorded.awaiting_parse)
    except BaseException:
        # Nothing recorded: free the slot now rather than when its lease ends.
        with session_scope(settings) as session:
            free_host_slot(session, slot_id)
        raise


@shared_task(base=StageTask, name="feedmill.fetch")
def fetch_task(message: dict) -> None:
    step = run_fetch(current_settings(), PollRef.from_message(message).poll_id)
    if step.wait_seconds is not None:
        fetch_task.apply_async((message,), countdown=step.wait_seconds)
    elif step.parse:
        hand_on("fetch", message)

"""Fetch stage: one conditional HTTP GET of a feed, recorded on its poll row.

``fetch_feed`` does the HTTP and returns a ``FetchResult``; it refuses
non-http(s) URLs and private addresses, follows a bounded number of
redirects itself (checking each hop), caps the body after decompression and
gives up on slow servers. ``run_fetch`` records the outcome; the body waits
in the poll row for the parse stage.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from functools import cache
from urllib.parse import urljoin, urlsplit

import httpx
from celery import shared_task
from sqlalchemy.orm import Session

from schemas.db import session_scope
from schemas.models import (
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
from tasks.base import StageTask
from tasks.parse import parse_task
from tasks.store import finish_poll_of_feed

USER_AGENT = "feedmill/0.1 (feed processing service; polls politely with conditional GET)"
ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json;q=0.9, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"
)
ERROR_TEXT_LIMIT = 500


class FetchRefused(Exception):
    """The URL may not be fetched (scheme or address); not worth retrying."""


@cache
def http_client() -> httpx.Client:
    """One pooled client per process; redirects are followed by ``fetch_feed``."""
    return httpx.Client(
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT, "Accept": ACCEPT},
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
    )


def check_url_allowed(url: str, allow_private_networks: bool) -> None:
    """Raise ``FetchRefused`` unless the URL is http(s) to a public address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchRefused(f"refused: only http and https URLs are fetched, not {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise FetchRefused("refused: the URL has no host")
    if allow_private_networks:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise FetchRefused(f"cannot resolve {parts.hostname}: {exc.strerror}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise FetchRefused(
                f"refused: {parts.hostname} resolves to non-public address {address} "
                "(set FEEDMILL_ALLOW_PRIVATE_NETWORKS=1 to allow)"
            )


def fetch_feed(
    url: str, etag: str | None, last_modified: str | None, settings: Settings
) -> FetchResult:
    """GET ``url`` conditionally; every failure becomes a ``FetchResult`` with ``error``."""
    headers = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    timeout = httpx.Timeout(settings.fetch_timeout)
    deadline = time.monotonic() + settings.fetch_deadline
    current = url
    try:
        for _hop in range(settings.max_redirects + 1):
            check_url_allowed(current, settings.allow_private_networks)
            with http_client().stream("GET", current, headers=headers, timeout=timeout) as response:
                if response.is_redirect and "location" in response.headers:
                    current = urljoin(current, response.headers["location"])
                    continue
                return _read_response(response, current, settings, deadline)
        return _failed(current, f"more than {settings.max_redirects} redirects")
    except FetchRefused as exc:
        return _failed(current, str(exc))
    except httpx.TimeoutException:
        return _failed(current, f"timed out (no answer within {settings.fetch_timeout:g} s)")
    except httpx.DecodingError as exc:
        return _failed(current, f"could not decode the compressed body: {exc}")
    except httpx.HTTPError as exc:
        return _failed(current, f"connection failed: {exc or type(exc).__name__}")


def _read_response(
    response: httpx.Response, url: str, settings: Settings, deadline: float
) -> FetchResult:
    code = response.status_code
    if code == 304:
        return FetchResult(304, url, None, None, None, None)
    if code >= 400 or code < 200:
        reason = response.reason_phrase or ""
        return _failed(url, f"HTTP {code} {reason}".strip(), code)
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():  # decoded: the cap applies after decompression
        size += len(chunk)
        if size > settings.max_body_bytes:
            return _failed(url, f"body larger than {settings.max_body_bytes} bytes", code)
        if time.monotonic() > deadline:
            return _failed(url, f"fetch took longer than {settings.fetch_deadline:g} s", code)
        chunks.append(chunk)
    return FetchResult(
        status_code=code,
        final_url=url,
        body=b"".join(chunks),
        etag=response.headers.get("etag"),
        last_modified=response.headers.get("last-modified"),
        content_type=response.headers.get("content-type"),
    )


def _failed(url: str, error: str, status_code: int | None = None) -> FetchResult:
    return FetchResult(status_code, url, None, None, None, None, error=error[:ERROR_TEXT_LIMIT])


def run_fetch(settings: Settings, poll_id: int) -> bool:
    """Fetch the feed of a queued poll and record it; True when the body awaits parsing."""
    with session_scope(settings) as session:
        poll = session.get(Poll, poll_id)
        if poll is None or poll.status != POLL_QUEUED:
            # Redelivered after it was recorded: hand on to parse again only if unparsed.
            return poll is not None and poll.status == POLL_FETCHED
        feed = session.get(Feed, poll.feed_id)
        assert feed is not None
        url, etag, last_modified = feed.url, feed.etag, feed.last_modified
        poll.started_at = utcnow()
    started = time.monotonic()
    result = fetch_feed(url, etag, last_modified, settings)
    duration_ms = int((time.monotonic() - started) * 1000)
    with session_scope(settings) as session:
        return record_fetch(session, settings, poll_id, result, duration_ms)


def record_fetch(
    session: Session, settings: Settings, poll_id: int, result: FetchResult, duration_ms: int
) -> bool:
    """Write a fetch outcome to its poll and feed; ignore it if another delivery already did."""
    poll = session.get(Poll, poll_id, with_for_update=True)
    if poll is None or poll.status != POLL_QUEUED:
        return poll is not None and poll.status == POLL_FETCHED
    feed = session.get(Feed, poll.feed_id, with_for_update=True)
    assert feed is not None
    now = utcnow()
    poll.status_code = result.status_code
    poll.final_url = result.final_url
    poll.duration_ms = duration_ms
    feed.last_polled_at = now
    feed.last_status_code = result.status_code
    if result.error is not None or (result.body is None and not result.not_modified):
        poll.status = POLL_ERROR
        poll.error = result.error or "empty response"
        poll.finished_at = now
        finish_poll_of_feed(feed, settings, error=poll.error)
        return False
    if result.not_modified:
        poll.status = POLL_NOT_MODIFIED
        poll.finished_at = now
        finish_poll_of_feed(feed, settings, error=None)
        return False
    poll.status = POLL_FETCHED
    poll.body = result.body
    poll.size_bytes = len(result.body or b"")
    poll.content_type = result.content_type
    poll.etag = result.etag
    poll.last_modified = result.last_modified
    return True


@shared_task(base=StageTask, name="feedmill.fetch")
def fetch_task(message: dict) -> None:
    poll = PollRef.from_message(message)
    if run_fetch(current_settings(), poll.poll_id):
        parse_task.delay(poll.to_message())

"""The fetch stage against a real local HTTP server playing the publisher."""

from __future__ import annotations

import dataclasses
import gzip

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.engine import Engine

from schemas.db import session_scope
from schemas.models import POLL_ERROR, POLL_FETCHED, POLL_NOT_MODIFIED, Feed, Poll
from schemas.settings import Settings
from tasks.fetch import FetchStep, fetch_feed, run_fetch
from tasks.http import FetchRefused, check_url_allowed
from tests.conftest import Publisher, rss
from workers.scheduler import claim_feeds

FEED = rss([{"title": "One", "guid": "1", "link": "https://example.org/1", "description": "Hello"}])


def test_plain_get_records_validators(publisher: Publisher, sqlite_settings: Settings) -> None:
    url = publisher.add("/feed", FEED, etag='"v1"', headers={"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"})
    result = fetch_feed(url, None, None, sqlite_settings)
    assert result.error is None
    assert result.status_code == 200
    assert result.body == FEED.encode()
    assert result.etag == '"v1"'
    assert result.last_modified == "Mon, 01 Jan 2024 00:00:00 GMT"
    _, headers = publisher.requests[-1]
    assert headers["User-Agent"].startswith("feedmill/")


def test_conditional_get_gives_not_modified(publisher: Publisher, sqlite_settings: Settings) -> None:
    url = publisher.add("/feed", FEED, etag='"v1"')
    result = fetch_feed(url, '"v1"', None, sqlite_settings)
    assert result.not_modified and result.error is None and result.body is None
    _, headers = publisher.requests[-1]
    assert headers["If-None-Match"] == '"v1"'


def test_size_cap_applies_after_decompression(publisher: Publisher, sqlite_settings: Settings) -> None:
    bomb = gzip.compress(b"<rss>" + b" " * 5_000_000)
    url = publisher.add("/bomb", bomb, headers={"Content-Encoding": "gzip"})
    small_cap = dataclasses.replace(sqlite_settings, max_body_bytes=1_000_000)
    assert len(bomb) < 1_000_000
    result = fetch_feed(url, None, None, small_cap)
    assert result.body is None
    assert result.error == "body larger than 1000000 bytes"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_compressed_bodies_are_decoded(publisher: Publisher, sqlite_settings: Settings, encoding: str) -> None:
    import zlib

    import brotli

    compress = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}[encoding]
    url = publisher.add("/packed", compress(FEED.encode()), headers={"Content-Encoding": encoding})
    result = fetch_feed(url, None, None, sqlite_settings)
    assert result.error is None and result.body == FEED.encode()
    _, headers = publisher.requests[-1]
    assert {"gzip", "deflate", "br"} <= {e.strip() for e in headers["Accept-Encoding"].split(",")}


def test_slow_server_times_out(publisher: Publisher, sqlite_settings: Settings) -> None:
    url = publisher.add("/slow", FEED, delay=3.0)
    fast = dataclasses.replace(sqlite_settings, fetch_timeout=0.5)
    result = fetch_feed(url, None, None, fast)
    assert result.body is None
    assert result.error is not None and result.error.startswith("timed out")


def test_redirects_followed_and_loops_stopped(publisher: Publisher, sqlite_settings: Settings) -> None:
    target = publisher.add("/final", FEED)
    publisher.add("/moved", "", status=301, headers={"Location": "/final"})
    result = fetch_feed(publisher.url("/moved"), None, None, sqlite_settings)
    assert result.error is None and result.final_url == target
    publisher.add("/loop-a", "", status=302, headers={"Location": "/loop-b"})
    publisher.add("/loop-b", "", status=302, headers={"Location": "/loop-a"})
    looped = fetch_feed(publisher.url("/loop-a"), None, None, sqlite_settings)
    assert looped.error == f"more than {sqlite_settings.max_redirects} redirects"


def test_http_errors_are_recorded(publisher: Publisher, sqlite_settings: Settings) -> None:
    result = fetch_feed(publisher.url("/missing"), None, None, sqlite_settings)
    assert result.status_code == 404
    assert result.error == "HTTP 404 Not Found"


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://example.org/feed", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http://127.0.0.1/feed", "non-public address 127.0.0.1"),
        ("http://10.1.2.3/feed", "non-public address 10.1.2.3"),
        ("http://169.254.169.254/latest/meta-data", "non-public address 169.254.169.254"),
        ("http://[::1]/feed", "non-public address ::1"),
    ],
)
def test_refuses_private_and_non_http(url: str, message: str) -> None:
    with pytest.raises(FetchRefused, match=message):
        check_url_allowed(url, allow_private_networks=False)


def _poll_for(settings: Settings, url: str) -> int:
    with session_scope(settings) as session:
        session.add(Feed(url=url))
    (poll_id,) = claim_feeds(settings, due_only=False)
    return poll_id


def test_run_fetch_records_poll_and_is_idempotent(publisher: Publisher, sqlite_settings: Settings) -> None:
    url = publisher.add("/feed", FEED, etag='"v1"')
    poll_id = _poll_for(sqlite_settings, url)
    assert run_fetch(sqlite_settings, poll_id) == FetchStep(parse=True)
    assert run_fetch(sqlite_settings, poll_id) == FetchStep(parse=True)  # redelivered: no second request
    assert publisher.hits("/feed") == 1
    with session_scope(sqlite_settings) as session:
        poll = session.get(Poll, poll_id)
        assert poll.status == POLL_FETCHED and poll.body == FEED.encode() and poll.etag == '"v1"'
        feed = session.scalar(select(Feed))
        assert feed.last_status_code == 200
        assert feed.etag is None  # copied over only when the parse succeeds


def test_run_fetch_records_errors_on_the_feed(publisher: Publisher, sqlite_settings: Settings) -> None:
    poll_id = _poll_for(sqlite_settings, publisher.url("/gone"))
    assert run_fetch(sqlite_settings, poll_id) == FetchStep(parse=False)
    with session_scope(sqlite_settings) as session:
        poll = session.get(Poll, poll_id)
        feed = session.scalar(select(Feed))
        assert poll.status == POLL_ERROR and poll.error == "HTTP 404 Not Found"
        assert feed.consecutive_errors == 1 and feed.last_error == "HTTP 404 Not Found"
        assert feed.lease_until is None


def test_run_fetch_not_modified(publisher: Publisher, sqlite_settings: Settings) -> None:
    url = publisher.add("/feed", FEED, etag='"v1"')
    with session_scope(sqlite_settings) as session:
        session.add(Feed(url=url, etag='"v1"'))
    (poll_id,) = claim_feeds(sqlite_settings, due_only=False)
    assert run_fetch(sqlite_settings, poll_id) == FetchStep(parse=False)
    with session_scope(sqlite_settings) as session:
        assert session.get(Poll, poll_id).status == POLL_NOT_MODIFIED


def test_fetch_transactions_skip_the_wal_flush_and_only_they(publisher: Publisher, settings: Settings) -> None:
    """A 304 commits twice; on PostgreSQL neither waits for the disk, and no other transaction is relaxed."""
    url = publisher.add("/feed.xml", FEED)
    with session_scope(settings) as session:
        session.add(Feed(url=url))
    settings = dataclasses.replace(settings, allow_private_networks=True, host_min_interval=0.0)
    seen: list[str] = []

    def on_statement(conn, cursor, statement, *_):  # noqa: ANN001, ANN202
        if statement.startswith(("SELECT", "UPDATE", "DELETE", "INSERT")) and conn.dialect.name == "postgresql":
            seen.append(conn.exec_driver_sql("SHOW synchronous_commit").scalar())

    (poll_id,) = claim_feeds(settings, due_only=False)
    event.listen(Engine, "before_cursor_execute", on_statement)
    try:
        run_fetch(settings, poll_id)
    finally:
        event.remove(Engine, "before_cursor_execute", on_statement)
    with session_scope(settings) as session:
        if session.get_bind().dialect.name == "postgresql":
            assert session.execute(text("SHOW synchronous_commit")).scalar() == "on"
            assert seen and set(seen) == {"off"}
        assert session.get(Poll, poll_id).status == POLL_FETCHED

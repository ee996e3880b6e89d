"""The parse stage: feedparser output, entry identity, idempotent storage."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from schemas.db import session_scope
from schemas.models import POLL_ERROR, POLL_PARSED, Article, Feed, Poll
from schemas.settings import Settings
from tasks.parse import NotAFeed, parse_document, run_parse
from tests.conftest import EXAMPLES, rss
from workers.scheduler import claim_feeds

SEED_FEED = (EXAMPLES / "seed-news.xml").read_bytes()


def test_seed_feed_parses_into_two_entries() -> None:
    parsed = parse_document(SEED_FEED, "application/rss+xml", "https://news.example.com/rss")
    assert parsed.title == "Seed News (feedmill example)"
    assert [e.entry_key for e in parsed.entries] == ["guid:seed-news-2735281", "guid:seed-news-5160431"]
    first, second = parsed.entries
    assert first.title == "Pro-Iran Factions Keep up Escalation against Iraqi President, PM, US"
    assert first.published_at is not None and first.published_at.isoformat() == "2020-12-28T09:15:00+00:00"
    assert first.content_html is not None and "<figcaption>" in first.content_html
    assert first.summary_html == first.title  # the item's <description>
    assert second.summary_html is None  # no <description>: feedparser's copy of content dropped
    assert second.content_html is not None and second.content_html.startswith("At Least 34 People")


def test_entry_identity_falls_back_when_guids_missing_or_repeated() -> None:
    doc = rss(
        [
            {"title": "A", "guid": "same", "link": "https://e.org/a"},
            {"title": "B", "guid": "same", "link": "https://e.org/b"},
            {"title": "C", "link": "https://e.org/c"},
            {"title": "D", "pubDate": "Mon, 01 Jan 2024 00:00:00 GMT"},
            {"title": "D", "pubDate": "Mon, 01 Jan 2024 00:00:00 GMT"},
        ]
    )
    keys = [e.entry_key for e in parse_document(doc.encode(), None, None).entries]
    assert keys[:3] == ["link:https://e.org/a", "link:https://e.org/b", "link:https://e.org/c"]
    assert len(keys) == 4 and keys[3].startswith("hash:")  # the exact repeat is kept once


def test_bozo_feed_with_entries_is_processed() -> None:
    broken = b'<?xml version="1.0"?><rss version="2.0"><channel><title>T</title>' \
        b"<item><title>Kept &nbsp; anyway</title><guid>g1</guid></item></channel>"
    parsed = parse_document(broken, None, None)
    assert parsed.bozo_error
    assert [e.guid for e in parsed.entries] == ["g1"]


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"<html><body><p>Just a page</p></body></html>", "not a"),
        (b"\x00\x01\x02 garbage", "not a feed"),
        (b"", "not a"),
    ],
)
def test_document_without_entries_says_why(body: bytes, reason: str) -> None:
    with pytest.raises(NotAFeed, match=reason):
        parse_document(body, "text/html", None)


def _fetched_poll(settings: Settings, body: bytes, url: str = "https://example.org/feed") -> int:
    with session_scope(settings) as session:
        feed = session.scalar(select(Feed).where(Feed.url == url))
        if feed is None:
            session.add(Feed(url=url))
    (poll_id,) = claim_feeds(settings, due_only=False)
    with session_scope(settings) as session:
        poll = session.get(Poll, poll_id)
        poll.status, poll.body, poll.etag = "fetched", body, '"e1"'
    return poll_id


def _article_count(settings: Settings) -> int:
    with session_scope(settings) as session:
        return session.scalar(select(func.count()).select_from(Article))


def test_run_parse_stores_once_and_repeats_store_nothing(sqlite_settings: Settings) -> None:
    poll_id = _fetched_poll(sqlite_settings, SEED_FEED)
    new_ids = run_parse(sqlite_settings, poll_id)
    assert len(new_ids) == 2
    # Redelivered: hands the same waiting ids on again, stores nothing.
    assert run_parse(sqlite_settings, poll_id) == new_ids
    assert _article_count(sqlite_settings) == 2
    with session_scope(sqlite_settings) as session:
        poll = session.get(Poll, poll_id)
        assert poll.status == POLL_PARSED and poll.new_entries == 2 and poll.body is None
        assert session.scalar(select(Feed.etag)) == '"e1"'
    # The same document polled again: unchanged entries store nothing.
    again = _fetched_poll(sqlite_settings, SEED_FEED)
    assert run_parse(sqlite_settings, again) == []
    assert _article_count(sqlite_settings) == 2


def test_changed_entry_updates_the_same_row(sqlite_settings: Settings) -> None:
    first = rss([{"title": "Old title", "guid": "g1", "description": "Body one"}])
    second = rss([{"title": "New title", "guid": "g1", "description": "Body one"}])
    (article_id,) = run_parse(sqlite_settings, _fetched_poll(sqlite_settings, first.encode()))
    with session_scope(sqlite_settings) as session:
        session.get(Article, article_id).stage = "done"
    assert run_parse(sqlite_settings, _fetched_poll(sqlite_settings, second.encode())) == [article_id]
    with session_scope(sqlite_settings) as session:
        article = session.get(Article, article_id)
        assert (article.raw_title, article.revision, article.stage) == ("New title", 2, "clean")
    assert _article_count(sqlite_settings) == 1


def test_not_a_feed_is_recorded_on_poll_and_feed(sqlite_settings: Settings) -> None:
    poll_id = _fetched_poll(sqlite_settings, b"<html><body>nope</body></html>")
    assert run_parse(sqlite_settings, poll_id) == []
    with session_scope(sqlite_settings) as session:
        poll = session.get(Poll, poll_id)
        feed = session.scalar(select(Feed))
        assert poll.status == POLL_ERROR and poll.error.startswith("not a") and poll.body is None
        assert feed.consecutive_errors == 1 and feed.etag is None


def test_run_parse_reads_the_body_once_and_writes_poll_and_feed_once(settings: Settings) -> None:
    """The body is read once (not again when the poll is locked), and the poll and its feed are
    each written in one UPDATE: a first poll's parse on PostgreSQL was two reads of the 130 kB
    body and two UPDATEs of each row."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    poll_id = _fetched_poll(settings, SEED_FEED)
    statements: list[str] = []

    def on_statement(conn, cursor, statement, *_):  # noqa: ANN001, ANN202
        statements.append(" ".join(statement.split()))

    event.listen(Engine, "before_cursor_execute", on_statement)
    try:
        new_ids = run_parse(settings, poll_id)
    finally:
        event.remove(Engine, "before_cursor_execute", on_statement)
    assert len(new_ids) == 2
    body_reads = [s for s in statements if s.startswith("SELECT") and "polls.body" in s]
    assert len(body_reads) == 1, body_reads
    assert len([s for s in statements if s.startswith("UPDATE polls")]) == 1
    assert len([s for s in statements if s.startswith("UPDATE feeds")]) == 1
    with session_scope(settings) as session:
        poll = session.get(Poll, poll_id)
        feed = session.get(Feed, poll.feed_id)
        assert (poll.status, poll.new_entries, poll.body, poll.finished_at is not None) == (POLL_PARSED, 2, None, True)
        assert feed.etag == '"e1"' and feed.lease_until is None and feed.next_poll_reason
    assert run_parse(settings, poll_id) == new_ids  # redelivered: the same ids handed on, nothing stored
    assert _article_count(settings) == 2

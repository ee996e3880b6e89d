"""Published feeds of ``feedmill web``: each subscription as Atom and JSON Feed, on both backends,
over a store a real run filled; read back with feedparser and the project's JSON Feed reader."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace

import feedparser
import httpx
import pytest

from benchmarks.receiver import Receiver
from schemas.settings import Settings
from tasks.jsonfeed import read_json_feed
from tests.conftest import Publisher, feedmill, ok, rss
from tests.test_api import AUTH, TOKEN, items, page_all, web_server
from workers.web.feeds import Entry, etag, json_item, not_modified

PER_FEED = 45


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def fetch(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=AUTH | headers, timeout=30)


def test_every_subscription_is_served_as_atom_and_json_feed(
    settings: Settings, publisher: Publisher, receiver: Receiver
) -> None:
    rng = random.Random(21)
    published = [items(feed, PER_FEED, rng) for feed in range(3)]
    urls = [publisher.add(f"/pf{feed}.xml", rss(published[feed], title=f"Feed {feed}")) for feed in range(3)]
    ok(feedmill(settings, "feeds", "add", *urls))
    ok(feedmill(settings, "subscriptions", "add", "everything", "--webhook", receiver.url))
    ok(feedmill(settings, "subscriptions", "add", "harbour", "--webhook", receiver.url, "--feed", urls[1],
                "--query", "HARBOUR"))
    ok(feedmill(settings, "subscriptions", "add", "section2", "--webhook", receiver.url, "--tag", "SECTION2"))
    ok(feedmill(settings, "subscriptions", "add", "nothing", "--webhook", receiver.url, "--query", "zzzznotaword"))
    ok(feedmill(settings, "subscriptions", "pause", "section2"))  # paused: pushes wait, the feed is served
    ok(feedmill(settings, "run", "--once", "--concurrency", "2"))

    with web_server(settings) as base:
        changed, _ = page_all(base)  # the API's change order, oldest first
        assert len(changed) == 3 * PER_FEED
        by_id = {record["id"]: record for record in changed}
        newest = [record["id"] for record in reversed(changed)]

        # The token: a bearer header or ?token=, else 401; unknown names are 404.
        assert httpx.get(f"{base}/feeds/everything.atom").status_code == 401
        assert httpx.get(f"{base}/feeds/everything.json", params={"token": "wrong"}).status_code == 401
        assert httpx.get(f"{base}/feeds/everything.atom", params={"token": TOKEN}).status_code == 200
        assert fetch(f"{base}/feeds/no-such.atom").status_code == 404
        assert fetch(f"{base}/feeds/everything.rss").status_code == 404

        atom = fetch(f"{base}/feeds/everything.atom")
        assert atom.headers["content-type"] == "application/atom+xml; charset=utf-8"
        parsed = feedparser.parse(atom.content)
        assert not parsed.bozo, parsed.get("bozo_exception")
        assert parsed.version == "atom10" and parsed.feed.title == "feedmill: everything"
        assert [link.href for link in parsed.feed.links if link.rel == "self"] == [f"{base}/feeds/everything.atom"]
        assert [int(entry.id.rsplit(":", 1)[1]) for entry in parsed.entries] == newest[:100]  # last 100, newest first
        first, record = parsed.entries[0], by_id[newest[0]]
        assert (first.title, first.link) == (record["title"], record["url"])
        assert {tag.term for tag in first.tags} == {*record["topics"], *record["tags"]}
        assert first.published_parsed[:6] == datetime.fromisoformat(record["published_at"]).utctimetuple()[:6]

        feed = fetch(f"{base}/feeds/everything.json")
        assert feed.headers["content-type"] == "application/feed+json; charset=utf-8"
        document = json.loads(feed.content)
        assert document["version"] == "https://jsonfeed.org/version/1.1"
        assert document["feed_url"] == f"{base}/feeds/everything.json"
        assert [item["_feedmill"]["feed_url"] for item in document["items"]] == [by_id[i]["feed_url"] for i in newest[:100]]
        item = document["items"][0]
        assert (item["url"], item["title"], item["content_html"], item["date_published"]) == (
            record["url"], record["title"], record["html"], record["published_at"])
        read = read_json_feed(feed.content)  # the reader the parse stage uses takes it
        assert [entry["link"] for entry in read.entries] == [by_id[i]["url"] for i in newest[:100]]

        # Filters are the subscription's own: feed and query (any case), tag (any case), none matching.
        harbour = feedparser.parse(fetch(f"{base}/feeds/harbour.atom").content)
        assert sorted(int(e.id.rsplit(":", 1)[1]) for e in harbour.entries) == sorted(
            r["id"] for r in changed if r["feed_url"] == urls[1])
        section2 = json.loads(fetch(f"{base}/feeds/section2.json").content)["items"]
        assert sorted(item["_feedmill"]["feed_url"] for item in section2) == [urls[2]] * PER_FEED
        empty = feedparser.parse(fetch(f"{base}/feeds/nothing.atom").content)
        assert not empty.bozo and empty.entries == []
        assert json.loads(fetch(f"{base}/feeds/nothing.json").content)["items"] == []

        # Conditional GET: the validators of an answer give 304 until something changes.
        for path in ("everything.atom", "everything.json"):
            answer = fetch(f"{base}/feeds/{path}")
            tag, modified = answer.headers["etag"], answer.headers["last-modified"]
            assert fetch(f"{base}/feeds/{path}", **{"If-None-Match": tag}).status_code == 304
            assert fetch(f"{base}/feeds/{path}", **{"If-None-Match": f'W/{tag}, "other"'}).status_code == 304
            assert fetch(f"{base}/feeds/{path}", **{"If-Modified-Since": modified}).status_code == 304
            assert fetch(f"{base}/feeds/{path}", **{"If-None-Match": '"stale"'}).status_code == 200
            assert fetch(f"{base}/feeds/{path}", **{"If-Modified-Since": "Mon, 01 Jan 2024 00:00:00 GMT"}).status_code == 200
        old = fetch(f"{base}/feeds/everything.atom")

        publisher.add("/pf0.xml", rss(published[0] + items(0, 1, rng, start=PER_FEED), title="Feed 0"))  # one new entry
        ok(feedmill(settings, "run", "--once", "--concurrency", "2"))
        new = fetch(f"{base}/feeds/everything.atom", **{"If-None-Match": old.headers["etag"]})
        assert new.status_code == 200 and new.headers["etag"] != old.headers["etag"]
        entries = feedparser.parse(new.content).entries
        assert entries[0].link == "https://example.org/0/45" and len(entries) == 100


def test_conditional_get_and_json_items_as_pure_functions() -> None:
    modified = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
    assert not_modified({"if-none-match": '"a", W/"b"'}, '"b"', modified)
    assert not_modified({"if-none-match": "*"}, '"b"', modified)
    assert not not_modified({"if-none-match": '"a"', "if-modified-since": "Mon, 07 Dec 2026 12:00:00 GMT"}, '"b"', modified)
    assert not_modified({"if-modified-since": "Mon, 07 Dec 2026 12:00:00 GMT"}, '"b"', modified)
    assert not not_modified({"if-modified-since": "Mon, 07 Dec 2026 11:59:59 GMT"}, '"b"', modified)
    assert not not_modified({"if-modified-since": "yesterday"}, '"b"', modified)
    assert not not_modified({}, '"b"', modified)

    data = {"id": 7, "url": "https://example.org/7", "title": "T", "html": None, "text": "body", "summary": None,
            "published_at": None, "author": None, "topics": ["sport"], "tags": [], "language": "en",
            "enclosures": [{"url": "https://example.org/a.mp3", "type": None, "length": 10, "duration": None}],
            "feed_url": "https://example.org/feed", "places": [], "cluster_id": 7, "duplicate_of": None, "guid": "g"}
    item = json_item(Entry(data, 3, modified))
    assert item["id"] == "urn:feedmill:article:7" and item["content_text"] == "body" and "content_html" not in item
    assert item["attachments"] == [{"url": "https://example.org/a.mp3", "mime_type": "application/octet-stream",
                                    "size_in_bytes": 10}]
    assert item["date_modified"] == "2026-12-07T12:00:00Z" and item["tags"] == ["sport"]
    subscription = SimpleNamespace(name="s", topics=None, feed_ids=None, tags=None, query=None)
    moved = Entry(data, 4, modified)
    assert etag("atom", "u", subscription, [Entry(data, 3, modified)]) != etag("atom", "u", subscription, [moved])
    assert etag("atom", "u", subscription, [moved]) != etag("json", "u", subscription, [moved])

"""Inputs (issue 18): JSON Feed, autodiscovery, enclosures, one feed per URL, links that cannot run script."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text

from schemas.db import session_scope
from schemas.payloads import Enclosure
from schemas.settings import Settings
from tasks.discover import feed_links
from tasks.jsonfeed import read_json_feed
from tasks.links import BadFeedUrl, feed_url_key, safe_link
from tasks.parse import NotAFeed, _parse_feedparser, parse_document, play_seconds
from tests.conftest import Publisher, export, feedmill, ok
from tests.test_migrations import _alembic_config

#: A value with a scheme that runs script, in any case, after any whitespace or control characters.
SCRIPT_SCHEME = re.compile(r"^[\x00-\x20]*(javascript|vbscript|data|livescript):", re.IGNORECASE)

JSON_FEED = {
    "version": "https://jsonfeed.org/version/1.1",
    "title": "JSON Feed example",
    "home_page_url": "https://jf.example.org/",
    "feed_url": "https://jf.example.org/feed.json",
    "authors": [{"name": "Feed Author"}],
    "items": [
        {"id": "1", "url": "https://jf.example.org/1", "title": "Harbour ferry timetable changes",
         "content_html": "<p>The harbour ferry runs every twenty minutes from Monday.</p>",
         "date_published": "2026-01-02T10:00:00+01:00", "tags": ["transport"]},
        {"id": 2, "external_url": "https://elsewhere.example.org/library", "title": "Library reopens",
         "content_text": "The town library reopens after a year of repairs.\n\nOpening hours are longer.",
         "summary": "The library is back.", "date_modified": "2026-01-03T08:00:00Z",
         "authors": [{"name": "Item Author"}]},
        {"id": "3", "url": "https://jf.example.org/3", "title": "Episode three",
         "content_text": "A talk about bridges and the people who maintain them.",
         "attachments": [{"url": "https://cdn.example.org/3.mp3", "mime_type": "audio/mpeg",
                          "size_in_bytes": 1234, "duration_in_seconds": 61}],
         "image": "https://cdn.example.org/3.jpg"},
    ],
}

PODCAST = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"><channel>
<title>Pod</title><link>{base}/site/</link>
<item><title>Episode one: the river</title><guid>ep1</guid><link>{base}/site/ep1</link>
<description>&lt;p&gt;We walk the river from its source to the sea and talk to the ferry crews.&lt;/p&gt;</description>
<enclosure url="/media/ep1.mp3" type="audio/mpeg" length="1000"/><itunes:duration>1:02:03</itunes:duration></item>
<item><title>Episode two: the hills</title><guid>ep2</guid><link>{base}/site/ep2</link>
<description>&lt;p&gt;A climb in the hills with the mountain rescue team and its dogs.&lt;/p&gt;</description>
<enclosure url="{base}/media/ep2.mp3" type="audio/mpeg" length="2000"/></item>
</channel></rss>"""

HOSTILE_RSS = """<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>
<title>Hostile</title><link>javascript:alert(0)</link>
<item><title>First bad link</title><guid>h1</guid><link>javascript:alert(1)</link>
<description>&lt;p&gt;The first story with a link that runs script.&lt;/p&gt;</description></item>
<item><title>Second bad link</title><guid>h2</guid><link> JaVaScRiPt:alert(2)</link>
<description>&lt;p&gt;The second story with a link in mixed case.&lt;/p&gt;</description>
<enclosure url="javascript:alert(22)" type="audio/mpeg"/></item>
<item><title>Third bad link</title><guid>h3</guid><link>data:text/html,&lt;script&gt;alert(3)&lt;/script&gt;</link>
<description>&lt;p&gt;The third story with a data link.&lt;/p&gt;</description></item>
<item><title>Fourth bad link</title><guid>h4</guid><link>&#106;avascript:alert(4)</link>
<description>&lt;p&gt;The fourth story with an entity-encoded scheme.&lt;/p&gt;</description></item>
</channel></rss>"""

HOSTILE_ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Hostile Atom</title><id>urn:hostile</id>
<link rel="alternate" href="vbscript:msgbox(1)"/>
<entry><id>urn:a1</id><title>Author with a script home page</title><updated>2026-01-01T00:00:00Z</updated>
<link rel="alternate" href="javascript:alert(5)"/><author><name>Mallory</name><uri>javascript:alert(6)</uri></author>
<content type="html">&lt;p&gt;An Atom entry whose links all run script.&lt;/p&gt;</content></entry>
<entry xml:base="javascript:alert(7)//"><id>urn:a2</id><title>Relative link under a script base</title>
<updated>2026-01-01T00:00:00Z</updated><link rel="alternate" href="x"/>
<content type="html">&lt;p&gt;An Atom entry with an xml:base trick.&lt;/p&gt;</content></entry>
</feed>"""


def url_values(record: dict[str, Any]) -> list[str]:
    """Every URL field of an exported article."""
    return [value for value in [
        record["url"], *(e["url"] for e in record["enclosures"]), *(i["src"] for i in record["images"]),
    ] if value is not None]


def test_inputs_from_json_feeds_pages_and_hostile_feeds_end_up_safe_and_once(
    settings: Settings, publisher: Publisher
) -> None:
    base = publisher.base_url
    json_url = publisher.add("/jf/items.json", json.dumps(JSON_FEED), content_type="application/json")
    pod_url = publisher.add("/pod.xml", PODCAST.format(base=base))
    page_url = publisher.add("/site/", f'<!doctype html><html><head><title>Pod site</title>'
                             f'<link rel="stylesheet" href="/style.css">'
                             f'<link rel="alternate" type="application/rss+xml" title="Podcast" href="../pod.xml">'
                             f"</head><body><p>Listen!</p></body></html>", content_type="text/html")
    bare_url = publisher.add("/about.html", "<html><body>No feeds here</body></html>", content_type="text/html")
    rss_url = publisher.add("/hostile.xml", HOSTILE_RSS)
    atom_url = publisher.add("/hostile-atom.xml", HOSTILE_ATOM, content_type="application/atom+xml")

    added = feedmill(settings, "feeds", "add", json_url, page_url, rss_url, atom_url)
    assert "added 4 feed(s); 0 already present" in ok(added)
    assert f"{page_url}: found the feed {pod_url} (linked from the page)" in added.stderr
    bare = feedmill(settings, "feeds", "add", bare_url)
    assert bare.returncode == 1
    assert f"feedmill: error: {bare_url}: no feed found at {bare_url} (an HTML page without feed links)" in bare.stderr
    again = ok(feedmill(settings, "feeds", "add", pod_url.replace("http://", "HTTP://"), pod_url + "#latest"))
    assert "added 0 feed(s); 1 already present" in again
    listed = json.loads(ok(feedmill(settings, "feeds", "list", "--json")))
    assert sorted(f["url"] for f in listed) == sorted([json_url, pod_url, rss_url, atom_url])

    summary = json.loads(ok(feedmill(settings, "run", "--once", "--json", "--timeout", "120")))
    assert summary["feeds_polled"] == 4, summary
    articles = export(settings)
    by_feed: dict[str, list[dict[str, Any]]] = {}
    for record in articles:
        by_feed.setdefault(record["feed_url"], []).append(record)

    # Every JSON Feed item, mapped as an RSS entry would be.
    jf = {a["guid"]: a for a in by_feed[json_url]}
    assert set(jf) == {"1", "2", "3"}
    assert jf["1"]["published_at"] == "2026-01-02T09:00:00Z" and "transport" in jf["1"]["tags"]
    assert jf["2"]["url"] == "https://elsewhere.example.org/library" and jf["2"]["author"] == "Item Author"
    assert "Opening hours are longer." in jf["2"]["text"]
    assert jf["1"]["author"] == "Feed Author"
    assert jf["3"]["enclosures"] == [
        {"url": "https://cdn.example.org/3.mp3", "type": "audio/mpeg", "length": 1234, "duration": 61},
        {"url": "https://cdn.example.org/3.jpg", "type": None, "length": None, "duration": None},
    ]

    # The podcast found from its page: each episode once, with its mp3.
    episodes = sorted(by_feed[pod_url], key=lambda a: a["title"])
    assert [(a["title"][:11], a["enclosures"][0]["url"]) for a in episodes] == [
        ("Episode one", f"{base}/media/ep1.mp3"), ("Episode two", f"{base}/media/ep2.mp3")]
    assert episodes[0]["enclosures"][0] == {"url": f"{base}/media/ep1.mp3", "type": "audio/mpeg",
                                            "length": 1000, "duration": 3723}

    # Hostile links: the articles are stored, no URL field runs script.
    assert len(by_feed[rss_url]) == 4 and len(by_feed[atom_url]) == 2
    for record in articles:
        assert not any(SCRIPT_SCHEME.match(value) for value in url_values(record)), record
        assert "javascript:" not in json.dumps(record).lower(), record
    listed = json.loads(ok(feedmill(settings, "feeds", "list", "--json")))
    assert not any(f["site_url"] and SCRIPT_SCHEME.match(f["site_url"]) for f in listed)
    opml = ET.fromstring(ok(feedmill(settings, "feeds", "export")).split("\n", 1)[1])
    assert {o.get("htmlUrl") for o in opml.iter("outline")} == {None, "https://jf.example.org/", f"{base}/site/"}


@pytest.mark.parametrize("url", [
    "javascript:alert(1)", " JaVaScRiPt:alert(2)", "\x01javascript:alert(3)", "java\tscript:alert(4)",
    "java\nscript:alert(5)", "data:text/html,<script>alert(6)</script>", "vbscript:msgbox(7)",
    "DATA:text/html;base64,PHNjcmlwdD4=", "livescript:x", "mailto:a@b.org",
    "ftp://files.example.org/x", "http://",
])
def test_safe_link_keeps_no_other_scheme(url: str) -> None:
    assert safe_link(url, "https://example.org/feed") is None


def test_safe_link_resolves_against_the_base() -> None:
    assert safe_link("/a?b=1", "https://example.org/feed/") == "https://example.org/a?b=1"
    assert safe_link("  https://example.org/x\n") == "https://example.org/x"
    assert safe_link("x", "javascript:alert(1)//") is None  # an xml:base trick
    assert safe_link("x", None) is None  # relative with nothing to resolve against
    # Not decoded here (the parser decodes entities first): a relative path on the feed's own site.
    assert safe_link("jav&#x09;ascript:alert(8)", "https://example.org/f") == "https://example.org/jav&#x09;ascript:alert(8)"


def test_entity_encoded_and_hidden_schemes_in_a_feed_are_dropped_and_counted() -> None:
    parsed = parse_document(HOSTILE_RSS.encode(), "application/rss+xml", "https://hostile.example/feed")
    assert [e.link for e in parsed.entries] == [None, None, None, None]
    assert parsed.site_url is None and parsed.dropped_links == 5
    atom = parse_document(HOSTILE_ATOM.encode(), "application/atom+xml", "https://hostile.example/atom")
    # feedparser ignores a script xml:base: the relative link resolves against the document.
    assert [e.link for e in atom.entries] == [None, "https://hostile.example/x"] and atom.site_url is None


def test_feed_urls_have_one_spelling() -> None:
    same = ["HTTP://Example.ORG/feed.xml", "http://example.org:80/feed.xml", "http://example.org/feed.xml#latest"]
    assert {feed_url_key(url) for url in same} == {"http://example.org/feed.xml"}
    assert feed_url_key("https://example.org") == "https://example.org/"
    assert feed_url_key("https://bücher.example/Feed?Q=1") == "https://xn--bcher-kva.example/Feed?Q=1"
    assert feed_url_key("https://example.org:8443/f") == "https://example.org:8443/f"
    for bad in ("javascript:alert(1)", "ftp://example.org/f", "feed.xml"):
        with pytest.raises(BadFeedUrl, match="not an http"):
            feed_url_key(bad)


def test_a_page_offers_its_feed_links_absolute_and_safe() -> None:
    page = b"""<html><head><base href="/blog/">
    <link rel="alternate" type="application/rss+xml" href="rss.xml">
    <link rel="Alternate nofollow" type="application/atom+xml; charset=utf-8" href="https://other.example/atom">
    <link rel="alternate" type="application/feed+json" href="feed.json">
    <link rel="alternate" type="text/html" href="/fr/">
    <link rel="alternate" type="application/rss+xml" href="javascript:alert(1)">
    <link rel="alternate" type="application/rss+xml" href="rss.xml"></head></html>"""
    assert feed_links(page, "https://site.example/post/1") == [
        "https://site.example/blog/rss.xml", "https://other.example/atom", "https://site.example/blog/feed.json"]
    assert feed_links(b"", "https://site.example/") == []


def test_json_feed_1_0_and_errors_in_words() -> None:
    one_oh = {"version": "https://jsonfeed.org/version/1", "title": "Old", "author": {"name": "Ann"},
              "items": [{"id": 7, "url": "/p/7", "content_text": "Hello.", "date_published": "2020-05-01T12:00:00Z"}]}
    parsed = parse_document(json.dumps(one_oh).encode(), "application/feed+json", "https://old.example/feed.json")
    (entry,) = parsed.entries
    assert (entry.entry_key, entry.link, entry.author) == ("guid:7", "https://old.example/p/7", "Ann")
    assert entry.content_html == "<p>Hello.</p>" and entry.published_at is not None
    # Served as text/plain, found by its content.
    assert parse_document(json.dumps(one_oh).encode(), "text/plain", None).entries[0].guid == "7"
    with pytest.raises(NotAFeed, match=r"^not a feed: malformed JSON Feed: Expecting .* at line 1, column \d+$"):
        parse_document(b'{"version": "https://jsonfeed.org/version/1.1", "items": [}', "application/json", None)
    with pytest.raises(NotAFeed, match=r'^not a feed: JSON, but not a JSON Feed \(no "version"'):
        parse_document(b'{"name": "an API answer"}', "application/json", None)
    with pytest.raises(NotAFeed, match="^not a feed: an HTML page, not RSS, Atom or JSON Feed$"):
        parse_document(b"<!DOCTYPE html><html><body><p>hi</p></body></html>", "text/html", None)
    assert read_json_feed(json.dumps({**JSON_FEED, "hubs": [{"type": "WebSub", "url": "https://hub.example/"}]})
                          .encode()).hub_url == "https://hub.example/"


def test_media_of_every_kind_becomes_enclosures() -> None:
    document = b"""<?xml version="1.0"?><rss version="2.0" xmlns:media="http://search.yahoo.com/mrss/"
    xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"><channel><title>T</title><link>https://e.org/</link>
    <item><guid>g</guid><title>t</title><enclosure url="/a.mp3" type="audio/mpeg" length="12"/>
    <enclosure url="/a.mp3" type="audio/mpeg" length="12"/><itunes:duration>62:03</itunes:duration>
    <media:content url="https://e.org/v.mp4" type="video/mp4" duration="30" fileSize="99"/>
    <media:thumbnail url="https://e.org/t.jpg"/><itunes:image href="https://e.org/i.jpg"/></item></channel></rss>"""
    (entry,) = parse_document(document, "application/rss+xml", "https://e.org/feed").entries
    assert entry.enclosures == (
        Enclosure("https://e.org/a.mp3", "audio/mpeg", 12, 3723),
        Enclosure("https://e.org/v.mp4", "video/mp4", 99, 30),
        Enclosure("https://e.org/t.jpg"), Enclosure("https://e.org/i.jpg"),
    )
    assert [play_seconds(v) for v in ("95", "1:02:03", "05:30", "", "soon", None)] == [95, 3723, 330, None, None, None]


def test_the_fast_path_reads_enclosures_as_feedparser_does() -> None:
    document = (b'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>T</title>'
                b"<link>https://e.org/</link><item><guid>g</guid><title>t</title><link>https://e.org/1</link>"
                b'<enclosure url=" /ep.mp3 " type="audio/mpeg" length="x"/><enclosure url="javascript:x"/></item>'
                b"</channel></rss>")
    fast = parse_document(document, "application/rss+xml", "https://e.org/feed")
    assert fast == _parse_feedparser(document, "application/rss+xml", "https://e.org/feed")
    assert fast.entries[0].enclosures == (Enclosure("https://e.org/ep.mp3", "audio/mpeg"),)
    assert fast.dropped_links == 1


def test_migration_0011_retires_feeds_that_repeat_one_url(sqlite_settings: Settings) -> None:
    config = _alembic_config(sqlite_settings)
    for child in ("0012", "0013", "0011"):  # 0011's children (retention, read API), then 0011: this branch only
        command.downgrade(config, f"{child}@-1")
    with session_scope(sqlite_settings) as session:
        for url in ("http://e.org/feed.xml", "HTTP://E.ORG/feed.xml#x", "http://e.org:80/feed.xml", "https://e.org/other"):
            session.execute(text("INSERT INTO feeds (url, status, redirect_count, websub_wanted, websub_state, "
                                 "consecutive_errors, next_poll_at, created_at) VALUES (:url, 'active', 0, 0, 'none', 0, "
                                 "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"), {"url": url})
    command.upgrade(config, "heads")
    with session_scope(sqlite_settings) as session:
        rows = session.execute(text("SELECT id, url, url_key, status, status_reason FROM feeds ORDER BY id")).all()
    assert [(r.url_key, r.status) for r in rows] == [
        ("http://e.org/feed.xml", "active"), (None, "retired"), (None, "retired"), ("https://e.org/other", "active")]
    assert rows[1].status_reason.startswith(f"the same feed as feed {rows[0].id} (http://e.org/feed.xml)")
    shown = json.loads(ok(feedmill(sqlite_settings, "feeds", "show", "HTTP://E.ORG/feed.xml#x", "--json")))
    assert shown["id"] == rows[1].id  # its own spelling still names the duplicate, to remove it

"""The parse fast path (fastfeedparser) gives exactly feedparser's ``ParsedFeed``, or is not taken.

Every document here goes through ``parse_document`` and through feedparser alone, and the two
results must be equal, so switching paths never re-keys or re-revises a stored entry. The
benchmark's documents (generated text, and the BBC corpus when it is present) must also take the
fast path; the fallback tests check that each construct the fast path does not trust goes to
feedparser.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from benchmarks.corpus import build_corpus, render_rss
from tasks.parse import FastPathRefused, NotAFeed, _parse_feedparser, fast_path_channel, parse_document
from tests.conftest import EXAMPLES, rss
from tests.test_hostile_feeds import build_corpus as hostile_corpus

BBC = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbc"
RSS_TYPE = "application/rss+xml"
URL = "https://example.org/feed"
HEAD = '<?xml version="1.0" encoding="utf-8"?>'
NS = (
    'xmlns:content="http://purl.org/rss/1.0/modules/content/" xmlns:dc="http://purl.org/dc/elements/1.1/" '
    'xmlns:sy="http://purl.org/rss/1.0/modules/syndication/" xmlns:atom="http://www.w3.org/2005/Atom"'
)


def channel(items: str, extra: str = "", *, head: str = HEAD) -> bytes:
    return (
        f'{head}<rss version="2.0" {NS}><channel><title>T</title><link>https://example.org/</link>'
        f"{extra}{items}</channel></rss>"
    ).encode()


def path_taken(caplog: pytest.LogCaptureFixture, body: bytes, content_type: str | None = RSS_TYPE) -> str:
    """Which parser answered for ``body``, from ``parse_document``'s log record."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="tasks.parse"):
        try:
            parse_document(body, content_type, URL)
        except NotAFeed:
            pass
    (record,) = [r for r in caplog.records if hasattr(r, "parser")]
    return record.parser


def assert_agree(body: bytes, content_type: str | None = RSS_TYPE, url: str | None = URL) -> bool:
    """Both paths give the same value (or both find no feed); return whether the fast path was taken."""
    try:
        expected = _parse_feedparser(body, content_type, url)
    except NotAFeed as exc:
        with pytest.raises(NotAFeed, match=re.escape(str(exc))):
            parse_document(body, content_type, url)
        return False
    assert parse_document(body, content_type, url) == expected
    try:
        fast_path_channel(body, content_type)
    except FastPathRefused:
        return False
    return True


def _collect_hostile_documents() -> dict[str, bytes]:
    class Collector:
        def __init__(self) -> None:
            self.documents: dict[str, bytes] = {}

        def add(self, path: str, body: str | bytes, **_: object) -> str:
            self.documents[path] = body.encode() if isinstance(body, str) else body
            return path

    collector = Collector()
    with tempfile.TemporaryDirectory() as tmp:
        hostile_corpus(collector, Path(tmp))  # type: ignore[arg-type]
    return {path: body for path, body in collector.documents.items() if body}


FIXTURES = {
    "seed-news": (EXAMPLES / "seed-news.xml").read_bytes(),
    **{f"hostile{path}": body for path, body in _collect_hostile_documents().items()},
    "guid-fallbacks": rss([
        {"title": "A", "guid": "same", "link": "https://e.org/a"},
        {"title": "B", "guid": "same", "link": "https://e.org/b"},
        {"title": "C", "link": "https://e.org/c"},
        {"title": "D", "pubDate": "Mon, 01 Jan 2024 00:00:00 GMT"},
        {"title": "D", "pubDate": "Mon, 01 Jan 2024 00:00:00 GMT"},
    ]).encode(),
    "changed": rss([{"title": "New title", "guid": "g1", "description": "Body one"}]).encode(),
}


def test_stored_identities_and_hashes_are_those_feedparser_gave_before_the_fast_path() -> None:
    """Pinned from feedparser-only parsing (main before the fast path): switching re-keys nothing."""
    seed = parse_document(FIXTURES["seed-news"], RSS_TYPE, "https://news.example.com/rss")
    assert [(e.entry_key, e.raw_hash) for e in seed.entries] == [
        ("guid:seed-news-2735281", "66543c6c05f075bbdd7337e96f3250c053b65882c97e5ac4b99f6bedd04866e0"),
        ("guid:seed-news-5160431", "90c5a5ab6daf1ef47498aad4a33d1db24dad5b6ce3a77dbf1a6f4e4e13367a12"),
    ]
    generated = build_corpus(2, 50, None).feeds[0]
    parsed = parse_document(render_rss("Feed 0", "https://news0.example/", generated), RSS_TYPE, URL)
    hashes = "".join(e.raw_hash for e in parsed.entries).encode()
    assert hashlib.sha256(hashes).hexdigest() == "a0f155c9261d745f70cfc539adb905380445709fbaad8a31bd04da38ecb3b06c"


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_documents_agree(name: str) -> None:
    for content_type in (RSS_TYPE, None, "text/html"):
        assert_agree(FIXTURES[name], content_type)


def test_the_example_feed_takes_the_fast_path() -> None:
    """(The others have relative permalink GUIDs, which feedparser resolves: they fall back.)"""
    assert assert_agree(FIXTURES["seed-news"])


def test_generated_benchmark_documents_agree_and_take_the_fast_path() -> None:
    corpus = build_corpus(20, 50, None)
    for number, entries in enumerate(corpus.feeds):
        assert assert_agree(render_rss(f"Feed {number}", f"https://news{number}.example/", entries))


@pytest.mark.skipif(not BBC.is_dir() and not os.environ.get("CI"), reason="the BBC corpus is not on this machine")
def test_bbc_benchmark_documents_agree_and_take_the_fast_path() -> None:
    corpus = build_corpus(200, 50, BBC)  # the benchmark's default run: 10,000 entries
    for number, entries in enumerate(corpus.feeds):
        assert assert_agree(render_rss(f"Feed {number}", f"https://news{number}.example/", entries))


# ------------------------------------------------------------------ generated RSS 2.0 documents

texts = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40).map(escape),
    st.sampled_from([  # as they stand in the XML
        "", " ", "  padded  ", "A &amp; B", "&lt;b&gt;bold&lt;/b&gt; text", "<![CDATA[<p>cdata</p>]]>",
        "<![CDATA[  ]]>", "&#169; 2024", "line\none", "Caf\u00e9", "&lt;p&gt;x&lt;/p&gt;", "<![CDATA[a & b]]>",
    ]),
)
dates = st.sampled_from([
    "Mon, 01 Jan 2024 10:00:00 GMT", "  Mon, 01 Jan 2024 10:00:00 GMT  ", "Mon, 01 Jan 2024 10:00:00 +0200", "Mon, 01 Jan 2024 10:00:00",
    "2024-01-01T10:00:00Z", "2024-01-01T10:00:00", "2024-01-01", "Fri, 31 Dec 9999 23:59:59 GMT",
    "Mon, 01 Jan 0001 00:00:00 GMT", "yesterday", "", "01 Jan 2024 10:00 EST", "Mon, 1 Jan 24 10:00:00 PST",
])
links = st.sampled_from([
    "https://e.org/a", "https://e.org/b", " https://e.org/padded ", "/relative", "", "javascript:alert(1)",
    "https://e.org/a?x=1&amp;y=2", "http://e.org/\u00e9",
])
item_fields = st.fixed_dictionaries({}, optional={
    "title": texts,
    "link": links,
    "guid": st.one_of(links, st.sampled_from(["g1", "g2", " g1 ", ""])),
    "guid_is_permalink": st.sampled_from(['', ' isPermaLink="false"', ' isPermaLink="true"']),
    "pubDate": dates,
    "description": texts,
    "content:encoded": texts,
    "dc:creator": texts,
    "author": st.sampled_from(["a@e.org (Ann)", "Ann", "a@e.org"]),
    "category": st.lists(texts, max_size=3),
    "comments": links,
    "dc:date": dates,
    "enclosure": st.just('<enclosure url="https://e.org/a.mp3" type="audio/mpeg" length="1"/>'),
})


def render_item(fields: dict) -> str:
    parts = []
    for name, value in fields.items():
        if name == "guid_is_permalink":
            continue
        if name == "guid":
            parts.append(f"<guid{fields.get('guid_is_permalink', '')}>{value}</guid>")
        elif name == "category":
            parts.extend(f"<category>{term}</category>" for term in value)
        elif name == "enclosure":
            parts.append(value)
        else:
            parts.append(f"<{name}>{value}</{name}>")
    return "<item>" + "".join(parts) + "</item>"


#: Items of only the elements the fast path reads, never empty, with absolute links.
words = texts.filter(lambda text: text.strip() and text != "<![CDATA[  ]]>")
absolute = st.sampled_from(["https://e.org/a", "https://e.org/b", " https://e.org/padded ", "https://e.org/a?x=1&amp;y=2"])
fast_item_fields = st.fixed_dictionaries({}, optional={
    "title": words,
    "link": absolute,
    "guid": st.one_of(absolute, st.sampled_from(["g1", "g2"])),
    "pubDate": dates.filter(bool),
    "description": words,
    "content:encoded": words,
    "dc:creator": words,
    "category": st.lists(words, max_size=3),
    "dc:date": dates.filter(bool),
    "enclosure": st.just('<enclosure url="https://e.org/a.mp3" type="audio/mpeg" length="1"/>'),
}).map(lambda fields: {**fields, "guid_is_permalink": ' isPermaLink="false"'} if fields.get("guid", "h").startswith("g")
       else fields)

channel_extras = st.lists(st.sampled_from([
    "<ttl>60</ttl>", "<ttl> 30 </ttl>", "<sy:updatePeriod>hourly</sy:updatePeriod>",
    "<sy:updateFrequency>2</sy:updateFrequency>", "<skipHours><hour>1</hour></skipHours>",
    '<atom:link rel="self" href="https://example.org/feed"/>', '<atom:link rel="hub" href="https://hub.example/"/>',
    '<atom:link rel="hub" href="/hub"/>', "<description>About</description>", "<language>en</language>",
    "<image><url>https://e.org/i.png</url><title>Img</title><link>https://e.org/</link></image>",
]), max_size=4, unique=True).map("".join)


@hypothesis_settings(max_examples=300, deadline=None)
@given(items=st.lists(item_fields, min_size=1, max_size=4), extra=channel_extras)
def test_generated_rss_documents_agree(items: list[dict], extra: str) -> None:
    assert_agree(channel("".join(render_item(fields) for fields in items), extra))


@hypothesis_settings(max_examples=300, deadline=None)
@given(items=st.lists(fast_item_fields, min_size=1, max_size=4), extra=st.sampled_from([
    "", "<ttl>60</ttl>", "<sy:updatePeriod>daily</sy:updatePeriod><sy:updateFrequency>2</sy:updateFrequency>",
    '<atom:link rel="self" href="https://example.org/feed"/><atom:link rel="hub" href="https://hub.example/"/>',
    "<skipHours><hour>1</hour></skipHours><image><url>https://e.org/i.png</url><title>Img</title></image>",
]))
def test_generated_rss_documents_in_the_fast_subset_take_the_fast_path(items: list[dict], extra: str) -> None:
    assert assert_agree(channel("".join(render_item(fields) for fields in items), extra))


# ------------------------------------------------------------------ each fallback really falls back

PLAIN_ITEM = "<item><title>t</title><guid>https://e.org/1</guid><description>d</description></item>"

FALLBACKS = {
    "latin-1 declared": (channel(PLAIN_ITEM, head='<?xml version="1.0" encoding="iso-8859-1"?>'), RSS_TYPE, "encoding"),
    "charset in header": (channel(PLAIN_ITEM), "application/rss+xml; charset=windows-1252", "encoding"),
    "text/xml without charset": (channel(PLAIN_ITEM), "text/xml", "encoding"),
    "utf-16": (channel(PLAIN_ITEM, head='<?xml version="1.0"?>').decode().encode("utf-16"), RSS_TYPE, "not well-formed"),
    "utf-16 without byte order mark": (channel(PLAIN_ITEM, head='<?xml version="1.0"?>').decode().encode("utf-16-le"),
                                       RSS_TYPE, "not well-formed"),
    "byte order mark": (b"\xef\xbb\xbf" + channel(PLAIN_ITEM), RSS_TYPE, "byte order mark"),
    "html media type": (channel(PLAIN_ITEM), "text/html", "media type"),
    "not well-formed": (channel(PLAIN_ITEM)[:-20], RSS_TYPE, "not well-formed"),
    "undefined entity": (channel(PLAIN_ITEM.replace("<title>t", "<title>&nbsp;t")), RSS_TYPE, "not well-formed"),
    "dtd": (channel(PLAIN_ITEM, head=HEAD + '<!DOCTYPE rss [<!ENTITY a "b">]>'), RSS_TYPE, "DTD"),
    "xml:base": (channel(PLAIN_ITEM.replace("<item>", '<item xml:base="https://e.org/">')), RSS_TYPE, "xml:base"),
    "relative link": (channel(PLAIN_ITEM.replace("<guid>", "<link>/a</link><guid>")), RSS_TYPE, "relative"),
    "relative permalink guid": (channel(PLAIN_ITEM.replace("https://e.org/1", "1")), RSS_TYPE, "relative"),
    "atom": (
        b'<feed xmlns="http://www.w3.org/2005/Atom"><title>T</title><entry><id>1</id><title>t</title>'
        b'<content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml">x</div></content></entry></feed>',
        "application/atom+xml", "media type",
    ),
    "atom as xml": (
        b'<feed xmlns="http://www.w3.org/2005/Atom"><title>T</title><entry><id>1</id><title>t</title></entry></feed>',
        "application/xml", "not RSS 2.0",
    ),
    "rss 0.91": (channel(PLAIN_ITEM).replace(b'version="2.0"', b'version="0.91"'), RSS_TYPE, "not RSS 2.0"),
    "rdf": (
        b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/">'
        b'<channel rdf:about="https://e.org/"><title>T</title></channel>'
        b'<item rdf:about="https://e.org/1"><title>t</title><link>https://e.org/1</link></item></rdf:RDF>',
        "application/rdf+xml", "media type",
    ),
    "no media type": (channel(PLAIN_ITEM), None, "no media type"),
    "itunes field": (
        channel(PLAIN_ITEM.replace("</item>", "<itunes:author>A</itunes:author></item>")).replace(
            b"<rss ", b'<rss xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd" '),
        RSS_TYPE, "item element",
    ),
    "rss author": (channel(PLAIN_ITEM.replace("</item>", "<author>a@e.org (A)</author></item>")), RSS_TYPE,
                   "item element"),
    "two descriptions": (channel(PLAIN_ITEM.replace("</item>", "<description>e</description></item>")), RSS_TYPE,
                         "repeated"),
    "unescaped markup": (channel(PLAIN_ITEM.replace("<description>d", "<description><p>d</p>")), RSS_TYPE, "markup"),
    "empty title": (channel(PLAIN_ITEM.replace("<title>t</title>", "<title> </title>")), RSS_TYPE, "empty"),
    "base64 description": (channel(PLAIN_ITEM.replace("<description>d", '<description mode="base64">aGVsbG8=')), RSS_TYPE,
                           "attributes"),
    "rdf:about on item": (
        channel(PLAIN_ITEM.replace("<item>", '<item xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
                                   'rdf:about="https://e.org/x">')), RSS_TYPE, "item attributes",
    ),
    "base64 channel title": (channel(PLAIN_ITEM).replace(b"<title>T</title>", b'<title mode="base64">VA==</title>'),
                             RSS_TYPE, "attributes in channel"),
    "comment in item": (channel(PLAIN_ITEM.replace("</item>", "<!-- c --></item>")), RSS_TYPE, "item element"),
    "channel cloud": (channel(PLAIN_ITEM, '<cloud domain="e.org" port="80" path="/rpc"/>'), RSS_TYPE,
                      "channel element"),
    "relative hub": (channel(PLAIN_ITEM, '<atom:link rel="hub" href="/hub"/>'), RSS_TYPE, "atom:link"),
    "no items": (channel(""), RSS_TYPE, "no items"),
}


@pytest.mark.parametrize("name", sorted(FALLBACKS))
def test_each_untrusted_construct_falls_back_to_feedparser(name: str, caplog: pytest.LogCaptureFixture) -> None:
    body, content_type, reason = FALLBACKS[name]
    with pytest.raises(FastPathRefused, match=reason):
        fast_path_channel(body, content_type)
    assert path_taken(caplog, body, content_type) == "feedparser"
    assert_agree(body, content_type)


def test_the_plain_document_of_the_fallback_cases_takes_the_fast_path(caplog: pytest.LogCaptureFixture) -> None:
    """The fallback cases differ from a fast document only in the construct they name."""
    for content_type in (RSS_TYPE, "application/xml", "text/xml; charset=utf-8", "application/rss+xml; charset=UTF-8"):
        assert path_taken(caplog, channel(PLAIN_ITEM), content_type) == "fastfeedparser"
    assert assert_agree(channel(PLAIN_ITEM))


def test_fastfeedparser_failing_falls_back(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("boom")

    monkeypatch.setattr("tasks.parse.fastfeedparser.parse", broken)
    assert path_taken(caplog, channel(PLAIN_ITEM)) == "feedparser"
    assert [r.fallback for r in caplog.records if hasattr(r, "parser")] == ["fast path failed: ValueError('boom')"]
    assert any(r.levelname == "WARNING" for r in caplog.records)
    assert parse_document(channel(PLAIN_ITEM), RSS_TYPE, URL) == _parse_feedparser(channel(PLAIN_ITEM), RSS_TYPE, URL)

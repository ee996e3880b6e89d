"""Feed autodiscovery for ``feeds add`` and ``feeds import``: from the URL a person pastes to feeds.

``probe`` fetches the URL once: a feed (RSS, Atom, JSON Feed) is itself; an
HTML page offers its ``<link rel="alternate">`` feeds (``feed_links``, hrefs
resolved against the page), each fetched to check it is one, and failing
those the usual paths of its site (``FALLBACK_PATHS``). Every reason a URL
gives no feed is a sentence, never a parser's offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin

import lxml.html
from lxml import etree

from schemas.settings import Settings
from tasks.fetch import fetch_feed
from tasks.links import safe_link
from tasks.parse import NotAFeed, looks_like_html, parse_document

FEED_TYPES = ("application/rss+xml", "application/atom+xml", "application/feed+json", "application/json")
#: Where sites usually keep their feed, tried when a page links none.
FALLBACK_PATHS = ("/feed", "/rss.xml", "/atom.xml", "/index.xml", "/feed.json")


def feed_links(html: bytes, page_url: str) -> list[str]:
    """The feeds an HTML page links with ``<link rel="alternate">`` and a feed media type,
    absolute (against the page and its ``<base href>``), http(s) only, each once, in page order."""
    try:
        document = lxml.html.document_fromstring(html)
    except (etree.ParserError, ValueError):
        return []
    base_href = document.xpath("string(//base/@href)")
    base = urljoin(page_url, base_href) if base_href else page_url
    found: dict[str, None] = {}
    for link in document.iter("link"):
        rels = (link.get("rel") or "").lower().split()
        media_type = (link.get("type") or "").split(";", 1)[0].strip().lower()
        if "alternate" in rels and media_type in FEED_TYPES and (url := safe_link(link.get("href"), base)):
            found.setdefault(url, None)
    return list(found)


@dataclass(frozen=True)
class Probe:
    """What one URL turned out to be: ``feeds`` (the URL itself when it is a feed, else those found
    from its page, best first), or ``problem`` in words. ``page`` when it is an HTML page that
    gave no feed: certainly not one, where an error or other content may be passing."""

    url: str
    feeds: tuple[str, ...] = ()
    problem: str | None = None
    page: bool = False
    #: How the feeds were found: None for the URL itself, else "linked from the page" or "at a usual path".
    found_by: str | None = None
    #: Feeds found that could not be checked (for ``--all``), with why.
    skipped: tuple[str, ...] = ()


def probe(url: str, settings: Settings, *, every: bool = False) -> Probe:
    """Fetch ``url`` and find its feed (``every``: all the feeds its page links)."""
    answer = fetch_feed(url, None, None, settings)
    if answer.error is not None or answer.body is None:
        return Probe(url, problem=answer.error or "empty response")
    try:
        parse_document(answer.body, answer.content_type, answer.final_url)
        return Probe(url, feeds=(answer.permanent_redirect or url,))
    except NotAFeed as exc:
        if not looks_like_html(answer.body, answer.content_type):
            return Probe(url, problem=str(exc))
    linked = feed_links(answer.body, answer.final_url)
    if linked:
        good, bad = _check(linked, settings, every)
        if good:
            return Probe(url, feeds=good, found_by="linked from the page", skipped=bad)
        return Probe(url, problem=f"no feed found at {url} (the feeds it links do not answer with a feed: {bad[0]})",
                     page=True)
    for path in FALLBACK_PATHS:
        good, _ = _check([urljoin(answer.final_url, path)], settings, every=False)
        if good:
            return Probe(url, feeds=good, found_by="at a usual path")
    return Probe(url, problem=f"no feed found at {url} (an HTML page without feed links)", page=True)


def _check(candidates: list[str], settings: Settings, every: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The candidates that answer with a feed (the first only, unless ``every``), and why the others do not."""
    good: list[str] = []
    bad: list[str] = []
    for candidate in candidates:
        answer = fetch_feed(candidate, None, None, settings)
        if answer.error is not None or answer.body is None:
            bad.append(f"{candidate}: {answer.error or 'empty response'}")
            continue
        try:
            parse_document(answer.body, answer.content_type, answer.final_url)
        except NotAFeed as exc:
            bad.append(f"{candidate}: {exc}")
            continue
        good.append(answer.permanent_redirect or candidate)
        if not every:
            break
    return tuple(good), tuple(bad)

"""Parse stage: a fetched body becomes entries, stored idempotently.

``parse_document`` is pure: bytes in, ``ParsedFeed`` out. It reads with
fastfeedparser (with its checks, about five times faster than feedparser) the
documents on which its reading is known to equal feedparser's
(``fast_path_channel`` says which), and the rest with feedparser, so the path
taken never changes an entry's key or hash (``tests/test_parse_agreement.py``
holds the two to that). ``store_entries``
inserts new entries and updates changed ones (``INSERT ... ON CONFLICT`` on
feed and entry identity), so re-parsing the same document stores nothing new.
A document feedparser flags as malformed (bozo) but that still yields
entries is processed; one that yields nothing records why.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import fastfeedparser
import feedparser
from celery import shared_task
from feedparser.datetimes import _parse_date as feedparser_date
from lxml import etree
from sqlalchemy.orm import Session

from schemas.db import session_scope
from schemas.payloads import Enclosure, ParsedFeed, PollRef, RawEntry
from schemas.settings import Settings, current_settings
from tasks.base import StageTask, hand_on_articles
from tasks.jsonfeed import NotJsonFeed, looks_like_json, read_json_feed
from tasks.links import safe_link
from tasks.schedule import feed_hints
from tasks.storage import entries as stored_entries

log = logging.getLogger(__name__)

# feedmill sanitizes in its clean stage with nh3; feedparser's own pass would be wasted work.
PARSER_OPTIONS = {"sanitize_html": False, "resolve_relative_uris": False}


class NotAFeed(Exception):
    """The document yielded no entries and is not a well-formed feed."""


def parse_document(body: bytes, content_type: str | None, url: str | None) -> ParsedFeed:
    """Parse a feed document (RSS, Atom or JSON Feed); raise ``NotAFeed`` with the reason when it yields nothing.

    ``url`` is the document's address: relative links resolve against it.
    """
    if looks_like_json(body, content_type):
        log.debug("parsed as JSON Feed", extra={"parser": "jsonfeed", "fallback": None})
        return _parse_json_feed(body, url)
    try:
        parsed = _parse_fast(body, fast_path_channel(body, content_type), url)
    except FastPathRefused as refusal:
        log.debug("parsed with feedparser: %s", refusal, extra={"parser": "feedparser", "fallback": str(refusal)})
        return _parse_feedparser(body, content_type, url)
    log.debug("parsed with fastfeedparser", extra={"parser": "fastfeedparser", "fallback": None})
    return parsed


def _parse_feedparser(body: bytes, content_type: str | None, url: str | None) -> ParsedFeed:
    """feedparser's reading: any document, and the reference the fast path must equal."""
    headers = {"content-location": url or ""}
    if content_type:
        headers["content-type"] = content_type
    parsed = feedparser.parse(body, response_headers=headers, **PARSER_OPTIONS)
    bozo_error = str(parsed.get("bozo_exception") or "") or None if parsed.bozo else None
    if not parsed.entries and (bozo_error or not parsed.get("version")):
        if looks_like_html(body, content_type):
            raise NotAFeed("not a feed: an HTML page, not RSS, Atom or JSON Feed")
        if bozo_error:
            raise NotAFeed(f"not a feed: {bozo_error}")
        raise NotAFeed("not a recognised RSS or Atom document")
    feed_meta = parsed.feed
    links = {link.get("rel"): link.get("href") for link in feed_meta.get("links", []) if link.get("href")}
    return ParsedFeed(
        title=feed_meta.get("title"),
        site_url=safe_link(feed_meta.get("link"), url),
        entries=raw_entries(parsed.entries, url),
        bozo_error=bozo_error,
        schedule_hints=feed_hints(feed_meta, body).to_dict(),
        hub_url=safe_link(links.get("hub"), url),
        self_url=safe_link(links.get("self"), url),
        dropped_links=dropped_links(parsed.entries, url),
    )


def _parse_json_feed(body: bytes, url: str | None) -> ParsedFeed:
    try:
        feed = read_json_feed(body)
    except NotJsonFeed as exc:
        raise NotAFeed(f"not a feed: {exc}") from None
    return ParsedFeed(
        title=feed.title,
        site_url=safe_link(feed.site_url, url),
        entries=raw_entries(feed.entries, url),
        hub_url=safe_link(feed.hub_url, url),
        self_url=safe_link(feed.self_url, url),
        dropped_links=dropped_links(feed.entries, url),
    )


_HTML_START = re.compile(rb"^\s*(<!--.*?-->\s*)*<(!doctype\s+html|html[\s>]|head[\s>]|body[\s>])", re.IGNORECASE | re.DOTALL)
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})


def looks_like_html(body: bytes, content_type: str | None) -> bool:
    """Served as HTML, or opening as an HTML page does."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type in _HTML_TYPES or bool(_HTML_START.match(body[:4096]))


class FastPathRefused(Exception):
    """fastfeedparser's reading of this document is not known to equal feedparser's."""


_CONTENT_ENCODED = "{http://purl.org/rss/1.0/modules/content/}encoded"
_DC = "{http://purl.org/dc/elements/1.1/}"
_DC_DATE = _DC + "date"
_SY = "{http://purl.org/rss/1.0/modules/syndication/}"
_ATOM_LINK = "{http://www.w3.org/2005/Atom}link"
#: RSS 2.0 channel and item elements on which the agreement test shows both parsers agree;
#: any other element sends the document to feedparser.
_CHANNEL_TAGS = frozenset({
    "title", "link", "description", "language", "copyright", "managingEditor", "webMaster", "pubDate",
    "lastBuildDate", "generator", "docs", "ttl", "item", _SY + "updatePeriod", _SY + "updateFrequency",
    _SY + "updateBase", _ATOM_LINK, "skipHours", "skipDays", "image",
})
#: Channel elements with elements inside, read by neither parser for anything feedmill keeps.
_CHANNEL_BLOCKS = frozenset({"skipHours", "skipDays", "image"})
_ITEM_TAGS = frozenset({"title", "link", "guid", "pubDate", "description", "category", "comments",
                        "enclosure", _CONTENT_ENCODED, _DC + "creator", _DC_DATE})
_REPEATABLE = frozenset({"category", "item", _ATOM_LINK})
_ITEM_ATTRIBUTES = {"guid": frozenset({"isPermaLink"}), "category": frozenset({"domain"})}
#: The text entry keys, each with the item element it comes from.
_ENTRY_TEXT = {"id": "guid", "link": "link", "title": "title", "author": _DC + "creator"}
_FEED_TYPES = frozenset({"application/rss+xml", "application/xml", "text/xml"})
_DECLARED_ENCODING = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([^"']*)["']""")
_CHARSET = re.compile(r";\s*charset\s*=\s*\"?([^\s;\"]+)", re.IGNORECASE)
#: An absolute http(s) URL, without what looks like an entity (feedparser rewrites those in links).
_ABSOLUTE_URL = re.compile(r"(?!.*&\w+;)https?://[^\s<>\"]+\Z")
_C1_CONTROL = re.compile(rb"\xc2[\x80-\x9f]")


def fast_path_channel(body: bytes, content_type: str | None) -> Any:
    """The RSS 2.0 ``channel`` element of a document fastfeedparser reads as feedparser does.

    Raises ``FastPathRefused`` with the reason otherwise: an encoding or media type
    other than plain UTF-8 XML, a DTD, XML that is not well-formed, another feed
    type, or an element or construct outside what both read alike.
    """
    if not content_type:
        raise FastPathRefused("no media type (feedparser flags the document)")
    media_type = content_type.split(";", 1)[0].strip().lower()
    charset = _CHARSET.search(content_type)
    if media_type not in _FEED_TYPES:
        raise FastPathRefused(f"media type {media_type}")
    if charset and charset.group(1).lower() != "utf-8" or media_type == "text/xml" and not charset:
        raise FastPathRefused(f"encoding of {content_type}")
    declared = _DECLARED_ENCODING.match(body)
    if body.startswith(b"\xef\xbb\xbf") or declared and declared.group(1).lower() != b"utf-8":
        raise FastPathRefused("encoding other than UTF-8 declared, or a byte order mark")
    if b"<!DOCTYPE" in body or b"xml:base" in body:
        raise FastPathRefused("a DTD or xml:base")
    if _C1_CONTROL.search(body):
        raise FastPathRefused("C1 control characters (feedparser maps them as windows-1252)")
    try:
        root = etree.fromstring(body, etree.XMLParser(
            encoding="utf-8", resolve_entities=False, no_network=True, load_dtd=False))  # not UTF-16 by its BOM
    except etree.XMLSyntaxError as exc:
        raise FastPathRefused(f"not well-formed XML: {exc}") from None
    if root.tag != "rss" or root.get("version") != "2.0" or len(root) != 1 or root[0].tag != "channel":
        raise FastPathRefused(f"not RSS 2.0 with one channel: <{root.tag} version={root.get('version')!r}>")
    channel = root[0]
    items = 0
    seen: set[str] = set()
    for child in channel:
        if child.tag not in _CHANNEL_TAGS:
            raise FastPathRefused(f"channel element {child.tag}")
        if child.tag in seen and child.tag not in _REPEATABLE:
            raise FastPathRefused(f"channel element {child.tag} repeated")
        seen.add(child.tag)
        if child.tag == "item":
            _check_item(child)
            items += 1
        elif child.tag == _ATOM_LINK:
            if child.get("rel") not in ("self", "hub") or not _ABSOLUTE_URL.match(child.get("href") or ""):
                raise FastPathRefused("an atom:link other than an absolute self or hub")
        elif child.tag not in _CHANNEL_BLOCKS and (len(child) or child.attrib):
            raise FastPathRefused(f"markup or attributes in channel {child.tag}")
    link, title = channel.findtext("link"), channel.findtext("title")
    if link is not None and not _ABSOLUTE_URL.match(link.strip()):
        raise FastPathRefused("a relative or empty channel link")
    if title is not None and not title.strip():
        raise FastPathRefused("an empty channel title")
    if not items:
        raise FastPathRefused("no items")
    return channel


def _check_item(item: Any) -> None:
    """Refuse an item with anything but non-empty text elements both parsers read alike."""
    if item.attrib:
        raise FastPathRefused("item attributes")  # feedparser takes rdf:about for the GUID
    seen: set[str] = set()
    for child in item:
        tag = child.tag
        if tag not in _ITEM_TAGS:
            raise FastPathRefused(f"item element {tag}")
        if tag in seen and tag not in _REPEATABLE:
            raise FastPathRefused(f"item element {tag} repeated")
        seen.add(tag)
        if tag == "enclosure":
            continue
        if len(child) or not (child.text or "").strip():
            raise FastPathRefused(f"item element {tag} empty or holding markup")
        if child.attrib and not _ITEM_ATTRIBUTES.get(tag, frozenset()).issuperset(child.keys()):
            raise FastPathRefused(f"attributes of item element {tag}")  # e.g. mode="base64"
    guid = item.find("guid")
    # feedparser resolves a permalink GUID as a link, and takes it for the link when there is none.
    urls = [item.findtext("link"), guid.text if guid is not None and guid.get("isPermaLink", "true") == "true" else None]
    if any(url is not None and not _ABSOLUTE_URL.match(url.strip()) for url in urls):
        raise FastPathRefused("a relative link or permalink GUID")


def _parse_fast(body: bytes, channel: Any, url: str | None) -> ParsedFeed:
    """fastfeedparser's reading of a document ``fast_path_channel`` accepted, as feedparser's values."""
    items = channel.findall("item")
    try:
        parsed = fastfeedparser.parse(body, include_media=False, include_enclosures=False)
        if len(parsed.entries) != len(items):
            raise ValueError(f"fastfeedparser found {len(parsed.entries)} of {len(items)} items")
        entries = [_as_feedparser_entry(entry, item) for entry, item in zip(parsed.entries, items)]
    except Exception as exc:  # noqa: BLE001 - a document the fast path fails on is feedparser's to judge
        log.warning("fast path failed, parsing with feedparser: %r", exc)
        raise FastPathRefused(f"fast path failed: {exc!r}") from None
    feed = parsed.feed
    links = {link.get("rel"): link.get("href") for link in channel.findall(_ATOM_LINK)}
    feed_meta = {
        "ttl": channel.findtext("ttl"),
        "sy_updateperiod": channel.findtext(_SY + "updatePeriod"),
        "sy_updatefrequency": channel.findtext(_SY + "updateFrequency"),
    }
    return ParsedFeed(
        title=_feedparser_text(feed.get("title")),
        site_url=safe_link(_feedparser_text(feed.get("link")), url),
        entries=raw_entries(entries, url),
        schedule_hints=feed_hints(feed_meta, body).to_dict(),
        hub_url=safe_link(links.get("hub"), url),
        self_url=safe_link(links.get("self"), url),
        dropped_links=dropped_links(entries, url),
    )


def _as_feedparser_entry(entry: dict[str, Any], item: Any) -> dict[str, Any]:
    """A fastfeedparser entry with feedparser's keys and text, for ``raw_entries``.

    Each value only when the item has its element: fastfeedparser fills gaps
    (the link for a missing GUID, the description for missing content, an
    empty title). Dates go through feedparser's own date parser, from the
    item's text, because the two read dates without a timezone differently.
    """
    present = {child.tag for child in item}
    result: dict[str, Any] = {
        key: _feedparser_text(entry.get(key)) if tag in present else None for key, tag in _ENTRY_TEXT.items()
    }
    guid = item.find("guid")
    if "link" not in present and guid is not None and guid.get("isPermaLink", "true") == "true":
        result["link"] = result["id"]  # feedparser takes a permalink GUID for a missing link
    if _CONTENT_ENCODED in present:
        result["content"] = [{"value": _feedparser_text(entry["content"][0]["value"])}]
    if "description" in present:
        result["summary"], result["summary_detail"] = _feedparser_text(entry.get("description")), True
    result["tags"] = [{"term": _feedparser_text(tag["term"])} for tag in entry.get("tags") or ()]
    result["enclosures"] = [
        {"href": e.get("url"), "type": e.get("type"), "length": e.get("length")} for e in item.findall("enclosure")
    ]
    result["published_parsed"] = _feedparser_date(item.findtext("pubDate")) or _feedparser_date(item.findtext(_DC_DATE))
    return result


def _feedparser_date(value: str | None) -> Any:
    return feedparser_date(_feedparser_text(value))


def _feedparser_text(value: str | None) -> str | None:
    """Text as feedparser gives it: stripped, and UTF-8 read as Latin-1 undone when it decodes."""
    if value is None:
        return None
    value = value.strip()
    try:
        return value.encode("iso-8859-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def raw_entries(entries: Sequence[Any], base: str | None = None) -> tuple[RawEntry, ...]:
    """Turn feedparser entries into ``RawEntry`` values with a stable identity each.

    The identity is the GUID; when an entry has none, or the document repeats
    it across items, the link; failing that too, a hash of title and date.
    (A GUID reused across documents is caught when storing: ``reuses_guid``.)
    Links and enclosures resolve against ``base`` and are kept only when http(s).
    """
    guid_counts = Counter(e.get("id") for e in entries if e.get("id"))
    links = [safe_link(e.get("link"), base) for e in entries]
    link_counts = Counter(link for link in links if link)
    result: list[RawEntry] = []
    seen_keys: set[str] = set()
    for entry, link in zip(entries, links):
        guid = entry.get("id") or None
        title = entry.get("title")
        published = _entry_datetime(entry)
        content = entry.get("content")
        content_html = content[0].get("value") if content else None
        summary_html = entry.get("summary") if "summary_detail" in entry else None
        if summary_html is not None and summary_html == content_html:
            summary_html = None  # feedparser copies content into summary when there is none
        if guid and guid_counts[guid] == 1:
            key = f"guid:{guid}"
        else:
            key = fallback_key(link, title, published, unique_link=link_counts[link] == 1)
        if key in seen_keys:
            continue  # the same item twice in one document
        seen_keys.add(key)
        fields = [guid, link, title, entry.get("author"), published, summary_html, content_html]
        tags = _entry_tags(entry)
        enclosures = entry_enclosures(entry, base)
        if tags or enclosures:  # entries without categories or media keep the hash they always had
            fields.append(list(tags))
        if enclosures:
            fields.append([enclosure.to_dict() for enclosure in enclosures])
        result.append(
            RawEntry(
                entry_key=key,
                guid=guid,
                link=link,
                title=title,
                author=entry.get("author"),
                published_at=published,
                summary_html=summary_html,
                content_html=content_html,
                tags=tags,
                enclosures=enclosures,
                raw_hash=_digest([f.isoformat() if isinstance(f, datetime) else f for f in fields]),
            )
        )
    return tuple(result)


def _media(entry: Any) -> list[dict[str, Any]]:
    """The entry's media as feedparser gives them: enclosures (RSS, Atom, JSON Feed attachments),
    Media RSS content and thumbnails, the iTunes image; each with ``href`` or ``url``."""
    image = entry.get("image")
    return [
        *(entry.get("enclosures") or ()), *(entry.get("media_content") or ()),
        *(entry.get("media_thumbnail") or ()), *([image] if isinstance(image, dict) else ()),
    ]


def entry_enclosures(entry: Any, base: str | None) -> tuple[Enclosure, ...]:
    """The entry's media files with http(s) URLs, each URL once, in document order.

    ``itunes:duration`` gives the play time of the first audio or video file that has none.
    """
    found: dict[str, Enclosure] = {}
    for media in _media(entry):
        url = safe_link(_stripped(media.get("href") or media.get("url")), base)
        if url and url not in found:
            found[url] = Enclosure(
                url=url,
                type=_stripped(media.get("type")),
                length=_count(media.get("length") or media.get("filesize")),
                duration=_count(media.get("duration")),
            )
    enclosures = list(found.values())
    duration = play_seconds(entry.get("itunes_duration"))
    for index, enclosure in enumerate(enclosures):
        if duration is not None and enclosure.duration is None and (enclosure.type or "").startswith(("audio/", "video/")):
            enclosures[index] = replace(enclosure, duration=duration)
            break
    return tuple(enclosures)


def dropped_links(entries: Sequence[Any], base: str | None) -> int:
    """How many item links and media URLs the document gave that ``safe_link`` refuses."""
    given = [e.get("link") for e in entries] + [m.get("href") or m.get("url") for e in entries for m in _media(e)]
    return sum(1 for url in given if isinstance(url, str) and url.strip() and safe_link(_stripped(url), base) is None)


def _stripped(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _count(value: Any) -> int | None:
    """A non-negative whole number from a feed attribute (``"123"``, ``123``, ``"30.5"``), else None."""
    try:
        number = int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number >= 0 else None


def play_seconds(value: Any) -> int | None:
    """``itunes:duration`` in seconds: ``"3723"``, ``"62:03"`` or ``"1:02:03"``."""
    if not isinstance(value, str) or not value.strip():
        return None
    parts = value.strip().split(":")
    if len(parts) > 3 or not all(part.strip().isdigit() for part in parts):
        return _count(value)
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds


def fallback_key(link: str | None, title: str | None, published: datetime | None, *, unique_link: bool = True) -> str:
    """An entry's identity when its GUID cannot be trusted: its link, else title and date."""
    if link and unique_link:
        return f"link:{link}"
    return "hash:" + _digest([title, published and published.isoformat(), link])


def reuses_guid(stored_link: str | None, stored_title: str | None, entry: RawEntry) -> bool:
    """Whether ``entry`` is another item under the GUID of a stored one, not its revision.

    Some feeds give every item the same GUID, one item per document, so the
    repeat only shows across polls. A revision may change its link or its
    title; an entry that changes both is a different item.
    """
    return bool(
        entry.link and stored_link and entry.link != stored_link
        and entry.title and stored_title and entry.title != stored_title
    )


def rekey_reused_guids(entries: Sequence[RawEntry], stored: dict[str, tuple[str | None, str | None]]) -> list[RawEntry]:
    """Give entries that reuse a stored entry's GUID for another item their fallback identity.

    ``stored`` maps the GUID keys already stored for the feed to their (link, title).
    """
    result: dict[str, RawEntry] = {}
    for entry in entries:
        if entry.entry_key in stored and reuses_guid(*stored[entry.entry_key], entry):
            entry = replace(entry, entry_key=fallback_key(entry.link, entry.title, entry.published_at))
        result.setdefault(entry.entry_key, entry)
    return list(result.values())


def _entry_tags(entry: Any) -> tuple[str, ...]:
    """The entry's category terms, stripped, each once."""
    terms = ((tag.get("term") or "").strip() for tag in entry.get("tags") or [])
    return tuple(dict.fromkeys(term for term in terms if term))


def _entry_datetime(entry: Any) -> datetime | None:
    for name in ("published_parsed", "updated_parsed", "created_parsed"):
        value = entry.get(name)
        if value:
            try:
                return datetime.fromtimestamp(calendar.timegm(value), UTC)
            except (OverflowError, ValueError, OSError):
                return None
    return None


def _digest(parts: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


def store_entries(
    session: Session, feed_id: int, poll_id: int | None, entries: Sequence[RawEntry]
) -> tuple[list[int], list[int]]:
    """Insert new entries, update changed ones, leave pruned ones out; return (new ids, changed ids)."""
    if not entries:
        return [], []
    guid_keys = [e.entry_key for e in entries if e.entry_key.startswith("guid:")]
    stored = stored_entries.stored_guid_entries(session, feed_id, guid_keys)
    entries = stored_entries.without_pruned(session, feed_id, rekey_reused_guids(entries, stored))
    return stored_entries.insert_or_update(session, feed_id, poll_id, entries)


def run_parse(settings: Settings, poll_id: int) -> list[int]:
    """Parse a fetched poll and store its entries; return the article ids awaiting clean."""
    with session_scope(settings) as session:
        fetched = stored_entries.fetched_document(session, poll_id)
        if fetched is None:
            return []
        if not fetched.awaiting_parse:
            # Parsed by an earlier delivery: hand on whatever it left waiting.
            return stored_entries.articles_awaiting_clean(session, poll_id)
    try:
        parsed: ParsedFeed | None = parse_document(fetched.body, fetched.content_type, fetched.url)
        error = None
    except NotAFeed as exc:
        parsed, error = None, str(exc)[:500]
    if parsed is not None and parsed.dropped_links:
        log.warning("dropped %d link(s) that were not http(s) from poll %d", parsed.dropped_links, poll_id,
                    extra={"dropped_links": parsed.dropped_links})
    with session_scope(settings) as session:
        return stored_entries.record_parse(session, settings, poll_id, parsed, error, store_entries)


@shared_task(base=StageTask, name="feedmill.parse")
def parse_task(message: dict) -> None:
    hand_on_articles("parse", run_parse(current_settings(), PollRef.from_message(message).poll_id))

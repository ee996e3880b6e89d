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
from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from schemas.db import insert_for, session_scope
from schemas.models import (
    PENDING,
    POLL_ERROR,
    POLL_FETCHED,
    POLL_PARSED,
    Article,
    Feed,
    Poll,
    utcnow,
)
from schemas.payloads import ParsedFeed, PollRef, RawEntry
from schemas.pipeline import FIRST_ARTICLE_STAGE
from schemas.settings import Settings, current_settings
from tasks.base import StageTask, hand_on_articles
from tasks.schedule import feed_hints, http_hints
from tasks.storage.feeds import finish_poll_of_feed

log = logging.getLogger(__name__)

# feedmill sanitizes in its clean stage with nh3; feedparser's own pass would be wasted work.
PARSER_OPTIONS = {"sanitize_html": False, "resolve_relative_uris": False}


class NotAFeed(Exception):
    """The document yielded no entries and is not a well-formed feed."""


def parse_document(body: bytes, content_type: str | None, url: str | None) -> ParsedFeed:
    """Parse a feed document; raise ``NotAFeed`` with the reason when it yields nothing."""
    try:
        parsed = _parse_fast(body, fast_path_channel(body, content_type))
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
    if not parsed.entries:
        if bozo_error:
            raise NotAFeed(f"not a feed: {bozo_error}")
        if not parsed.get("version"):
            raise NotAFeed("not a recognised RSS or Atom document")
    feed_meta = parsed.feed
    links = {link.get("rel"): link.get("href") for link in feed_meta.get("links", []) if link.get("href")}
    return ParsedFeed(
        title=feed_meta.get("title"),
        site_url=feed_meta.get("link"),
        entries=raw_entries(parsed.entries),
        bozo_error=bozo_error,
        schedule_hints=feed_hints(feed_meta, body).to_dict(),
        hub_url=links.get("hub"),
        self_url=links.get("self"),
    )


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


def _parse_fast(body: bytes, channel: Any) -> ParsedFeed:
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
        site_url=_feedparser_text(feed.get("link")),
        entries=raw_entries(entries),
        schedule_hints=feed_hints(feed_meta, body).to_dict(),
        hub_url=links.get("hub"),
        self_url=links.get("self"),
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


def raw_entries(entries: Sequence[Any]) -> tuple[RawEntry, ...]:
    """Turn feedparser entries into ``RawEntry`` values with a stable identity each.

    The identity is the GUID; when an entry has none, or the document repeats
    it across items, the link; failing that too, a hash of title and date.
    (A GUID reused across documents is caught when storing: ``reuses_guid``.)
    """
    guid_counts = Counter(e.get("id") for e in entries if e.get("id"))
    link_counts = Counter(e.get("link") for e in entries if e.get("link"))
    result: list[RawEntry] = []
    seen_keys: set[str] = set()
    for entry in entries:
        guid, link = entry.get("id") or None, entry.get("link") or None
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
        if tags:  # entries without categories keep the hash they always had
            fields.append(list(tags))
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
                raw_hash=_digest([f.isoformat() if isinstance(f, datetime) else f for f in fields]),
            )
        )
    return tuple(result)


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


def _rekey_reused_guids(session: Session, feed_id: int, entries: Sequence[RawEntry]) -> list[RawEntry]:
    """Give entries that reuse a stored entry's GUID for another item their fallback identity."""
    guid_keys = [e.entry_key for e in entries if e.entry_key.startswith("guid:")]
    stored = {
        key: (link, title)
        for key, link, title in session.execute(
            select(Article.entry_key, Article.link, Article.raw_title).where(
                Article.feed_id == feed_id, Article.entry_key.in_(guid_keys)
            )
        )
    } if guid_keys else {}
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
    session: Session, feed_id: int, poll_id: int, entries: Sequence[RawEntry]
) -> tuple[list[int], list[int]]:
    """Insert new entries, update changed ones; return (new ids, changed ids)."""
    if not entries:
        return [], []
    entries = _rekey_reused_guids(session, feed_id, entries)
    now = utcnow()
    rows = [
        {
            "feed_id": feed_id,
            "poll_id": poll_id,
            "entry_key": e.entry_key,
            "guid": e.guid,
            "link": e.link,
            "published_at": e.published_at,
            "raw_title": e.title,
            "raw_author": e.author,
            "raw_summary_html": e.summary_html,
            "raw_content_html": e.content_html,
            "raw_tags": list(e.tags),
            "raw_hash": e.raw_hash,
            "revision": 1,
            "stage": FIRST_ARTICLE_STAGE,
            "status": PENDING,
            "created_at": now,
            "updated_at": now,
        }
        for e in entries
    ]
    insert = insert_for(session, Article.__table__)
    # Rows as executemany parameters, not one VALUES list: the statement compiles once per
    # process instead of once per poll, and SQLAlchemy still sends few multi-row INSERTs.
    new_ids = list(
        session.scalars(
            insert.on_conflict_do_nothing(index_elements=["feed_id", "entry_key"]).returning(Article.id),
            rows,
        )
    )
    if len(new_ids) == len(rows):
        return sorted(new_ids), []  # all new: nothing stored to compare with
    by_key = {e.entry_key: e for e in entries}
    existing = session.scalars(
        select(Article)
        .where(
            Article.feed_id == feed_id,
            Article.entry_key.in_(list(by_key)),
            Article.id.not_in(new_ids),
        )
        .with_for_update()
    ).all()
    changed_ids = []
    for article in existing:
        entry = by_key[article.entry_key]
        if article.raw_hash == entry.raw_hash:
            continue
        article.guid, article.link = entry.guid, entry.link
        article.published_at = entry.published_at
        article.raw_title, article.raw_author = entry.title, entry.author
        article.raw_summary_html, article.raw_content_html = entry.summary_html, entry.content_html
        article.raw_tags = list(entry.tags)
        article.raw_hash = entry.raw_hash
        article.revision += 1
        article.poll_id = poll_id
        article.stage, article.status, article.error = FIRST_ARTICLE_STAGE, PENDING, None
        article.updated_at = now
        changed_ids.append(article.id)
    return sorted(new_ids), sorted(changed_ids)


def run_parse(settings: Settings, poll_id: int) -> list[int]:
    """Parse a fetched poll and store its entries; return the article ids awaiting clean."""
    with session_scope(settings) as session:
        # Only what parsing needs: the body (about 130 kB a document) is read once, here.
        row = session.execute(
            select(Poll.status, Poll.body, Poll.content_type, Poll.final_url).where(Poll.id == poll_id)
        ).first()
        if row is None:
            return []
        if row.status != POLL_FETCHED:
            # Parsed by an earlier delivery: hand on whatever it left waiting.
            return _articles_awaiting_clean(session, poll_id)
        body, content_type, url = row.body or b"", row.content_type, row.final_url
    try:
        parsed: ParsedFeed | None = parse_document(body, content_type, url)
        error = None
    except NotAFeed as exc:
        parsed, error = None, str(exc)[:500]
    # No autoflush: the poll and the feed are written in one UPDATE each, at commit, instead of
    # being flushed half-updated by the queries in between (the changed articles are flushed
    # explicitly before the publishing rate counts them).
    with session_scope(settings) as session, session.no_autoflush:
        # The poll and its feed locked in one query, without the body read above: it is only cleared.
        locked = session.execute(
            select(Poll, Feed)
            .join(Feed, Feed.id == Poll.feed_id)
            .where(Poll.id == poll_id)
            .options(defer(Poll.body))
            .with_for_update()
        ).first()
        if locked is None or locked[0].status != POLL_FETCHED:
            return []
        poll, feed = locked
        now = utcnow()
        pushed = poll.kind == "push"  # a WebSub delivery: the feed's own poll schedule is untouched
        if parsed is None:
            poll.finished_at, poll.body = now, None
            poll.status, poll.error = POLL_ERROR, error
            if not pushed:
                finish_poll_of_feed(session, settings, feed, "error", http_hints(poll.cache_headers or {}, now), error)
            return []
        new_ids, changed_ids = store_entries(session, feed.id, poll.id, parsed.entries)
        session.flush()  # the changed articles (their dates count in the publishing rate); nothing else is dirty yet
        poll.finished_at, poll.body = now, None
        poll.status = POLL_PARSED
        poll.new_entries, poll.updated_entries = len(new_ids), len(changed_ids)
        poll.error = f"malformed but usable: {parsed.bozo_error}"[:500] if parsed.bozo_error else None
        feed.title = parsed.title or feed.title
        feed.site_url = parsed.site_url or feed.site_url
        feed.websub_hub = parsed.hub_url or feed.websub_hub
        feed.websub_topic = parsed.self_url or feed.websub_topic
        if not pushed:
            feed.etag, feed.last_modified = poll.etag, poll.last_modified
            feed.schedule_hints = parsed.schedule_hints
            finish_poll_of_feed(session, settings, feed, "ok", http_hints(poll.cache_headers or {}, now))
        return sorted(new_ids + changed_ids)


def _articles_awaiting_clean(session: Session, poll_id: int) -> list[int]:
    return list(
        session.scalars(
            select(Article.id)
            .where(Article.poll_id == poll_id, Article.stage == FIRST_ARTICLE_STAGE, Article.status == PENDING)
            .order_by(Article.id)
        )
    )


@shared_task(base=StageTask, name="feedmill.parse")
def parse_task(message: dict) -> None:
    hand_on_articles("parse", run_parse(current_settings(), PollRef.from_message(message).poll_id))

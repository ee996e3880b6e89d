"""JSON Feed 1.0 and 1.1 (https://jsonfeed.org/version/1.1), read into feedparser's entry shape.

feedparser reads RSS and Atom only. ``read_json_feed`` maps a JSON Feed's
items to the keys ``tasks.parse.raw_entries`` reads from feedparser entries
(id, link, title, author, content, summary, tags, dates, enclosures), so a
JSON Feed item gets the same identity, hash, sanitizing, dedupe and
classification as an RSS or Atom entry. Item ``language`` is not kept: the
classify stage detects every article's language from its text.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

JSON_TYPES = frozenset({"application/feed+json", "application/json"})
VERSION_PREFIX = "https://jsonfeed.org/version/"


class NotJsonFeed(ValueError):
    """JSON that cannot be read, or JSON that is not a JSON Feed; the message says which, in words."""


@dataclass(frozen=True)
class JsonFeed:
    title: str | None
    site_url: str | None
    self_url: str | None
    hub_url: str | None
    #: The items, each as a feedparser entry would hold it.
    entries: list[dict[str, Any]] = field(default_factory=list)


def looks_like_json(body: bytes, content_type: str | None) -> bool:
    """Served as JSON, or a body that opens with ``{`` (JSON Feeds are often served as text/plain)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type in JSON_TYPES or body.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{")


def read_json_feed(body: bytes) -> JsonFeed:
    """The feed and its items; ``NotJsonFeed`` with the reason when it is not a JSON Feed."""
    try:
        document = json.loads(body.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise NotJsonFeed("malformed JSON Feed: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise NotJsonFeed(f"malformed JSON Feed: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if not isinstance(document, dict) or not str(document.get("version", "")).startswith(VERSION_PREFIX):
        raise NotJsonFeed(f"JSON, but not a JSON Feed (no \"version\": \"{VERSION_PREFIX}1.1\")")
    items = document.get("items")
    if not isinstance(items, list):
        raise NotJsonFeed("a JSON Feed without an \"items\" list")
    hubs = [hub.get("url") for hub in _dicts(document.get("hubs"))]
    feed_authors = _authors(document)
    return JsonFeed(
        title=_text(document.get("title")),
        site_url=_text(document.get("home_page_url")),
        self_url=_text(document.get("feed_url")),
        hub_url=_text(hubs[0]) if hubs else None,
        entries=[_entry(item, feed_authors) for item in _dicts(items)],
    )


def _entry(item: dict[str, Any], feed_authors: list[str]) -> dict[str, Any]:
    """One item as a feedparser entry: only the keys the item has, as feedparser leaves out missing ones."""
    entry: dict[str, Any] = {
        "id": _text(item.get("id")),
        "link": _text(item.get("url")) or _text(item.get("external_url")),
        "title": _text(item.get("title")),
        "author": next(iter(_authors(item) or feed_authors), None),
        "tags": [{"term": tag} for tag in item.get("tags") or () if isinstance(tag, str)],
        "published_parsed": _date(item.get("date_published")),
        "updated_parsed": _date(item.get("date_modified")),
    }
    content = _text(item.get("content_html"))
    if content is None and (text := _text(item.get("content_text"))) is not None:
        content = "".join(f"<p>{html.escape(paragraph)}</p>" for paragraph in text.split("\n\n") if paragraph.strip())
    if content is not None:
        entry["content"] = [{"value": content}]
    if (summary := _text(item.get("summary"))) is not None:
        entry["summary"], entry["summary_detail"] = summary, True
    entry["enclosures"] = [
        {"href": a.get("url"), "type": a.get("mime_type"), "length": a.get("size_in_bytes"),
         "duration": a.get("duration_in_seconds")}
        for a in _dicts(item.get("attachments"))
    ] + [{"href": item[key]} for key in ("image", "banner_image") if isinstance(item.get(key), str)]
    return entry


def _authors(holder: dict[str, Any]) -> list[str]:
    """Author names: 1.1's ``authors`` list, else 1.0's ``author``."""
    authors = _dicts(holder.get("authors")) or _dicts([holder.get("author")])
    return [name for author in authors if (name := _text(author.get("name")))]


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    """A string value stripped (ids may be numbers in 1.0), or None."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return str(value).strip() or None


def _date(value: Any) -> time.struct_time | None:
    """An RFC 3339 date as the UTC ``struct_time`` feedparser gives; None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).timetuple()

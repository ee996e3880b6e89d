"""Published feeds: every subscription served as Atom (``/feeds/NAME.atom``) and JSON Feed 1.1
(``/feeds/NAME.json``), its last 100 articles, last changed first. See docs/delivery.md.

A subscription's feed holds the articles it has had an event for (the deliver stage's matching,
the one copy of it) that are still listed and still pass its filters, so a feed reader follows
exactly what its webhook or stream is sent. Readers poll, so every answer carries an ``ETag``
and a ``Last-Modified`` and a conditional GET that finds nothing new is answered 304 without
rendering anything.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from feedgen.feed import FeedGenerator

from schemas.db import session_scope
from schemas.models import Subscription
from schemas.settings import Settings
from tasks.deliver import event_data, matches
from tasks.storage import deliveries as stored
from tasks.storage.reading import iso

FEED_SIZE = 100
ATOM_TYPE = "application/atom+xml; charset=utf-8"
JSON_FEED_TYPE = "application/feed+json; charset=utf-8"
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
#: What XML 1.0 forbids in text (lxml refuses it): one stray control character would fail the feed.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


@dataclass(frozen=True)
class Entry:
    """One article of a published feed: its event data, and when feedmill last changed it."""

    data: dict[str, Any]
    change_seq: int
    updated_at: datetime


# ------------------------------------------------------------------ pure functions


def description(subscription: Any, feed_urls: dict[int, str]) -> str:
    """The subscription's filters in words, the feed's subtitle."""
    parts = []
    if subscription.topics:
        parts.append("topic " + " or ".join(subscription.topics))
    if subscription.feed_ids:
        parts.append("feed " + " or ".join(feed_urls.get(i, str(i)) for i in subscription.feed_ids))
    if subscription.tags:
        parts.append("tag " + " or ".join(subscription.tags))
    if subscription.query:
        parts.append(f"every word of {subscription.query!r}")
    return "feedmill articles" + (": " + "; ".join(parts) if parts else "")


def entry_id(data: dict[str, Any]) -> str:
    return f"urn:feedmill:article:{data['id']}"


def last_modified(entries: Sequence[Entry], subscription: Any) -> datetime:
    """The newest change among the entries (the subscription's creation when it has none), to the second."""
    newest = max((entry.updated_at for entry in entries), default=subscription.created_at)
    return newest.replace(microsecond=0)


def etag(kind: str, self_url: str, subscription: Any, entries: Sequence[Entry]) -> str:
    """A strong validator from everything the rendered feed depends on: each entry's position in
    the change sequence (a new one at every write readers can see), the filters and the URL."""
    key = json.dumps([kind, self_url, subscription.name, subscription.topics, subscription.feed_ids,
                      subscription.tags, subscription.query,
                      [(entry.data["id"], entry.change_seq, entry.data["feed_url"]) for entry in entries]])
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def not_modified(headers: Any, tag: str, modified: datetime) -> bool:
    """RFC 9110 conditional GET: If-None-Match (weak comparison) wins over If-Modified-Since."""
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        given = {value.strip().removeprefix("W/") for value in if_none_match.split(",")}
        return "*" in given or tag in given
    if_modified_since = headers.get("if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        return since.tzinfo is not None and modified <= since
    return False


def _xml(value: str | None) -> str | None:
    return _NOT_XML.sub("", value) if value else value


def atom_feed(subscription: Any, entries: Sequence[Entry], self_url: str, json_url: str, subtitle: str) -> bytes:
    """The feed as Atom 1.0 (RFC 4287), newest first."""
    feed = FeedGenerator()
    feed.id(f"urn:feedmill:subscription:{subscription.name}")
    feed.title(f"feedmill: {subscription.name}")
    feed.subtitle(_xml(subtitle))
    feed.updated(last_modified(entries, subscription))
    feed.link(href=self_url, rel="self", type="application/atom+xml")
    feed.link(href=json_url, rel="alternate", type="application/feed+json")
    feed.generator("feedmill")
    for entry in entries:
        data = entry.data
        item = feed.add_entry(order="append")
        item.id(entry_id(data))
        item.title(_xml(data["title"]) or data["url"] or "(untitled)")
        item.updated(entry.updated_at)
        if data["published_at"]:
            item.published(data["published_at"])
        if data["url"]:
            item.link(href=data["url"], rel="alternate")
        for enclosure in data["enclosures"]:
            item.link(href=enclosure["url"], rel="enclosure", type=enclosure.get("type"),
                      length=str(enclosure["length"]) if enclosure.get("length") else None)
        if data["author"]:
            item.author(name=_xml(data["author"]))
        if data["summary"]:
            item.summary(_xml(data["summary"]))
        if data["html"] or data["text"]:
            item.content(_xml(data["html"] or data["text"]), type="html" if data["html"] else "text")
        for term in [*data["topics"], *data["tags"]]:
            item.category(term=_xml(term))
    return feed.atom_str(pretty=False)


def json_feed(subscription: Any, entries: Sequence[Entry], self_url: str, subtitle: str) -> bytes:
    """The feed as JSON Feed 1.1 (https://jsonfeed.org/version/1.1), newest first; what JSON
    Feed has no field for (topics, places, cluster, duplicate) is under ``_feedmill``."""
    return json.dumps({
        "version": JSON_FEED_VERSION,
        "title": f"feedmill: {subscription.name}",
        "description": subtitle,
        "feed_url": self_url,
        "items": [json_item(entry) for entry in entries],
    }, ensure_ascii=False).encode()


def json_item(entry: Entry) -> dict[str, Any]:
    data = entry.data
    item: dict[str, Any] = {"id": entry_id(data)}
    optional = {
        "url": data["url"],
        "title": data["title"],
        "content_html": data["html"],
        "content_text": data["text"] if data["text"] or not data["html"] else None,
        "summary": data["summary"],
        "date_published": data["published_at"],
        "date_modified": iso(entry.updated_at),
        "authors": [{"name": data["author"]}] if data["author"] else None,
        "tags": [*data["topics"], *data["tags"]] or None,
        "language": data["language"],
        "attachments": [
            {key: value for key, value in (("url", e["url"]), ("mime_type", e.get("type") or "application/octet-stream"),
                                           ("size_in_bytes", e.get("length")),
                                           ("duration_in_seconds", e.get("duration"))) if value is not None}
            for e in data["enclosures"]
        ] or None,
    }
    item |= {key: value for key, value in optional.items() if value is not None}
    item.setdefault("content_text", "")  # an item has content_html or content_text
    item["_feedmill"] = {key: data[key] for key in ("feed_url", "topics", "places", "tags", "cluster_id",
                                                    "duplicate_of", "guid")}
    return item


# ------------------------------------------------------------------ the routes


def published_entries(session: Any, subscription: Subscription, limit: int = FEED_SIZE) -> list[Entry]:
    """The subscription's last ``limit`` articles that still pass its filters, last changed first."""
    entries = []
    for article, feed_url in stored.evented_articles(session, subscription.id):
        data = event_data(article, feed_url)
        if matches(subscription, data, article.feed_id):
            entries.append(Entry(data, article.change_seq or 0, article.updated_at))
            if len(entries) == limit:
                break
    return entries


def feeds_router(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/feeds", tags=["published feeds"])

    def answer(request: Request, name: str, kind: str) -> Response:
        base = str(request.base_url).rstrip("/")
        self_url = f"{base}/feeds/{name}.{kind}"
        with session_scope(settings, read_only=True) as session:
            subscription = stored.subscription_named(session, name)
            if subscription is None:
                raise HTTPException(404, f"no subscription {name}")
            entries = published_entries(session, subscription)
            tag, modified = etag(kind, self_url, subscription, entries), last_modified(entries, subscription)
            headers = {"ETag": tag, "Last-Modified": format_datetime(modified, usegmt=True), "Cache-Control": "no-cache"}
            if not_modified(request.headers, tag, modified):
                return Response(status_code=304, headers=headers)
            subtitle = description(subscription, stored.feed_urls(session, subscription.feed_ids or []))
            if kind == "atom":
                body = atom_feed(subscription, entries, self_url, f"{base}/feeds/{name}.json", subtitle)
            else:
                body = json_feed(subscription, entries, self_url, subtitle)
        return Response(body, media_type=ATOM_TYPE if kind == "atom" else JSON_FEED_TYPE, headers=headers)

    @router.api_route("/{name}.atom", methods=["GET", "HEAD"], summary="A subscription's last 100 articles, as Atom",
                      response_class=Response, responses={200: {"content": {"application/atom+xml": {}}}, 304: {}})
    def atom(name: str, request: Request) -> Response:
        return answer(request, name, "atom")

    @router.api_route("/{name}.json", methods=["GET", "HEAD"], summary="A subscription's last 100 articles, as JSON Feed 1.1",
                      response_class=Response, responses={200: {"content": {"application/feed+json": {}}}, 304: {}})
    def json_(name: str, request: Request) -> Response:
        return answer(request, name, "json")

    return router

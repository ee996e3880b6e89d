"""Typed values that stages hand each other.

Stage functions take and return these frozen dataclasses so they can be
tested without a database or a broker. Celery messages carry only ids
(``PollRef``, ``ArticleBatch``): the database holds the data, so any stage
can be re-run from the database alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def chunked(values: Sequence[Any], size: int) -> list[list[Any]]:
    """Split ``values`` into lists of at most ``size``: batch messages, or SQL ``IN`` lists."""
    return [list(values[i : i + size]) for i in range(0, len(values), size)]


@dataclass(frozen=True)
class PollRef:
    """Message for the fetch and parse tasks: one poll row of one feed."""

    poll_id: int

    def to_message(self) -> dict[str, Any]:
        return {"poll_id": self.poll_id}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> PollRef:
        return cls(poll_id=int(message["poll_id"]))


@dataclass(frozen=True)
class ArticleBatch:
    """Message for the article stages: the ids of one feed's new or changed articles."""

    article_ids: tuple[int, ...]

    def to_message(self) -> dict[str, Any]:
        return {"article_ids": list(self.article_ids)}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> ArticleBatch:
        return cls(article_ids=tuple(int(i) for i in message["article_ids"]))


@dataclass(frozen=True)
class FetchResult:
    """What one HTTP poll of a feed produced."""

    status_code: int | None
    final_url: str
    body: bytes | None
    etag: str | None
    last_modified: str | None
    content_type: str | None
    error: str | None = None
    #: Cache-Control, Expires and Retry-After as received (lowercase names).
    cache_headers: dict[str, str] = field(default_factory=dict)
    #: Where the feed now lives when every redirect followed was permanent (301/308).
    permanent_redirect: str | None = None

    @property
    def not_modified(self) -> bool:
        return self.status_code == 304


@dataclass(frozen=True)
class Enclosure:
    """A file an entry carries (a podcast episode, a video, an image), its URL http(s) only."""

    url: str
    type: str | None = None
    #: Size in bytes, as the feed declares it.
    length: int | None = None
    #: Play time in seconds (itunes:duration, media:content/@duration, JSON Feed duration_in_seconds).
    duration: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "type": self.type, "length": self.length, "duration": self.duration}


@dataclass(frozen=True)
class RawEntry:
    """One feed entry as feedparser gave it, before any cleaning.

    ``entry_key`` is the entry's identity within its feed (GUID, else link,
    else title and date); ``raw_hash`` fingerprints every field below so an
    unchanged re-poll can be recognised without cleaning again.
    """

    entry_key: str
    guid: str | None
    link: str | None
    title: str | None
    author: str | None
    published_at: datetime | None
    summary_html: str | None
    content_html: str | None
    raw_hash: str
    #: The entry's categories (RSS ``category``, Atom ``category/@term``), for rules.
    tags: tuple[str, ...] = ()
    #: RSS enclosures, Atom ``rel="enclosure"`` links, JSON Feed attachments, Media RSS and iTunes media.
    enclosures: tuple[Enclosure, ...] = ()


@dataclass(frozen=True)
class ParsedFeed:
    """A parsed feed document: feed-level metadata plus its entries."""

    title: str | None
    site_url: str | None
    entries: tuple[RawEntry, ...]
    bozo_error: str | None = None
    #: The document's scheduling hints (ttl, sy:updatePeriod, skipHours, skipDays).
    schedule_hints: dict[str, Any] = field(default_factory=dict)
    #: WebSub: the hub the feed advertises and its own canonical (self) URL.
    hub_url: str | None = None
    self_url: str | None = None
    #: URLs the document gave that were not http(s) (``javascript:`` and the like), dropped.
    dropped_links: int = 0


@dataclass(frozen=True)
class Image:
    """An image of an article, kept as data rather than as body text."""

    src: str | None
    caption: str | None = None
    credit: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"src": self.src, "caption": self.caption, "credit": self.credit}


@dataclass(frozen=True)
class CleanArticle:
    """The clean stage's output for one entry.

    ``text`` is plain text, paragraphs separated by one blank line
    (``"\\n\\n"``); ``html`` is sanitized HTML safe to display.
    """

    title: str
    url: str | None
    summary: str
    text: str
    html: str
    images: tuple[Image, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Classification:
    """The classify stage's output for one article.

    ``topics`` are (label, score) pairs, best first; ``places`` are ISO
    3166-1 alpha-2 codes, most mentioned first; ``language`` is ISO 639-1.
    """

    language: str | None
    topics: tuple[tuple[str, float], ...]
    places: tuple[str, ...]


@dataclass(frozen=True)
class TopicEvidence:
    """Why a topic scored what it did, from the lexicon or a trained model (for ``explain``).

    ``terms`` are the words behind the score with what each contributed, largest
    first; ``kept`` says whether the topic made it into the article's topics.
    """

    topic: str
    score: float
    kept: bool
    terms: tuple[tuple[str, float], ...]

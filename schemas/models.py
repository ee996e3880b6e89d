"""The SQL tables: feeds, their polls, and articles with their stage.

The database is the source of truth. Every article row carries the stage it
waits for and its status, so any stage can be re-run or re-queued from the
database alone; unique constraints make a repeated task harmless.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: The article stages in pipeline order; ``done`` means every stage has run.
STAGES = ("clean", "dedupe", "classify", "done")
#: Status of an article within its stage.
PENDING, FAILED, OK = "pending", "failed", "ok"
#: Poll lifecycle: queued -> fetched -> parsed, or not_modified / error.
POLL_QUEUED, POLL_FETCHED, POLL_PARSED, POLL_NOT_MODIFIED, POLL_ERROR = (
    "queued",
    "fetched",
    "parsed",
    "not_modified",
    "error",
)
POLL_FINISHED = (POLL_PARSED, POLL_NOT_MODIFIED, POLL_ERROR)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on SQLite as well as PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONValue = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Feed(Base):
    __tablename__ = "feeds"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    url: Mapped[str] = mapped_column(Text, unique=True)
    title: Mapped[str | None] = mapped_column(Text)
    site_url: Mapped[str | None] = mapped_column(Text)
    #: active | paused | retired
    status: Mapped[str] = mapped_column(String(16), default="active")
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)
    next_poll_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: A fetch holds the feed until this time; an expired lease frees it again.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    consecutive_errors: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_feeds_due", "status", "next_poll_at"),)


class Poll(Base):
    """One poll of one feed: the history row, and the fetched body until parsed."""

    __tablename__ = "polls"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=POLL_QUEUED)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    final_url: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    new_entries: Mapped[int] = mapped_column(Integer, default=0)
    updated_entries: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    #: Raw response body; kept from fetch until parse succeeds, then cleared.
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    content_type: Mapped[str | None] = mapped_column(Text)
    #: Validators of this response; copied to the feed only once parsing succeeds,
    #: so a body that failed to parse is fetched again rather than answered 304.
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_polls_status", "status"),)


class Article(Base):
    __tablename__ = "articles"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"))
    #: The entry's identity in its feed: GUID, else link, else title and date.
    entry_key: Mapped[str] = mapped_column(Text)
    guid: Mapped[str | None] = mapped_column(Text)
    link: Mapped[str | None] = mapped_column(Text)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    raw_title: Mapped[str | None] = mapped_column(Text)
    raw_author: Mapped[str | None] = mapped_column(Text)
    raw_summary_html: Mapped[str | None] = mapped_column(Text)
    raw_content_html: Mapped[str | None] = mapped_column(Text)
    #: Fingerprint of the raw fields: an unchanged re-poll matches it and stores nothing.
    raw_hash: Mapped[str] = mapped_column(String(64))
    #: The poll that last inserted or changed this article.
    poll_id: Mapped[int | None] = mapped_column(ForeignKey("polls.id", ondelete="SET NULL"))
    revision: Mapped[int] = mapped_column(Integer, default=1)

    # Written by the clean stage.
    title: Mapped[str | None] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text)
    author: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    images: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONValue)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    # Written by the dedupe stage.
    duplicate_of: Mapped[int | None] = mapped_column(
        ForeignKey("articles.id", ondelete="SET NULL")
    )
    # Written by the classify stage.
    language: Mapped[str | None] = mapped_column(String(8))
    topics: Mapped[list[list[Any]] | None] = mapped_column(JSONValue)
    places: Mapped[list[str] | None] = mapped_column(JSONValue)

    #: The stage this article waits for (see STAGES); ``done`` when finished.
    stage: Mapped[str] = mapped_column(String(16), default="clean")
    #: pending | failed (within ``stage``) | ok (when ``stage`` is done).
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("feed_id", "entry_key", name="uq_articles_feed_entry"),
        Index("ix_articles_stage_status", "stage", "status"),
        Index("ix_articles_content_hash", "content_hash"),
        Index("ix_articles_url", "url"),
        Index("ix_articles_poll", "poll_id"),
    )

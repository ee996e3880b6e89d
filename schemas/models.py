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
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.pipeline import FIRST_ARTICLE_STAGE

#: Status of an article within its stage.
PENDING, FAILED, OK = "pending", "failed", "ok"
#: Poll lifecycle: queued -> fetched -> parsed, or not_modified / error / deferred.
POLL_QUEUED, POLL_FETCHED, POLL_PARSED, POLL_NOT_MODIFIED, POLL_ERROR = (
    "queued",
    "fetched",
    "parsed",
    "not_modified",
    "error",
)
#: The publisher asked us to come back later (429/503 with Retry-After): not a feed error.
POLL_DEFERRED = "deferred"
POLL_FINISHED = (POLL_PARSED, POLL_NOT_MODIFIED, POLL_ERROR, POLL_DEFERRED)


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
    #: ``url`` in its normal spelling (``tasks.links.feed_url_key``), unique: one feed per resource.
    #: NULL only for a feed that migration 0011 found duplicating another (retired, reason given).
    url_key: Mapped[str | None] = mapped_column(Text)
    #: Folders of the OPML outline it came from, outermost first (written back by ``feeds export``).
    tags: Mapped[list[str] | None] = mapped_column(JSONValue)
    title: Mapped[str | None] = mapped_column(Text)
    site_url: Mapped[str | None] = mapped_column(Text)
    #: active | paused | retired
    status: Mapped[str] = mapped_column(String(16), default="active")
    #: Why the feed is paused or retired, or why its URL changed: for operators.
    status_reason: Mapped[str | None] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)
    next_poll_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Which scheduling rule set ``next_poll_at``, in words.
    next_poll_reason: Mapped[str | None] = mapped_column(Text)
    #: Operator's fixed interval in seconds, replacing the adaptive one.
    interval_override: Mapped[int | None] = mapped_column(Integer)
    #: The feed document's own hints: ttl, sy:updatePeriod, skipHours, skipDays.
    schedule_hints: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    #: Target of the permanent redirects seen in a row, and how many polls saw it.
    redirect_target: Mapped[str | None] = mapped_column(Text)
    redirect_count: Mapped[int] = mapped_column(Integer, default=0)
    #: WebSub: wanted by the operator; hub and topic from the feed; state of the subscription.
    websub_wanted: Mapped[bool] = mapped_column(Boolean, default=False)
    websub_hub: Mapped[str | None] = mapped_column(Text)
    websub_topic: Mapped[str | None] = mapped_column(Text)
    websub_secret: Mapped[str | None] = mapped_column(Text)
    #: none | requested | active | denied | failed
    websub_state: Mapped[str] = mapped_column(String(16), default="none")
    websub_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    websub_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Fetch each entry's linked page for its full text: on | off | auto; NULL follows FEEDMILL_FULL_TEXT.
    full_text: Mapped[str | None] = mapped_column(String(8))
    #: Seconds its articles are kept (``RETAIN_FOREVER``: all); NULL follows FEEDMILL_RETENTION.
    retention: Mapped[int | None] = mapped_column(Integer)
    #: A fetch holds the feed until this time; an expired lease frees it again.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    consecutive_errors: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_feeds_due", "status", "next_poll_at"),
        Index("ux_feeds_url_key", "url_key", unique=True),
    )


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
    #: Cache-Control, Expires and Retry-After of the response, for scheduling and history.
    cache_headers: Mapped[dict[str, str] | None] = mapped_column(JSONValue)
    #: poll (we fetched it) or push (a WebSub hub delivered it).
    kind: Mapped[str] = mapped_column(String(8), default="poll")
    #: Validators of this response; copied to the feed only once parsing succeeds,
    #: so a body that failed to parse is fetched again rather than answered 304.
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_polls_status", "status"),)


class Host(Base):
    """Per-host politeness state shared by every worker: when the last fetch started."""

    __tablename__ = "hosts"

    host: Mapped[str] = mapped_column(Text, primary_key=True)
    last_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class HostFetch(Base):
    """A fetch in flight to a host; the lease frees the slot if its worker dies."""

    __tablename__ = "host_fetches"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    host: Mapped[str] = mapped_column(Text, index=True)
    poll_id: Mapped[int | None] = mapped_column(BigId)
    lease_until: Mapped[datetime] = mapped_column(UTCDateTime)


#: The rows of ``ix_articles_duplicate_of`` (``Article.text`` hides ``text`` in the class body).
_COPIES_ONLY = text("duplicate_of IS NOT NULL")
_PAGE_WANTED = text("page_due_at IS NOT NULL")


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
    #: The entry's categories as the feed gave them.
    raw_tags: Mapped[list[str] | None] = mapped_column(JSONValue)
    #: The entry's media files (``schemas.payloads.Enclosure.to_dict``), http(s) URLs only.
    enclosures: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONValue)
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
    #: Why the clean stage kept the feed's summary instead of the linked page's full text.
    clean_note: Mapped[str | None] = mapped_column(Text)
    #: Set while the linked page's full text is still wanted: the article went on with its summary,
    #: and the page is fetched in its host's turn from then on (``feedmill.fulltext``); NULL otherwise.
    page_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Written by the dedupe stage.
    duplicate_of: Mapped[int | None] = mapped_column(
        ForeignKey("articles.id", ondelete="SET NULL")
    )
    #: The first-seen article of this article's story cluster (its own id if it is that
    #: article); NULL until deduped. Not a foreign key: it names a cluster.
    cluster_id: Mapped[int | None] = mapped_column(BigId)
    #: Why ``duplicate_of`` is set: url, text, near or reissue (docs/dedupe.md).
    duplicate_reason: Mapped[str | None] = mapped_column(String(16))
    #: ``content_hash`` of the text before its last change.
    previous_content_hash: Mapped[str | None] = mapped_column(String(64))
    # Written by the classify stage.
    language: Mapped[str | None] = mapped_column(String(8))
    topics: Mapped[list[list[Any]] | None] = mapped_column(JSONValue)
    places: Mapped[list[str] | None] = mapped_column(JSONValue)
    #: The feed's categories (parse) plus the tags of matching rules (classify).
    tags: Mapped[list[str] | None] = mapped_column(JSONValue)
    #: Version of the trained topic model that labelled it; NULL for the default lexicon.
    classifier_version: Mapped[int | None] = mapped_column(Integer)
    #: The drop rule that matched: the row stays as a tombstone (no re-insert as new),
    #: export leaves it out. Not a foreign key: removing the rule keeps the tombstone
    #: until the article is reprocessed.
    dropped_by: Mapped[int | None] = mapped_column(Integer)
    #: A new value from the change sequence at every write readers can see
    #: (``tasks/storage/changes.py``): what an API cursor follows.
    change_seq: Mapped[int | None] = mapped_column(BigInteger)

    #: The article stage this article waits for (``schemas/pipeline.py``); ``done`` when finished.
    stage: Mapped[str] = mapped_column(String(16), default=FIRST_ARTICLE_STAGE)
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
        Index("ix_articles_feed_published", "feed_id", "published_at"),
        Index("ix_articles_cluster", "cluster_id"),
        # Deleting an article sets its copies' duplicate_of NULL: without this, each deleted
        # article is a scan of the whole table (migration 0012); copies only, so it stays small.
        Index("ix_articles_duplicate_of", "duplicate_of",
              sqlite_where=_COPIES_ONLY, postgresql_where=_COPIES_ONLY),
        Index("ix_articles_change_seq", "change_seq", "id"),
        Index("ix_articles_page_due", "page_due_at", sqlite_where=_PAGE_WANTED, postgresql_where=_PAGE_WANTED),
    )


#: ``feeds.retention`` of a feed whose articles are never pruned for age.
RETAIN_FOREVER = 0


class ArticleTombstone(Base):
    """The identity of a pruned article, so a feed still listing the item does not bring it back
    (``tasks/storage/retention.py``); it goes once the feed has stopped listing it for a while."""

    __tablename__ = "article_tombstones"

    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"), primary_key=True)
    #: The pruned article's ``entry_key``.
    entry_key: Mapped[str] = mapped_column(Text, primary_key=True)
    #: Hash of its link and title, which find the item again under a new GUID
    #: (``tasks.storage.retention.item_fingerprint``); NULL without a link.
    item_fingerprint: Mapped[str | None] = mapped_column(String(64))
    pruned_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: When a parsed document last listed the item.
    last_listed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_article_tombstones_fingerprint", "feed_id", "item_fingerprint"),
        Index("ix_article_tombstones_listed", "last_listed_at"),
    )


class ParagraphFingerprints(Base):
    """The short paragraphs of one cleaned article, hashed: the clean stage learns a
    feed's recurring furniture from its recent articles' rows (docs/clean.md)."""

    __tablename__ = "paragraph_fingerprints"

    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id", ondelete="CASCADE"), primary_key=True)
    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"))
    #: 63-bit hashes of the article's distinct short paragraphs (letters and digits, casefolded).
    fingerprints: Mapped[list[int]] = mapped_column(JSONValue)

    __table_args__ = (Index("ix_paragraph_fingerprints_feed", "feed_id", "article_id"),)


class MinhashSignature(Base):
    """An article's MinHash signature at one shingle size (written by dedupe)."""

    __tablename__ = "minhash_signatures"

    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id", ondelete="CASCADE"), primary_key=True)
    shingle_words: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: NUM_PERM little-endian uint32 values.
    signature: Mapped[bytes] = mapped_column(LargeBinary)


class MinhashBand(Base):
    """The LSH index shared by every worker: one row per band key of a signature.

    Only the primary key (migration 0008): no foreign key to ``articles`` and no index on
    ``article_id``, which made dedupe's band INSERT two to four times as costly on PostgreSQL
    (docs/dedupe.md).
    An article's rows are deleted by the keys its stored signatures give
    (``tasks.storage.clusters.delete_index_rows``), not by cascade.
    """

    __tablename__ = "minhash_bands"
    #: On SQLite one clustered B-tree, not a rowid table plus its key index (migration 0007).
    __table_args__ = {"sqlite_with_rowid": False}

    band_key: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    article_id: Mapped[int] = mapped_column(BigId, primary_key=True)


class ClassifierModel(Base):
    """A trained topic model: its file's bytes, so workers on any host can load it.

    At most one row is active; workers check which one per batch and load a
    new version when it changes, without restarting.
    """

    __tablename__ = "classifier_models"

    #: The model's version number.
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    labels: Mapped[list[str]] = mapped_column(JSONValue)
    #: Where the labelled data came from, and where the model file was written.
    source: Mapped[str] = mapped_column(Text)
    path: Mapped[str | None] = mapped_column(Text)
    #: Examples trained on and the held-out evaluation, as ``classifier train`` printed it.
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    active: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index(
            "ux_classifier_models_active",
            "active",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )


class Rule(Base):
    """An operator's rule: a keyword or regex on some fields; tag, drop or keep on a match."""

    __tablename__ = "rules"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: The feed it applies to; NULL for every feed.
    feed_id: Mapped[int | None] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"), index=True)
    #: tag | drop | keep
    action: Mapped[str] = mapped_column(String(8))
    #: The tag a ``tag`` rule adds.
    tag: Mapped[str | None] = mapped_column(Text)
    #: keyword | regex
    kind: Mapped[str] = mapped_column(String(8))
    pattern: Mapped[str] = mapped_column(Text)
    #: Fields searched: any of title, text, author, url, tags.
    fields: Mapped[list[str]] = mapped_column(JSONValue)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Failure(Base):
    """A dead letter: work that failed for good, kept for operators to inspect and re-queue.

    One row per failed article (the article stages) or per task message that
    exhausted its retries or failed permanently; a repeat of the same open
    failure bumps ``attempts`` and ``last_seen`` instead of adding a row.
    """

    __tablename__ = "failures"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: The Celery task name, e.g. feedmill.clean.
    task: Mapped[str] = mapped_column(String(64))
    #: dispatch, fetch, parse, websub, clean, dedupe or classify.
    stage: Mapped[str] = mapped_column(String(16))
    #: What failed, as people read it and as repeats are matched: "article 12", "poll 3", "articles 1,2".
    subject: Mapped[str] = mapped_column(Text)
    article_ids: Mapped[list[int] | None] = mapped_column(JSONValue)
    poll_id: Mapped[int | None] = mapped_column(BigId)
    feed_id: Mapped[int | None] = mapped_column(BigId)
    #: A webhook or stream event that could not be delivered for FEEDMILL_DELIVERY_RETRY_FOR.
    delivery_id: Mapped[int | None] = mapped_column(BigId)
    error: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: When an operator sent it back to its stage; NULL while open.
    requeued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_failures_open", "stage", "subject", "requeued_at"),)


class ServiceChild(Base):
    """A process `feedmill run` supervises (worker, scheduler, web), one row per supervisor and child:
    its restarts and last exit, for ``feedmill status`` and ``/metrics``; ``seen_at`` is the
    supervisor's heartbeat, so a row of a supervisor that is gone can be told apart."""

    __tablename__ = "service_children"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    supervisor_pid: Mapped[int] = mapped_column(Integer)
    #: worker, scheduler or web.
    name: Mapped[str] = mapped_column(String(32))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    last_exit_code: Mapped[int | None] = mapped_column(Integer)
    last_exit_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Restarted CRASH_LOOP_RESTARTS times within CRASH_LOOP_WINDOW (workers/service.py).
    crash_loop: Mapped[bool] = mapped_column(Boolean, default=False)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("host", "supervisor_pid", "name", name="uq_service_children"),)


class Subscription(Base):
    """Where processed articles are pushed: a webhook (Standard Webhooks) or a Redis stream,
    with the filters an article must pass (all given ones; an empty list means any)."""

    __tablename__ = "subscriptions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: webhook or redis_stream.
    kind: Mapped[str] = mapped_column(String(16))
    #: The webhook's URL, or the stream's key.
    target: Mapped[str] = mapped_column(Text)
    #: The Standard Webhooks secret (``whsec_`` + base64 key); NULL for a stream.
    secret: Mapped[str | None] = mapped_column(Text)
    topics: Mapped[list[str] | None] = mapped_column(JSONValue)
    feed_ids: Mapped[list[int] | None] = mapped_column(JSONValue)
    tags: Mapped[list[str] | None] = mapped_column(JSONValue)
    #: Words that must all occur in the title or text.
    query: Mapped[str | None] = mapped_column(Text)
    #: active or paused (a paused subscription keeps its pending deliveries, sends none).
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delivery(Base):
    """One event for one subscription: its body frozen at creation (a retry sends the same
    bytes under the same ``event_id``), its attempts and when the next one is due. Pending
    deliveries live here, not in the broker, so a subscriber that is down costs rows, not memory."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"))
    article_id: Mapped[int | None] = mapped_column(ForeignKey("articles.id", ondelete="CASCADE"))
    #: article.created or article.updated.
    event_type: Mapped[str] = mapped_column(String(32))
    #: The ``webhook-id`` header: the same for every attempt of this event.
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    #: Digest of the article object sent: the same article passing again unchanged adds no event.
    digest: Mapped[str] = mapped_column(String(64))
    #: The JSON body, exactly as sent.
    body: Mapped[str] = mapped_column(Text)
    #: pending, delivered or dead.
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: A sender holds it until then (another sender skips it).
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("subscription_id", "article_id", "digest", name="uq_deliveries_event"),
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_article", "article_id"),
    )

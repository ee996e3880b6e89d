"""Feeds: the operator's feed list (added, exported, removed), the end of a poll (errors counted,
lease released, next poll decided), the publishing rate, and the WebSub subscription state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from schemas.db import insert_for
from schemas.models import Article, Failure, Feed, Poll, Rule, utcnow
from schemas.settings import Settings
from tasks.links import BadFeedUrl, feed_url_key
from tasks.schedule import (
    MIN_ENTRIES_FOR_RATE,
    WEEK,
    FeedHints,
    HttpHints,
    PollOutcome,
    SchedulePolicy,
    decide_next_poll,
)

#: How far back the publishing rate of a feed is measured.
RATE_WINDOW = timedelta(days=28)


def feed_by_url(session: Session, url: str) -> Feed | None:
    """The feed stored under exactly this URL, else the one of the same resource spelled otherwise."""
    url = url.strip()
    try:
        key = feed_url_key(url)
    except BadFeedUrl:
        key = None
    exact = Feed.url == url
    return session.scalar(select(Feed).where(or_(exact, Feed.url_key == key)).order_by(exact.desc(), Feed.id).limit(1))


def present_feeds(session: Session, urls: list[str]) -> dict[str, str]:
    """The stored URL of each of these feed URLs already present (in any spelling), by its key."""
    keys = {feed_url_key(url): url for url in urls}
    rows = session.execute(select(Feed.url, Feed.url_key).where(or_(Feed.url_key.in_(keys), Feed.url.in_(keys)))).all()
    found = {key: stored for stored, key in rows if key}
    found.update({stored: stored for stored, _key in rows if stored in keys and stored not in found})
    return found


def add_feeds(session: Session, tags_by_url: dict[str, tuple[str, ...]], websub: bool = False) -> list[str]:
    """Insert the feeds (normal URL: its OPML folders) not yet present; return the URLs added.
    ``websub`` also marks the ones present as wanting WebSub."""
    present = present_feeds(session, list(tags_by_url))
    rows = [
        {"url": key, "url_key": key, "tags": list(tags) or None, "status": "active",
         "consecutive_errors": 0, "websub_wanted": websub}
        for key, tags in tags_by_url.items() if key not in present
    ]
    insert = insert_for(session, Feed.__table__)
    added = session.scalars(
        insert.values(rows).on_conflict_do_nothing(index_elements=["url_key"]).returning(Feed.url)
    ).all() if rows else []
    if websub:
        session.execute(update(Feed).where(Feed.url.in_(list(present.values()))).values(websub_wanted=True))
    return list(added)


def feeds_for_opml(session: Session) -> list[tuple[str, str | None, str | None, list[str] | None]]:
    """Every feed's URL, title, site URL and tags, in the order they were added."""
    return [tuple(row) for row in session.execute(select(Feed.url, Feed.title, Feed.site_url, Feed.tags).order_by(Feed.id))]


def recent_polls(session: Session, feed_id: int, limit: int) -> list[Poll]:
    """The feed's last ``limit`` polls, newest first."""
    return list(session.scalars(select(Poll).where(Poll.feed_id == feed_id).order_by(Poll.id.desc()).limit(limit)))


def feeds_left_out(session: Session, feed_ids: list[int], poll_ids: list[int]) -> list[tuple[str, str]]:
    """The URL and status of each of these feeds that none of these polls is for."""
    claimed = select(Poll.feed_id).where(Poll.id.in_(poll_ids))
    return [tuple(row) for row in session.execute(
        select(Feed.url, Feed.status).where(Feed.id.in_(feed_ids), Feed.id.not_in(claimed)))]


def polls_and_rules_of(session: Session, feed_ids: list[int]) -> tuple[int, int]:
    """How many polls and feed rules these feeds have."""
    polls = session.scalar(select(func.count()).select_from(Poll).where(Poll.feed_id.in_(feed_ids)))
    rules = session.scalar(select(func.count()).select_from(Rule).where(Rule.feed_id.in_(feed_ids)))
    return polls or 0, rules or 0


def delete_feeds(session: Session, feed_ids: list[int], failure_ids: set[int]) -> None:
    """Delete the feeds and these failures; their polls, rules and tombstones go by ON DELETE CASCADE.
    Their articles must be gone first (``retention.delete_articles``)."""
    session.execute(delete(Failure).where(Failure.id.in_(failure_ids)))
    session.execute(delete(Feed).where(Feed.id.in_(feed_ids)))


def active_feed_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Feed).where(Feed.status == "active")) or 0


def finish_poll_of_feed(
    session: Session,
    settings: Settings,
    feed: Feed,
    kind: str,
    http: HttpHints,
    error: str | None = None,
) -> None:
    """A poll of ``feed`` ended (``kind``: ok, error or deferred): count errors,
    release the lease, and decide the next poll with its reason."""
    now = utcnow()
    if kind == "ok":
        feed.consecutive_errors, feed.last_error = 0, None
    elif kind == "error":
        feed.consecutive_errors += 1
        feed.last_error = error
    feed.lease_until = None
    outcome = PollOutcome(
        kind=kind,
        consecutive_errors=feed.consecutive_errors,
        entries_per_week=entries_per_week(session, feed.id, now),
        override_seconds=feed.interval_override,
        http=http,
        feed=FeedHints.from_dict(feed.schedule_hints),
    )
    decision = decide_next_poll(outcome, SchedulePolicy.from_settings(settings), now)
    feed.next_poll_at, feed.next_poll_reason = decision.next_poll_at, decision.reason


def entries_per_week(session: Session, feed_id: int, now: datetime) -> float | None:
    """The feed's publishing rate over ``RATE_WINDOW``; None while it has too few entries to tell."""
    seen_at = func.coalesce(Article.published_at, Article.created_at)
    total, recent = session.execute(
        select(func.count(), func.count().filter(seen_at >= now - RATE_WINDOW)).where(Article.feed_id == feed_id)
    ).one()
    if total < MIN_ENTRIES_FOR_RATE:
        return None
    return recent / (RATE_WINDOW.total_seconds() / WEEK)


@dataclass(frozen=True)
class WebSubSubscription:
    """A feed's WebSub subscription as the verification and push handlers need it."""

    url: str
    topic: str | None
    secret: str | None
    state: str
    wanted: bool


@dataclass(frozen=True)
class WebSubRequest:
    hub: str
    topic: str
    secret: str


def request_websub_subscriptions(
    session: Session,
    due: Callable[[str, datetime | None, datetime | None, datetime], bool],
    now: datetime,
    new_secret: Callable[[], str],
) -> list[int]:
    """Mark active feeds that want WebSub, know their hub and are ``due`` as requested; return their ids."""
    feeds = session.scalars(
        select(Feed)
        .where(Feed.websub_wanted.is_(True), Feed.status == "active", Feed.websub_hub.is_not(None))
        .with_for_update(skip_locked=True)
    ).all()
    requested = []
    for feed in feeds:
        if due(feed.websub_state, feed.websub_expires_at, feed.websub_requested_at, now):
            feed.websub_state, feed.websub_requested_at = "requested", now
            feed.websub_secret = feed.websub_secret or new_secret()
            requested.append(feed.id)
    return requested


def websub_request(session: Session, feed_id: int) -> WebSubRequest | None:
    """What to send the hub for a feed whose subscription is requested; None if it no longer is."""
    feed = session.get(Feed, feed_id)
    if feed is None or feed.websub_hub is None or feed.websub_state != "requested":
        return None
    return WebSubRequest(feed.websub_hub, feed.websub_topic or feed.url, feed.websub_secret or "")


def websub_request_failed(session: Session, feed_id: int, error: str) -> None:
    feed = session.get(Feed, feed_id, with_for_update=True)
    if feed is not None and feed.websub_state == "requested":
        feed.websub_state, feed.last_error = "failed", error


def websub_subscription(session: Session, feed_id: int, lock: bool = False) -> WebSubSubscription | None:
    feed = session.get(Feed, feed_id, with_for_update=lock)
    if feed is None:
        return None
    return WebSubSubscription(feed.url, feed.websub_topic, feed.websub_secret, feed.websub_state, feed.websub_wanted)


def set_websub_state(session: Session, feed_id: int, state: str, expires_at: datetime | None, error: str | None) -> None:
    values: dict[str, object] = {"websub_state": state, "websub_expires_at": expires_at}
    if error is not None:
        values["last_error"] = error
    session.execute(update(Feed).where(Feed.id == feed_id).values(**values))

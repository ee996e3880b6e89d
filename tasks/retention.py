"""Retention: which articles are old enough to go, and the periodic prune.

The standing policy keeps articles younger than ``FEEDMILL_RETENTION`` (or the feed's own
``feeds.retention``; ``forever`` keeps all) and always the newest ``FEEDMILL_RETENTION_KEEP``
of each feed. An article's age runs from its published time, else from when feedmill first
stored it; a published time in the future counts as first seen. ``feedmill prune --older-than``
is an operator's explicit cut: one age for every feed, and no floor. Pruned articles leave a
tombstone, so a feed that still lists them does not bring them back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from celery import shared_task

from schemas.db import session_scope
from schemas.models import RETAIN_FOREVER, utcnow
from schemas.settings import Settings, current_settings
from tasks.base import StageTask, announce_changed
from tasks.storage import retention as stored
from tasks.storage.failures import purge_failures

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    #: Articles older than this many seconds go.
    max_age: int
    #: The newest this many of the feed stay whatever their age.
    keep: int


def feed_policy(settings: Settings, feed_retention: int | None, older_than: int | None = None) -> Policy | None:
    """The policy for one feed (None: keep everything): ``older_than`` (no floor) if the operator
    gave one, else the feed's override, else FEEDMILL_RETENTION, with the floor."""
    if older_than is not None:
        return Policy(older_than, 0)
    if feed_retention is None:
        return Policy(settings.retention, settings.retention_keep) if settings.retention is not None else None
    return None if feed_retention == RETAIN_FOREVER else Policy(feed_retention, settings.retention_keep)


def age_from(published_at: datetime | None, created_at: datetime, now: datetime) -> datetime:
    """When an article's age starts: published, else first seen; a date in the future counts as first seen."""
    return published_at if published_at is not None and published_at <= now else created_at


def expired(
    aging: Sequence[tuple[int, datetime | None, datetime]], stored_count: int, cutoff: datetime, keep: int,
    now: datetime,
) -> tuple[list[int], int]:
    """Of a feed's (id, published_at, created_at) rows that may be old (a superset of those
    older than ``cutoff``) and its ``stored_count`` articles in all, the ids that go, and how many
    old ones the floor keeps: the newest ``keep`` of the feed stay whatever their age (of equal
    ages, the higher id is the newer)."""
    ages = ((age_from(published, created, now), article_id) for article_id, published, created in aging)
    old = sorted((age for age in ages if age[0] < cutoff), reverse=True)
    spared = min(len(old), max(0, keep - (stored_count - len(old))))
    return sorted(article_id for _, article_id in old[spared:]), spared


@dataclass(frozen=True)
class FeedPrune:
    feed_id: int
    url: str
    #: The age articles had to pass, in seconds (None: the feed keeps everything).
    max_age: int | None
    removed: int
    #: Old articles the floor kept.
    kept_by_floor: int


@dataclass
class PruneReport:
    feeds: list[FeedPrune]
    dry_run: bool
    #: Surviving articles re-pointed at their cluster's new canonical copy (and those copies).
    repointed: int = 0
    tombstones_expired: int = 0
    polls_deleted: int = 0
    failures_deleted: int = 0
    #: Their ids: finished ones wait in the announcing stage (``announce_changed`` sends them).
    changed: list[int] = field(default_factory=list, repr=False)

    @property
    def removed(self) -> int:
        return sum(feed.removed for feed in self.feeds)

    def to_dict(self) -> dict:
        report = asdict(self) | {"removed": self.removed}
        del report["changed"]
        return report


def run_prune(
    settings: Settings,
    *,
    older_than: int | None = None,
    feed_ids: Sequence[int] | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> PruneReport:
    """Prune articles past their feed's policy (``older_than`` seconds for all, without the floor,
    when given) and expire tombstones past FEEDMILL_TOMBSTONE_GRACE; ``dry_run`` only counts."""
    now = now or utcnow()
    with session_scope(settings, read_only=True) as session:
        feeds = stored.feeds_with_retention(session, feed_ids)
        counts = stored.article_counts(session, feed_ids)
        plans = []
        for feed in feeds:
            policy = feed_policy(settings, feed.retention, older_than)
            if policy is None:
                plans.append((FeedPrune(feed.id, feed.url, None, 0, 0), []))
                continue
            cutoff = now - timedelta(seconds=policy.max_age)
            aging = stored.aging_articles(session, feed.id, cutoff) if counts.get(feed.id) else []
            ids, spared = expired(aging, counts.get(feed.id, 0), cutoff, policy.keep, now)
            plans.append((FeedPrune(feed.id, feed.url, policy.max_age, len(ids), spared), ids))
    report = PruneReport([plan for plan, _ in plans], dry_run)
    if dry_run:
        return report
    doomed = [article_id for _, ids in plans for article_id in ids]
    _, report.changed = stored.delete_in_batches(settings, doomed, now, tombstones=True)
    report.repointed = len(report.changed)
    with session_scope(settings) as session:
        report.tombstones_expired = stored.expire_tombstones(session, now - timedelta(seconds=settings.tombstone_grace))
    return report


def run_periodic_prune(settings: Settings, now: datetime | None = None) -> PruneReport:
    """The service's prune: the standing policy, then fetch history and dead letters older than
    FEEDMILL_POLL_HISTORY (re-queued dead letters at once), then SQLite gives the space back."""
    now = now or utcnow()
    report = run_prune(settings, now=now)
    history = now - timedelta(seconds=settings.poll_history)
    report.polls_deleted = stored.purge_poll_history(settings, history)
    with session_scope(settings) as session:
        report.failures_deleted = purge_failures(session, unseen_before=history)
    stored.reclaim_space(settings)
    return report


@shared_task(base=StageTask, name="feedmill.prune")
def prune_task() -> dict:
    """Periodic (celery beat, every FEEDMILL_PRUNE_EVERY s): apply the retention policy."""
    report = run_periodic_prune(current_settings())
    announce_changed(report.changed)
    if report.removed or report.polls_deleted or report.failures_deleted:
        log.info("pruned %d article(s) of %d feed(s), %d poll(s), %d dead letter(s)", report.removed,
                 sum(1 for feed in report.feeds if feed.removed), report.polls_deleted, report.failures_deleted)
    return {"articles": report.removed, "polls": report.polls_deleted, "failures": report.failures_deleted}

"""The running service's own records: what `feedmill run` supervises (``service_children``), the
unfinished work the recovery paths re-send, and what a ``run --once`` round left failed or deferred."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from schemas.models import (
    FAILED,
    PENDING,
    POLL_DEFERRED,
    POLL_FETCHED,
    POLL_FINISHED,
    POLL_QUEUED,
    Article,
    Failure,
    Feed,
    Poll,
    ServiceChild,
    utcnow,
)
from schemas.payloads import chunked
from schemas.pipeline import ARTICLE_STAGES

#: Ids per IN list.
CHUNK = 5000
#: How often a supervisor writes its heartbeat; rows not heard from for three of these are of a
#: supervisor that is gone (killed outright) and are not shown.
HEARTBEAT_EVERY = 15.0

#: The stages whose unfinished work the database can name: polls waiting for fetch or parse,
#: articles waiting in an article stage.
RECOVERABLE_STAGES: tuple[str, ...] = ("fetch", "parse", *ARTICLE_STAGES)


# ------------------------------------------------------------------ unfinished work


def unfinished_work(
    session: Session, stages: Collection[str] = RECOVERABLE_STAGES, older_than: float | None = None,
    poll_ids: Sequence[int] | None = None,
) -> dict[str, list[int]]:
    """Ids of the work each stage has left (poll ids for fetch and parse, article ids otherwise),
    with ``older_than`` only what nothing touched for that many seconds; with ``poll_ids`` the
    fetches only of those polls."""
    cutoff = utcnow() - timedelta(seconds=older_than) if older_than is not None else None
    work: dict[str, list[int]] = {}
    for stage, status in (("fetch", POLL_QUEUED), ("parse", POLL_FETCHED)):
        if stage not in stages:
            continue
        query = select(Poll.id).where(Poll.status == status).order_by(Poll.id)
        if cutoff is not None:
            query = query.where(func.coalesce(Poll.started_at, Poll.requested_at) < cutoff)
        if stage == "fetch" and poll_ids is not None:
            query = query.where(Poll.id.in_(list(poll_ids)))
        work[stage] = list(session.scalars(query))
    article_stages = [stage for stage in ARTICLE_STAGES if stage in stages]
    if article_stages:
        query = select(Article.stage, Article.id).where(Article.status == PENDING, Article.stage.in_(article_stages))
        if cutoff is not None:
            query = query.where(Article.updated_at < cutoff)
        rows = session.execute(query.order_by(Article.id)).all()
        for stage in article_stages:
            work[stage] = [article_id for row_stage, article_id in rows if row_stage == stage]
    return work


def polls_under_way(session: Session, now: datetime) -> list[int]:
    """The latest poll queued or fetched (not yet parsed) of each feed whose lease is held: work a
    round of ``run --once`` finds under way (a ``feeds poll`` nothing has fetched yet, a round cut
    short, a service's workers) and waits for instead of skipping the feed."""
    latest = (
        select(func.max(Poll.id))
        .join(Feed, Feed.id == Poll.feed_id)
        .where(Poll.status.in_([POLL_QUEUED, POLL_FETCHED]), Feed.lease_until > now)
        .group_by(Poll.feed_id)
    )
    return sorted(session.scalars(latest))


def stages_with_work(session: Session, older_than: float) -> list[str]:
    """The recoverable stages that have work nothing touched for ``older_than`` s (one cheap probe each)."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    found = []
    for stage, status in (("fetch", POLL_QUEUED), ("parse", POLL_FETCHED)):
        probe = select(Poll.id).where(Poll.status == status, func.coalesce(Poll.started_at, Poll.requested_at) < cutoff)
        if session.scalar(probe.limit(1)) is not None:
            found.append(stage)
    for stage in ARTICLE_STAGES:
        probe = select(Article.id).where(Article.status == PENDING, Article.stage == stage, Article.updated_at < cutoff)
        if session.scalar(probe.limit(1)) is not None:
            found.append(stage)
    return found


# ------------------------------------------------------------------ a run --once round


@dataclass(frozen=True)
class DeadLetters:
    """What failed for good since a round began: the polls and the articles still pending."""

    poll_errors: dict[int, str]
    article_ids: frozenset[int]


def dead_letters_since(session: Session, since: datetime) -> DeadLetters:
    """Open failures seen since ``since``: by poll (fetch, parse) and the pending articles of
    failed article batches (failed single articles are already ``failed`` in their row)."""
    rows = session.execute(
        select(Failure.poll_id, Failure.article_ids, Failure.error)
        .where(Failure.requeued_at.is_(None), Failure.last_seen >= since)
    ).all()
    polls = {poll_id: error for poll_id, _, error in rows if poll_id is not None}
    batch_ids = {int(i) for _, ids, _ in rows if ids for i in ids}
    pending = set()
    if batch_ids:
        pending = set(session.scalars(
            select(Article.id).where(Article.id.in_(sorted(batch_ids)), Article.status == PENDING)
        ))
    return DeadLetters(polls, frozenset(pending))


def pending_articles_by_stage(session: Session, excluding: Collection[int] = ()) -> dict[str, int]:
    """Articles pending in each article stage, those in ``excluding`` (dead letters) left out."""
    query = (
        select(Article.stage, func.count())
        .where(Article.status == PENDING, Article.stage.in_(ARTICLE_STAGES))
        .group_by(Article.stage)
    )
    if excluding:
        query = query.where(Article.id.not_in(sorted(excluding)))
    counts = dict(session.execute(query).all())
    return {stage: counts.get(stage, 0) for stage in ARTICLE_STAGES}


def any_pending_article(session: Session, excluding: Collection[int] = ()) -> bool:
    query = select(Article.id).where(Article.status == PENDING, Article.stage.in_(ARTICLE_STAGES))
    if excluding:
        query = query.where(Article.id.not_in(sorted(excluding)))
    return session.scalar(query.limit(1)) is not None


def release_leases(session: Session, poll_ids: Sequence[int], unfinished_only: bool = True) -> None:
    """Free the feeds of these polls (of those not finished, with ``unfinished_only``) for the next claim."""
    for chunk in chunked(poll_ids, CHUNK):
        polls = select(Poll.feed_id).where(Poll.id.in_(chunk))
        if unfinished_only:
            polls = polls.where(Poll.status.not_in(POLL_FINISHED))
        session.execute(update(Feed).where(Feed.id.in_(polls.scalar_subquery())).values(lease_until=None))


# ------------------------------------------------------------------ supervised processes


def record_child(session: Session, host: str, supervisor_pid: int, name: str, pid: int | None, *,
                 exit_code: int | None = None, restarts: int = 0, crash_loop: bool = False) -> None:
    """Write a supervised child's state (a start, a restart after ``exit_code``)."""
    now = utcnow()
    child = session.scalar(select(ServiceChild).where(
        ServiceChild.host == host, ServiceChild.supervisor_pid == supervisor_pid, ServiceChild.name == name))
    if child is None:
        child = ServiceChild(host=host, supervisor_pid=supervisor_pid, name=name, started_at=now, restarts=0)
        session.add(child)
    child.pid, child.restarts, child.crash_loop, child.seen_at = pid, restarts, crash_loop, now
    if exit_code is not None:
        child.last_exit_code, child.last_exit_at = exit_code, now


def heartbeat(session: Session, host: str, supervisor_pid: int) -> None:
    session.execute(update(ServiceChild).where(
        ServiceChild.host == host, ServiceChild.supervisor_pid == supervisor_pid).values(seen_at=utcnow()))


def forget_supervisor(session: Session, host: str, supervisor_pid: int) -> None:
    """A supervisor that stopped cleanly takes its rows with it."""
    session.execute(delete(ServiceChild).where(
        ServiceChild.host == host, ServiceChild.supervisor_pid == supervisor_pid))


def live_children(session: Session, seen_within: float = 3 * HEARTBEAT_EVERY) -> list[dict[str, Any]]:
    """Children of supervisors heard from within ``seen_within`` s, by host, supervisor and name."""
    cutoff = utcnow() - timedelta(seconds=seen_within)
    children = session.scalars(
        select(ServiceChild).where(ServiceChild.seen_at >= cutoff)
        .order_by(ServiceChild.host, ServiceChild.supervisor_pid, ServiceChild.name)
    )
    return [
        {"host": c.host, "supervisor_pid": c.supervisor_pid, "name": c.name, "pid": c.pid,
         "started_at": c.started_at, "restarts": c.restarts, "last_exit_code": c.last_exit_code,
         "last_exit_at": c.last_exit_at, "crash_loop": c.crash_loop}
        for c in children
    ]


def finished_polls(session: Session, poll_ids: Sequence[int], also: Collection[int] = ()) -> int:
    """How many of these polls are finished, counting those in ``also`` (dead letters) as finished."""
    finished = 0
    for chunk in chunked(poll_ids, CHUNK):
        done = Poll.status.in_(POLL_FINISHED)
        if also:
            done = or_(done, Poll.id.in_(sorted(set(chunk) & set(also))))
        finished += session.scalar(select(func.count()).select_from(Poll).where(Poll.id.in_(chunk), done)) or 0
    return finished


def round_polls(session: Session, poll_ids: Sequence[int]) -> list[Any]:
    """Each poll of a round with its feed's URL and next poll: id, url, status, status_code,
    new_entries, updated_entries, error, next_poll_at; by URL."""
    rows = []
    for chunk in chunked(poll_ids, CHUNK):
        rows += session.execute(
            select(Poll.id, Feed.url, Poll.status, Poll.status_code, Poll.new_entries, Poll.updated_entries,
                   Poll.error, Feed.next_poll_at)
            .join(Feed, Feed.id == Poll.feed_id).where(Poll.id.in_(chunk))
        ).all()
    return sorted(rows, key=lambda row: row.url)


def round_articles(session: Session, poll_ids: Sequence[int]) -> list[Any]:
    """(status, is_duplicate, count) of the articles of a round's polls."""
    rows: list[Any] = []
    for chunk in chunked(poll_ids, CHUNK):
        rows += session.execute(
            select(Article.status, Article.duplicate_of.is_not(None), func.count())
            .where(Article.poll_id.in_(chunk))
            .group_by(Article.status, Article.duplicate_of.is_not(None))
        ).all()
    return rows


def failed_articles(session: Session, poll_ids: Sequence[int], also: Collection[int] = ()) -> list[Any]:
    """The failed articles of a round's polls, and the articles in ``also``: id, url of the feed,
    stage, error; by id."""
    rows: list[Any] = []
    columns = (Article.id, Feed.url, Article.stage, Article.error)
    for chunk in chunked(poll_ids, CHUNK):
        rows += session.execute(select(*columns).join(Feed, Feed.id == Article.feed_id)
                                .where(Article.poll_id.in_(chunk), Article.status == FAILED)).all()
    for chunk in chunked(sorted(also), CHUNK):
        rows += session.execute(select(*columns).join(Feed, Feed.id == Article.feed_id)
                                .where(Article.id.in_(chunk))).all()
    return sorted(rows, key=lambda row: row.id)

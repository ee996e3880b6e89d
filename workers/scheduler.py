"""The scheduler: claim feeds that are due and enqueue one fetch per feed.

A claim sets the feed's lease and creates its poll row in one transaction
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's write lock serialises
claims), so several schedulers never fetch one feed twice at once, and a
lease that expires frees a feed whose worker died.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from celery import Celery, current_app, shared_task

from schemas.db import session_scope
from schemas.payloads import PollRef
from schemas.pipeline import ARTICLE_STAGES, stage_named, stage_of_task
from schemas.settings import Settings, current_settings
from tasks.base import StageTask, send, send_articles
from tasks.storage.polls import claim_due_feeds
from tasks.storage.service import stages_with_work, unfinished_work
from tasks.websub import feeds_to_subscribe
from workers.status import queue_depths

log = logging.getLogger(__name__)

#: Most feeds one dispatch claims; the next dispatch takes the rest.
DISPATCH_LIMIT = 500
#: Work untouched this long, of a stage the broker holds no message for, lost its message.
LOST_AFTER = 10.0
#: Seconds to wait for the workers' answers when asking what they hold.
INSPECT_TIMEOUT = 0.5


def claim_feeds(
    settings: Settings,
    *,
    due_only: bool = True,
    feed_ids: Sequence[int] | None = None,
    limit: int = DISPATCH_LIMIT,
) -> list[int]:
    """Lease active feeds not being fetched (due ones, unless ``due_only`` is off); return new poll ids."""
    with session_scope(settings) as session:
        return claim_due_feeds(session, settings.lease_seconds, due_only=due_only, feed_ids=feed_ids, limit=limit)


def enqueue_fetches(poll_ids: Sequence[int]) -> None:
    for poll_id in poll_ids:
        send("fetch", PollRef(poll_id).to_message())


def requeue_unfinished(settings: Settings, older_than: float | None = None) -> dict[str, int]:
    """Enqueue every article still pending in a stage and every unparsed body,
    or with ``older_than`` (seconds) only those untouched for that long (the sweeper).

    Stages are idempotent, so re-sending work that is also still queued
    costs a little time and changes nothing.
    """
    with session_scope(settings) as session:
        work = unfinished_work(session, ("parse", *ARTICLE_STAGES), older_than)
    return resend(work)


def resend(work: dict[str, list[int]]) -> dict[str, int]:
    """Send each stage's unfinished work (``tasks.storage.service.unfinished_work``) to it again."""
    for stage, ids in work.items():
        if stage in ARTICLE_STAGES:
            send_articles(stage, ids)
        else:
            for poll_id in ids:
                send(stage, PollRef(poll_id).to_message())
    return {stage: len(ids) for stage, ids in work.items()}


def held_stages(app: Celery, workers: Sequence[str] = ()) -> set[str]:
    """Stages of the tasks live workers hold: running, reserved (prefetched) or waiting out a countdown.

    ``workers``: ask only these (by node name), and stop waiting as soon as all have answered."""
    if workers:
        inspect = app.control.inspect(timeout=INSPECT_TIMEOUT, destination=list(workers), limit=len(workers))
    else:
        inspect = app.control.inspect(timeout=INSPECT_TIMEOUT)
    held = set()
    for replies in (inspect.active(), inspect.reserved(), inspect.scheduled()):
        for requests in (replies or {}).values():
            for request in requests:
                request = request.get("request", request)  # scheduled() wraps each request
                held.add(stage_of_task(request.get("name") or ""))
    return held


def recover_lost(settings: Settings, app: Celery, older_than: float = LOST_AFTER) -> dict[str, int]:
    """Re-send work whose message is gone: work nothing touched for ``older_than`` s, of a stage
    whose queue is empty in the broker and none of whose tasks a live worker holds.

    That is what a broker restarted without persistence, a flush or a worker killed with its
    messages (invisible in Redis for the visibility timeout) leave behind; the database names the
    work, so it is sent again within one look instead of after the sweeper's FEEDMILL_STUCK_AFTER
    or a feed's lease. Work merely waiting in a long queue, or held by a worker, is left alone.
    """
    with session_scope(settings) as session:
        candidates = stages_with_work(session, older_than)
    if not candidates:
        return {}
    depths = queue_depths(settings)
    quiet = [stage for stage in candidates if depths.get(stage_named(stage).queue, 0) == 0]
    if quiet:
        held = held_stages(app)
        quiet = [stage for stage in quiet if stage not in held]
    if not quiet:
        return {}
    with session_scope(settings) as session:
        work = unfinished_work(session, quiet, older_than)
    counts = resend(work)
    log.warning("re-sent work whose messages were lost: %s", counts)
    return counts


@shared_task(base=StageTask, name="feedmill.dispatch")
def dispatch_task() -> int:
    """Periodic (celery beat): claim due feeds, enqueue their fetches and WebSub (re)subscriptions."""
    settings = current_settings()
    poll_ids = claim_feeds(settings)
    enqueue_fetches(poll_ids)
    for feed_id in feeds_to_subscribe(settings):
        send("websub", feed_id)
    return len(poll_ids)


@shared_task(base=StageTask, name="feedmill.recover")
def recover_task() -> dict[str, int]:
    """Periodic (celery beat, every RECOVER_EVERY s): re-send work whose messages vanished."""
    return recover_lost(current_settings(), current_app)


@shared_task(base=StageTask, name="feedmill.sweep")
def sweep_task() -> dict[str, int]:
    """Periodic (celery beat): re-enqueue work stuck longer than FEEDMILL_STUCK_AFTER
    (worker killed, message lost, broker flushed), so the database, not the broker, is the guarantee."""
    settings = current_settings()
    counts = requeue_unfinished(settings, older_than=settings.stuck_after)
    if any(counts.values()):
        log.warning("sweeper re-enqueued stuck work: %s", counts)
    return counts

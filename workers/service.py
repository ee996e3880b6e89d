"""Running feedmill on one machine: worker and scheduler processes, and ``run --once``.

``run`` and ``run --once`` start real Celery worker processes (whatever the
broker) unless told that workers run elsewhere. ``run_once`` polls every
active feed, then waits on the database, not the broker, until every poll
has finished and no article is left pending in any stage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from schemas.db import session_scope
from schemas.models import (
    FAILED,
    PENDING,
    POLL_FINISHED,
    POLL_QUEUED,
    Article,
    Feed,
    Poll,
)
from schemas.payloads import chunked
from schemas.pipeline import ARTICLE_STAGES, QUEUES
from schemas.settings import Settings
from workers.scheduler import claim_feeds, enqueue_fetches, requeue_unfinished

WORKER_STOP_GRACE = 30.0
#: ``run --once`` re-sends unfinished work when nothing has moved for this long.
STALL_SECONDS = 60.0
#: How often ``run --once`` checks the database for progress: a round ends at most this late.
#: A check is a count of the round's unfinished polls and whether any article is pending, in a
#: read-only transaction, which on SQLite does not take the workers' write lock.
PROGRESS_EVERY = 0.05
#: How often a check also counts the pending articles (the progress line, stall detection). In
#: between, a check looks at the articles only once all the round's polls are finished, and then
#: only asks whether any is left. Counting them all at every check took 1.3 to 2.3 ms on PostgreSQL
#: during a round of 10,000 articles (index entries of rows that later moved on are visited too),
#: 5 to 15% of the database's time; the count of unfinished polls takes 0.1 ms.
PENDING_COUNT_EVERY = 1.0


def celery_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", *args]


def worker_command(queues: tuple[str, ...] = QUEUES, concurrency: int | None = None, loglevel: str = "INFO") -> list[str]:
    command = celery_command("worker", "--loglevel", loglevel, "-Q", ",".join(queues))
    if concurrency:
        command += ["--concurrency", str(concurrency)]
    return command


def scheduler_command(settings: Settings, loglevel: str = "INFO") -> list[str]:
    return celery_command(
        "beat", "--loglevel", loglevel, "--schedule", str(settings.home / "celerybeat-schedule")
    )


def start_process(command: list[str], log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a child process, its output to ``log_path`` (or inherited)."""
    if log_path is None:
        return subprocess.Popen(command)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def stop_process(process: subprocess.Popen[bytes], grace: float = WORKER_STOP_GRACE) -> None:
    """SIGTERM (Celery's warm shutdown: finish in-flight work), then SIGKILL after ``grace``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class PollOutcome:
    feed_url: str
    status: str
    status_code: int | None
    new_entries: int
    updated_entries: int
    error: str | None


@dataclass
class RoundSummary:
    """What one ``run --once`` did, for people (``lines``) and scripts (``as_dict``)."""

    polls: list[PollOutcome] = field(default_factory=list)
    skipped_feeds: int = 0
    requeued: dict[str, int] = field(default_factory=dict)
    articles_new: int = 0
    articles_updated: int = 0
    articles_done: int = 0
    articles_failed: int = 0
    duplicates: int = 0
    seconds: float = 0.0

    @property
    def feed_errors(self) -> list[PollOutcome]:
        return [p for p in self.polls if p.status == "error"]

    def as_dict(self) -> dict[str, object]:
        return {
            "feeds_polled": len(self.polls),
            "feeds_skipped": self.skipped_feeds,
            "feed_errors": len(self.feed_errors),
            "articles_new": self.articles_new,
            "articles_updated": self.articles_updated,
            "articles_done": self.articles_done,
            "articles_failed": self.articles_failed,
            "duplicates": self.duplicates,
            "seconds": round(self.seconds, 3),
            "requeued": self.requeued,
            "polls": [p.__dict__ for p in self.polls],
        }


@dataclass
class Progress:
    polls_total: int
    polls_finished: int
    articles_pending: int


class RoundTimeout(Exception):
    pass


class WorkersDied(Exception):
    pass


def run_once(
    settings: Settings,
    *,
    timeout: float,
    workers: subprocess.Popen[bytes] | None,
    on_progress: Callable[[Progress], None] = lambda progress: None,
) -> RoundSummary:
    """Poll every active feed once and wait until all its work has passed every stage."""
    started = time.monotonic()
    summary = RoundSummary(requeued=requeue_unfinished(settings))
    poll_ids = claim_feeds(settings, due_only=False, limit=1_000_000)
    with session_scope(settings) as session:
        active = session.scalar(select(func.count()).select_from(Feed).where(Feed.status == "active")) or 0
    summary.skipped_feeds = active - len(poll_ids)
    enqueue_fetches(poll_ids)
    last_change, last_seen = time.monotonic(), None
    progress, last_count = None, 0.0
    while True:
        count = progress is None or time.monotonic() - last_count >= PENDING_COUNT_EVERY
        progress = _progress(settings, poll_ids, None if count else progress)
        if count:
            last_count = time.monotonic()
        on_progress(progress)
        if progress.polls_finished == progress.polls_total and progress.articles_pending == 0:
            break
        if progress != last_seen:
            last_change, last_seen = time.monotonic(), progress
        elif time.monotonic() - last_change > STALL_SECONDS:
            # Nothing moved for a while: a message may have been lost (a worker killed after
            # taking it). The database knows what is unfinished; send it again (idempotent).
            _resend_stalled(settings, poll_ids)
            last_change = time.monotonic()
        if workers is not None and workers.poll() is not None:
            raise WorkersDied(f"worker processes exited with code {workers.returncode}")
        if time.monotonic() - started > timeout:
            progress = _progress(settings, poll_ids)
            raise RoundTimeout(
                f"timed out after {timeout:g} s: {progress.polls_total - progress.polls_finished} feeds "
                f"and {progress.articles_pending} articles unfinished (are workers running?)"
            )
        time.sleep(PROGRESS_EVERY)
    _summarize(settings, poll_ids, summary)
    summary.seconds = time.monotonic() - started
    return summary


def _resend_stalled(settings: Settings, poll_ids: list[int]) -> None:
    requeue_unfinished(settings, older_than=STALL_SECONDS)
    with session_scope(settings) as session:
        for chunk in chunked(poll_ids, 5000):
            enqueue_fetches(list(session.scalars(select(Poll.id).where(Poll.id.in_(chunk), Poll.status == POLL_QUEUED))))


def _progress(settings: Settings, poll_ids: list[int], last: Progress | None = None) -> Progress:
    """The round's progress; with ``last``, the pending articles are not counted again.

    The count is then ``last``'s while some of the round's polls are unfinished (the round cannot
    end yet, and their articles are still coming), else it is only asked whether any article is
    left: ``last``'s count (at least 1) if so, 0 if not. So the round ends as soon as before.
    """
    with session_scope(settings, read_only=True) as session:
        finished = 0
        for chunk_start in range(0, len(poll_ids), 5000):
            chunk = poll_ids[chunk_start : chunk_start + 5000]
            finished += session.scalar(
                select(func.count()).select_from(Poll).where(Poll.id.in_(chunk), Poll.status.in_(POLL_FINISHED))
            ) or 0
        # ``stage IN (...)`` is a range of the (stage, status) index, where ``stage != 'done'`` is not.
        unfinished = (Article.status == PENDING, Article.stage.in_(ARTICLE_STAGES))
        if last is None:
            pending = session.scalar(select(func.count()).select_from(Article).where(*unfinished)) or 0
        elif finished < len(poll_ids):
            pending = last.articles_pending
        elif session.scalar(select(Article.id).where(*unfinished).limit(1)) is None:
            pending = 0
        else:
            pending = max(last.articles_pending, 1)
    return Progress(len(poll_ids), finished, pending)


def _summarize(settings: Settings, poll_ids: list[int], summary: RoundSummary) -> None:
    with session_scope(settings) as session:
        for chunk_start in range(0, len(poll_ids), 5000):
            chunk = poll_ids[chunk_start : chunk_start + 5000]
            rows = session.execute(
                select(Feed.url, Poll.status, Poll.status_code, Poll.new_entries, Poll.updated_entries, Poll.error)
                .join(Feed, Feed.id == Poll.feed_id)
                .where(Poll.id.in_(chunk))
                .order_by(Feed.url)
            ).all()
            summary.polls.extend(PollOutcome(*row) for row in rows)
            articles = session.execute(
                select(Article.status, Article.duplicate_of.is_not(None), func.count())
                .where(Article.poll_id.in_(chunk))
                .group_by(Article.status, Article.duplicate_of.is_not(None))
            ).all()
            for status, is_duplicate, count in articles:
                if status == FAILED:
                    summary.articles_failed += count
                else:
                    summary.articles_done += count
                if is_duplicate:
                    summary.duplicates += count
    summary.articles_new = sum(p.new_entries for p in summary.polls)
    summary.articles_updated = sum(p.updated_entries for p in summary.polls)


def worker_log_path(settings: Settings) -> Path:
    return settings.home / "logs" / f"worker-{os.getpid()}.log"

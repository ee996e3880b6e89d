"""Running feedmill on one machine: worker and scheduler processes, and ``run --once``.

``run`` and ``run --once`` start real Celery worker processes (whatever the
broker) unless told that workers run elsewhere. ``run_once`` polls every
active feed, then waits on the database, not the broker, until every poll
has finished and no article is left pending in any stage.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from billiard.util import set_pdeathsig
from celery import current_app
from sqlalchemy.orm import Session

from schemas.db import session_scope
from schemas.models import (
    FAILED,
    PENDING,
    POLL_DEFERRED,
    POLL_FETCHED,
    POLL_NOT_MODIFIED,
    POLL_QUEUED,
    utcnow,
)
from schemas.pipeline import QUEUES
from schemas.settings import Settings
from tasks.base import send
from tasks.storage import deliveries
from tasks.storage.articles import pages_waiting
from tasks.storage import service as service_storage
from tasks.storage.feeds import active_feed_count
from workers.scheduler import claim_feeds, enqueue_fetches, recover_lost, requeue_unfinished

log = logging.getLogger("feedmill.run")

WORKER_STOP_GRACE = 30.0
#: A child that exits is started again after BACKOFF_START s, doubling with each restart within
#: CRASH_LOOP_WINDOW, at most BACKOFF_MAX s.
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
#: This many restarts of one child within CRASH_LOOP_WINDOW s is a crash loop, reported loudly.
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_WINDOW = 60.0
#: ``run --once`` looks for lost messages when nothing has moved for this long.
STALL_SECONDS = 10.0
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


def worker_command(queues: tuple[str, ...] = QUEUES, concurrency: int | None = None, loglevel: str = "INFO",
                   node_name: str | None = None) -> list[str]:
    # Without gossip and mingle: neither is used here, mingle costs a second at every start, and
    # gossip's event consumer is where kombu's reconnect failures after a broker restart were seen.
    command = celery_command("worker", "--loglevel", loglevel, "-Q", ",".join(queues), "--without-gossip",
                             "--without-mingle")
    if concurrency:
        command += ["--concurrency", str(concurrency)]
    if node_name:
        command += ["--hostname", node_name]
    return command


def once_worker_name() -> str:
    """The node name of ``run --once``'s own worker: this process's, so that it can be asked alone."""
    return f"once-{os.getpid()}@{socket.gethostname()}"


def scheduler_command(loglevel: str = "INFO") -> list[str]:
    """celery beat; its schedule lives in memory (``beat_scheduler``), so it writes no file."""
    return celery_command("beat", "--loglevel", loglevel)


def web_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "workers", "web", "--host", host, "--port", str(port)]


def _die_with_parent(parent_pid: int) -> None:
    """In a child before exec: SIGTERM (a warm shutdown) when the supervisor dies, even by SIGKILL."""
    try:
        set_pdeathsig(signal.SIGTERM)
    except OSError:
        return  # not Linux: the process group is all that ties the child to the supervisor
    if os.getppid() != parent_pid:  # the supervisor died before the line above
        os._exit(1)


def start_process(command: list[str], log_path: Path | None = None, *, tied: bool = False) -> subprocess.Popen[bytes]:
    """Start a child process, its output to ``log_path`` (or inherited); ``tied``: it gets
    SIGTERM when this process dies (PR_SET_PDEATHSIG, Linux). Children stay in this process's
    group, so ``kill -- -PGID`` and a unit manager reach them too.

    PR_SET_PDEATHSIG fires when the thread that forked the child ends: start tied children from
    the main thread.
    """
    parent = os.getpid()
    preexec = (lambda: _die_with_parent(parent)) if tied else None
    if log_path is None:
        return subprocess.Popen(command, preexec_fn=preexec)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec)


def stop_process(process: subprocess.Popen[bytes], grace: float = WORKER_STOP_GRACE) -> None:
    """SIGTERM (Celery's warm shutdown: finish in-flight work), then SIGKILL after ``grace``."""
    stop_processes([process], grace)


def stop_processes(processes: list[subprocess.Popen[bytes]], grace: float = WORKER_STOP_GRACE) -> None:
    """SIGTERM every process at once, wait up to ``grace`` for all, SIGKILL what is left."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------ the supervisor


def restart_delay(recent_restarts: int) -> float:
    """Seconds before restarting a child that has been restarted ``recent_restarts`` times (this one
    included) within CRASH_LOOP_WINDOW: BACKOFF_START, doubling, at most BACKOFF_MAX."""
    return min(BACKOFF_START * 2 ** max(recent_restarts - 1, 0), BACKOFF_MAX)


def in_crash_loop(recent_restarts: int) -> bool:
    return recent_restarts >= CRASH_LOOP_RESTARTS


@dataclass
class Child:
    """One supervised process: what to run, the running process, and its restart history."""

    name: str
    command: list[str]
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    #: Monotonic times of the restarts within CRASH_LOOP_WINDOW.
    recent: list[float] = field(default_factory=list)
    #: When a child that exited is started again (monotonic), None while it runs.
    restart_at: float | None = None
    last_exit_code: int | None = None


class Supervisor:
    """Keeps its children running: a child that exits is started again after a backoff, each
    restart logged and written to ``service_children`` (``feedmill status``, ``/metrics``); five
    restarts of one child within a minute are reported as a crash loop, and the backoff keeps
    growing instead of spinning. ``check()`` does one round of that; the caller loops."""

    def __init__(self, settings: Settings, children: list[Child], *, record: bool = True) -> None:
        self.settings = settings
        self.children = children
        self.record = record
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._last_heartbeat = 0.0
        self._record_failed = False

    def start(self) -> None:
        for child in self.children:
            self._start(child)

    def _start(self, child: Child) -> None:
        child.process = start_process(child.command, child.log_path, tied=True)
        child.restart_at = None
        self._write(child)

    def check(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is None and child.process is not None and child.process.poll() is not None:
                self._exited(child, now)
            if child.restart_at is not None and now >= child.restart_at:
                log.info("restarting %s (restart %d)", child.name, child.restarts)
                self._start(child)
        if self.record and now - self._last_heartbeat >= service_storage.HEARTBEAT_EVERY:
            self._last_heartbeat = now
            self._store(lambda session: service_storage.heartbeat(session, self.host, self.pid))

    def _exited(self, child: Child, now: float) -> None:
        assert child.process is not None
        child.last_exit_code = child.process.returncode
        child.restarts += 1
        child.recent = [t for t in child.recent if now - t < CRASH_LOOP_WINDOW] + [now]
        delay = restart_delay(len(child.recent))
        child.restart_at = now + delay
        if in_crash_loop(len(child.recent)):
            log.error(
                "CRASH LOOP: %s exited %d times within %.0f s (last exit code %s%s); retrying in %.1f s",
                child.name, len(child.recent), CRASH_LOOP_WINDOW, child.last_exit_code,
                f"; its log: {child.log_path}" if child.log_path else "", delay,
            )
        else:
            log.warning("%s (pid %d) exited with code %s; restarting in %.1f s (restart %d)",
                        child.name, child.process.pid, child.last_exit_code, delay, child.restarts)
        self._write(child)

    def _write(self, child: Child) -> None:
        if not self.record:
            return
        running = child.process is not None and child.restart_at is None
        self._store(lambda session: service_storage.record_child(
            session, self.host, self.pid, child.name, child.process.pid if running else None,
            exit_code=child.last_exit_code if not running else None, restarts=child.restarts,
            crash_loop=in_crash_loop(len(child.recent)),
        ))

    def _store(self, write: Callable[[Session], None]) -> None:
        """Write the supervisor's state; a database that is away costs a log line, never the service."""
        try:
            with session_scope(self.settings) as session:
                write(session)
        except Exception as exc:  # noqa: BLE001 - the service outlives its bookkeeping
            if not self._record_failed:
                log.warning("could not record the service's state (%s: %s)", type(exc).__name__,
                            str(exc).splitlines()[0] if str(exc) else "")
            self._record_failed = True
        else:
            self._record_failed = False

    def stop(self, grace: float = WORKER_STOP_GRACE, idle: bool = False) -> None:
        """Warm shutdown of every child at once; SIGKILL after ``grace``; forget this supervisor's rows.

        ``idle``: the children hold no task, so there is nothing for a warm shutdown to finish, and
        they are killed at once (Celery's warm shutdown of an idle worker takes 2 s on Redis and
        6.5 s on the embedded broker: its consumer loop's 2 s poll, then the pool's threads and
        timer, each joined on a 1 s tick). Their pool children die with them (Celery sets
        PR_SET_PDEATHSIG on them). A message taken in the instant between the check and the kill is
        not lost: Redis gives an unacknowledged message back after its visibility timeout, and
        work the database still sees unfinished is sent again (``feedmill.recover``)."""
        processes = [child.process for child in self.children if child.process is not None]
        if idle:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                process.wait()
        stop_processes(processes, grace)
        if self.record:
            self._store(lambda session: service_storage.forget_supervisor(session, self.host, self.pid))

    def describe(self) -> str:
        """Restarts so far, for error messages: "worker restarted 3 times (last exit code -9)"."""
        return "; ".join(f"{child.name} restarted {child.restarts} time(s) (last exit code {child.last_exit_code})"
                         for child in self.children if child.restarts)


@dataclass
class PollOutcome:
    feed_url: str
    #: parsed, not_modified, error, deferred, or dead_letter (a fetch or parse that failed for good).
    status: str
    status_code: int | None
    new_entries: int
    updated_entries: int
    error: str | None
    #: When the feed is polled next (for a deferred feed: the attempt the publisher asked for).
    next_attempt: str | None = None


@dataclass
class FailedArticle:
    id: int
    feed_url: str
    stage: str
    error: str | None


#: Exit codes of ``run --once``: all done; some feeds or articles failed; timed out with work unfinished.
EXIT_DONE, EXIT_FAILED, EXIT_TIMED_OUT = 0, 1, 3


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
    failed_articles: list[FailedArticle] = field(default_factory=list)
    duplicates: int = 0
    #: The round's events by status (delivered, pending, dead): pending ones wait for a retry.
    events: dict[str, int] = field(default_factory=dict)
    #: Articles that went on with their summary, their linked page still wanted (a busy host).
    pages_due: int = 0
    seconds: float = 0.0
    #: Set when the round timed out: what was still unfinished.
    timed_out: bool = False
    unfinished_articles: dict[str, int] = field(default_factory=dict)

    @property
    def feed_errors(self) -> list[PollOutcome]:
        return [p for p in self.polls if p.status in ("error", "dead_letter")]

    def of_status(self, *statuses: str) -> list[PollOutcome]:
        return [p for p in self.polls if p.status in statuses]

    @property
    def exit_code(self) -> int:
        if self.timed_out:
            return EXIT_TIMED_OUT
        return EXIT_FAILED if self.feed_errors or self.articles_failed else EXIT_DONE

    def as_dict(self) -> dict[str, object]:
        return {
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "feeds_polled": len(self.polls),
            "feeds_skipped": self.skipped_feeds,
            "feed_errors": len(self.feed_errors),
            "feeds_unchanged": len(self.of_status(POLL_NOT_MODIFIED)),
            "feeds_deferred": len(self.of_status(POLL_DEFERRED)),
            "articles_new": self.articles_new,
            "articles_updated": self.articles_updated,
            "articles_done": self.articles_done,
            "articles_failed": self.articles_failed,
            "duplicates": self.duplicates,
            "events": self.events,
            "pages_due": self.pages_due,
            "seconds": round(self.seconds, 3),
            "requeued": self.requeued,
            "failed_feeds": [{"url": p.feed_url, "status_code": p.status_code, "error": p.error} for p in self.feed_errors],
            "deferred_feeds": [{"url": p.feed_url, "status_code": p.status_code, "next_attempt": p.next_attempt}
                               for p in self.of_status(POLL_DEFERRED)],
            "unfinished_feeds": [{"url": p.feed_url, "waiting_for": p.status} for p in self.of_status(*UNFINISHED)],
            "unfinished_articles": self.unfinished_articles,
            "failed_articles": [a.__dict__ for a in self.failed_articles],
            "polls": [p.__dict__ for p in self.polls],
        }


#: A poll's status while it waits, as the stage it waits for.
UNFINISHED = {POLL_QUEUED: "fetch", POLL_FETCHED: "parse"}


@dataclass
class Progress:
    polls_total: int
    #: Polls finished, dead letters included.
    polls_finished: int
    #: Articles pending in a stage, dead letters left out.
    articles_pending: int
    #: The pending articles by stage, when they were counted.
    by_stage: dict[str, int] | None = None
    #: Events of the round not tried yet (``deliveries.untried_events_since``), once no article is left.
    events_untried: int = 0

    @property
    def done(self) -> bool:
        return self.polls_finished == self.polls_total and self.articles_pending == 0 and self.events_untried == 0


class RoundTimeout(Exception):
    def __init__(self, message: str, summary: RoundSummary) -> None:
        super().__init__(message)
        self.summary = summary


def run_once(
    settings: Settings,
    *,
    timeout: float,
    supervisor: Supervisor | None = None,
    on_progress: Callable[[Progress], None] = lambda progress: None,
) -> RoundSummary:
    """Poll every active feed once and wait until nothing more can progress: every poll finished
    and every article through every stage, a dead letter (a message that failed for good) counting
    as finished with a failure. A poll already under way (``feeds poll``, a round cut short, a
    service's) is waited for instead of a new one. ``supervisor`` (the round's own workers) is
    kept running meanwhile. Raises RoundTimeout, with the summary so far, after ``timeout`` s."""
    started, round_start = time.monotonic(), utcnow()
    summary = RoundSummary(requeued=requeue_unfinished(settings))
    poll_ids = claim_feeds(settings, due_only=False, limit=1_000_000)
    with session_scope(settings) as session:
        active = active_feed_count(session)
        claimed = set(poll_ids)
        under_way = [poll_id for poll_id in service_storage.polls_under_way(session, round_start) if poll_id not in claimed]
    summary.skipped_feeds = max(0, active - len(poll_ids) - len(under_way))
    enqueue_fetches(poll_ids)
    poll_ids = sorted(poll_ids + under_way)
    round_ = Round(settings, poll_ids, round_start)
    last_change, last_seen = time.monotonic(), None
    try:
        while True:
            progress = round_.progress()
            on_progress(progress)
            if progress.done:
                break
            seen = (progress.polls_finished, progress.articles_pending, progress.events_untried)
            if seen != last_seen:
                last_change, last_seen = time.monotonic(), seen
            elif time.monotonic() - last_change > STALL_SECONDS:
                # Nothing moved for a while: a message may be lost (a worker killed after taking
                # it, a broker restarted). Re-send what the broker and the workers no longer hold,
                # and a send for every subscription with events due (what beat's deliver_due does).
                recover_lost(settings, current_app, older_than=STALL_SECONDS)
                if progress.events_untried:
                    send("deliver_due")
                last_change = time.monotonic()
            if supervisor is not None:
                supervisor.check()
            if time.monotonic() - started > timeout:
                summary.timed_out = True
                break
            time.sleep(PROGRESS_EVERY)
    finally:
        if supervisor is not None:
            # The round's own workers stop with it, so nothing fetches its feeds any more.
            round_.release_leases(dead_letters_only=False)
    round_.release_leases(dead_letters_only=True)
    round_.summarize(summary)
    summary.seconds = time.monotonic() - started
    if summary.timed_out:
        raise RoundTimeout(timeout_message(summary, timeout, supervisor), summary)
    return summary


class Round:
    """The database side of one ``run --once`` round: its progress, its dead letters, its summary."""

    def __init__(self, settings: Settings, poll_ids: list[int], started_at: datetime) -> None:
        self.settings = settings
        self.poll_ids = poll_ids
        self.started_at = started_at
        self.dead = service_storage.DeadLetters({}, frozenset())
        self.last: Progress | None = None
        self._last_count = 0.0

    def progress(self) -> Progress:
        """Counted in full (pending articles by stage, dead letters) every PENDING_COUNT_EVERY s;
        in between, only the unfinished polls are counted, and once they are all finished, only
        whether any article is left is asked, so the round ends at the first check that finds none."""
        full = self.last is None or time.monotonic() - self._last_count >= PENDING_COUNT_EVERY
        with session_scope(self.settings, read_only=True) as session:
            if full:
                self._last_count = time.monotonic()
                self.dead = service_storage.dead_letters_since(session, self.started_at)
            finished = service_storage.finished_polls(session, self.poll_ids, self.dead.poll_errors)
            by_stage = None
            if full:
                by_stage = service_storage.pending_articles_by_stage(session, self.dead.article_ids)
                pending = sum(by_stage.values())
            elif finished < len(self.poll_ids):
                pending = self.last.articles_pending
            elif service_storage.any_pending_article(session, self.dead.article_ids):
                pending = max(self.last.articles_pending, 1)
            else:
                pending = 0
            untried = 0
            if finished == len(self.poll_ids) and pending == 0:
                untried = deliveries.untried_events_since(session, self.started_at)
        self.last = Progress(len(self.poll_ids), finished, pending, by_stage or (self.last.by_stage if self.last else None),
                             untried)
        return self.last

    def release_leases(self, dead_letters_only: bool) -> None:
        """Free the feeds of polls that cannot finish (dead letters), or of every unfinished poll."""
        with session_scope(self.settings) as session:
            self.dead = service_storage.dead_letters_since(session, self.started_at)
            polls = [p for p in self.poll_ids if p in self.dead.poll_errors] if dead_letters_only else self.poll_ids
            service_storage.release_leases(session, polls, unfinished_only=True)

    def summarize(self, summary: RoundSummary) -> None:
        with session_scope(self.settings) as session:
            for row in service_storage.round_polls(session, self.poll_ids):
                status, error = row.status, row.error
                if row.id in self.dead.poll_errors and status in UNFINISHED:
                    status, error = "dead_letter", f"failed for good in {UNFINISHED[status]}: {self.dead.poll_errors[row.id]}"
                next_attempt = iso_utc(row.next_poll_at) if status == POLL_DEFERRED else None
                summary.polls.append(PollOutcome(row.url, status, row.status_code, row.new_entries,
                                                 row.updated_entries, error, next_attempt))
            for status, is_duplicate, count in service_storage.round_articles(session, self.poll_ids):
                if status == FAILED:
                    summary.articles_failed += count
                elif status != PENDING:
                    summary.articles_done += count
                if is_duplicate:
                    summary.duplicates += count
            failed = service_storage.failed_articles(session, self.poll_ids, self.dead.article_ids)
            summary.failed_articles = [FailedArticle(*row) for row in failed]
            summary.articles_failed = len(summary.failed_articles)
            summary.events = deliveries.events_since(session, self.started_at)
            summary.pages_due = pages_waiting(session)
            if summary.timed_out:
                counts = service_storage.pending_articles_by_stage(session, self.dead.article_ids)
                summary.unfinished_articles = {stage: n for stage, n in counts.items() if n}
        summary.articles_new = sum(p.new_entries for p in summary.polls)
        summary.articles_updated = sum(p.updated_entries for p in summary.polls)


def iso_utc(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


def timeout_message(summary: RoundSummary, timeout: float, supervisor: Supervisor | None) -> str:
    """One line: what was left when the round timed out, and what may explain it."""
    waiting = summary.of_status(*UNFINISHED)
    parts = [f"timed out after {timeout:g} s with work unfinished: {len(waiting)} feed(s)"]
    if waiting:
        parts[0] += " (" + ", ".join(f"{p.feed_url} waiting for {UNFINISHED[p.status]}" for p in waiting[:5]) + \
            (", ..." if len(waiting) > 5 else "") + ")"
    articles = sum(summary.unfinished_articles.values())
    parts.append(f"{articles} article(s)" + (" (" + ", ".join(
        f"{n} in {stage}" for stage, n in summary.unfinished_articles.items()) + ")" if articles else ""))
    deferred = summary.of_status(POLL_DEFERRED)
    if deferred:
        parts.append("deferred by the publisher: " + ", ".join(f"{p.feed_url} until {p.next_attempt}" for p in deferred))
    restarts = supervisor.describe() if supervisor is not None else ""
    if restarts:
        parts.append(restarts)
    elif supervisor is None:
        parts.append("are workers running?")
    return "; ".join(parts)


def worker_log_path(settings: Settings) -> Path:
    return settings.home / "logs" / f"worker-{os.getpid()}.log"

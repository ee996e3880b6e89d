"""Process commands: ``migrate``, ``worker``, ``scheduler`` and ``run [--once]``."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import TextIO

import click

from schemas.db import migrate, redact_url
from schemas.pipeline import QUEUES
from schemas.settings import Settings, current_settings
from workers import service
from workers.cli.common import migrated_settings
from workers.scheduler import claim_feeds, enqueue_fetches, held_stages
from workers.web import serve
from workers.worker_metrics import worker_environment


@click.command("migrate")
def migrate_command() -> None:
    """Upgrade the database schema (safe at every start)."""
    settings = current_settings()
    migrate(settings)
    click.echo(f"database {redact_url(settings.database_url)} is up to date")


@click.command()
@click.option("--queues", "-Q", default=",".join(QUEUES), show_default=True, help="Comma-separated queues to consume.")
@click.option("--concurrency", "-c", type=int, help="Worker processes (default: one per core).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--name", help="Node name, NAME@host, to tell several workers on one host apart (status, Flower).")
def worker(queues: str, concurrency: int | None, loglevel: str, name: str | None) -> None:
    """Run a Celery worker for some or all stage queues."""
    unknown = set(queues.split(",")) - set(QUEUES)
    if unknown:
        raise click.ClickException(f"unknown queue(s): {', '.join(sorted(unknown))}; known: {', '.join(QUEUES)}")
    os.environ.update(worker_environment(migrated_settings()))
    command = service.worker_command(tuple(queues.split(",")), concurrency, loglevel)
    os.execv(sys.executable, command + (["--hostname", f"{name}@%h"] if name else []))


@click.command()
@click.option("--loglevel", default="INFO", show_default=True)
def scheduler(loglevel: str) -> None:
    """Run the scheduler alone (celery beat enqueuing due feeds)."""
    migrated_settings()
    os.execv(sys.executable, service.scheduler_command(loglevel))


@click.command()
@click.option("--once", is_flag=True, help="Poll every feed once, wait for all stages, print a summary, exit.")
@click.option("--no-workers", is_flag=True, help="Workers run elsewhere; start none here.")
@click.option("--concurrency", "-c", type=int, help="Worker processes to start (default: one per core).")
@click.option("--web-port", type=int, help="Also serve the web endpoint (read API, WebSub, /metrics, /healthz) on this port.")
@click.option("--web-host", default="127.0.0.1", show_default=True, help="Address the web endpoint listens on.")
@click.option("--timeout", default=1800.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="With --once: seconds to wait for all work.")
@click.option("--json", "as_json", is_flag=True, help="With --once: print the summary as JSON.")
def run(once: bool, no_workers: bool, concurrency: int | None, web_port: int | None, web_host: str,
        timeout: float, as_json: bool) -> None:
    """Run workers and scheduler together, restarting any that exits, until SIGTERM or SIGINT.

    With --once: exit 0 when every feed and article is done, 1 when some failed (named in the
    summary), 3 when --timeout ran out with work unfinished (named).
    """
    settings = migrated_settings()
    _log_to_stderr()
    if once:
        sys.exit(_run_once(settings, no_workers, concurrency, timeout, as_json))
    os.environ.update(worker_environment(settings))
    children = [service.Child("scheduler", service.scheduler_command())]
    if not no_workers:
        children.append(service.Child("worker", service.worker_command(concurrency=concurrency)))
    if web_port is not None:
        children.append(service.Child("web", service.web_command(web_host, web_port)))
    supervisor = service.Supervisor(settings, children)
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: stopping.append(signum))
    supervisor.start()
    try:
        try:
            enqueue_fetches(claim_feeds(settings))  # start now, not at the first beat
        except Exception as exc:  # noqa: BLE001 - the scheduler's first dispatch does it then
            service.log.warning("first dispatch failed (%s); the scheduler dispatches again", type(exc).__name__)
        while not stopping:
            supervisor.check()
            time.sleep(SUPERVISE_EVERY)
        service.log.info("%s: warm shutdown of %s", signal.Signals(stopping[0]).name,
                         ", ".join(child.name for child in children))
    finally:
        supervisor.stop()


#: How often ``feedmill run`` looks at its children.
SUPERVISE_EVERY = 0.2


def _log_to_stderr() -> None:
    """The supervisor's own lines (restarts, crash loops) on stderr, beside its children's output."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/feedmill run] %(message)s"))
    service.log.addHandler(handler)
    service.log.setLevel(logging.INFO)
    service.log.propagate = False


def _run_once(settings: Settings, no_workers: bool, concurrency: int | None, timeout: float, as_json: bool) -> int:
    supervisor = None
    if not no_workers:
        log_path = service.worker_log_path(settings)
        command = service.worker_command(concurrency=concurrency, node_name=service.once_worker_name())
        worker = service.Child("worker", command, log_path)
        supervisor = service.Supervisor(settings, [worker], record=False)
        supervisor.start()
    show_progress = sys.stderr.isatty() and not as_json
    finished = False  # the round ended with nothing left to progress, not by timeout or interruption
    try:
        summary = service.run_once(
            settings,
            timeout=timeout,
            supervisor=supervisor,
            on_progress=_print_progress if show_progress else lambda progress: None,
        )
        message, finished = None, True
    except service.RoundTimeout as exc:
        summary = exc.summary
        hint = f"; worker log: {log_path}" if supervisor is not None else ""
        message = f"{exc}{hint}"
    finally:
        if show_progress:
            click.echo("", err=True)
        if supervisor is not None:
            supervisor.stop(idle=finished and _workers_idle())
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        _print_summary(summary, sys.stdout)
    if message:
        click.echo(f"feedmill: error: {message}", err=True)
    return summary.exit_code


def _workers_idle() -> bool:
    """After a finished round: the round's own worker holds no task (one that does not answer in
    time holds none it can finish; when the broker cannot be asked, it counts as busy)."""
    from celery import current_app

    try:
        return not held_stages(current_app, [service.once_worker_name()])
    except Exception:  # noqa: BLE001 - only the quick stop is given up
        return False


def _print_progress(progress: service.Progress) -> None:
    """One line, rewritten in place. The per-stage counts are the last full count (once a second);
    the total shown is theirs, so the line never says 1 pending beside stages that say 0."""
    by_stage = progress.by_stage or {}
    stages = ", ".join(f"{stage} {n}" for stage, n in by_stage.items())
    pending = sum(by_stage.values()) if by_stage else progress.articles_pending
    click.echo(
        f"\rfeeds polled {progress.polls_finished}/{progress.polls_total}; "
        f"articles in stages: {pending}" + (f" ({stages})" if stages else "")
        + (f"; events to send: {progress.events_untried}" if progress.events_untried else "") + "   ",
        err=True,
        nl=False,
    )


def _print_summary(summary: service.RoundSummary, out: TextIO) -> None:
    unchanged = summary.of_status("not_modified")
    deferred = summary.of_status("deferred")
    failed = summary.feed_errors
    ok = len(summary.polls) - len(failed) - len(unchanged) - len(deferred)
    print(
        f"polled {len(summary.polls)} feed(s) in {summary.seconds:.1f} s: {ok} ok, "
        f"{len(failed)} failed, {len(unchanged)} unchanged (304)"
        + (f", {len(deferred)} deferred (Retry-After)" if deferred else "")
        + (f", {summary.skipped_feeds} skipped (being fetched elsewhere)" if summary.skipped_feeds else ""),
        file=out,
    )
    print(
        f"articles: {summary.articles_new} new, {summary.articles_updated} updated; "
        f"{summary.articles_done} through every stage, {summary.articles_failed} failed, "
        f"{summary.duplicates} duplicate(s)",
        file=out,
    )
    if summary.pages_due:
        print(f"full text: {summary.pages_due} article(s) went on with their summary; the service fetches their "
              "pages in their hosts' turn and cleans them again", file=out)
    if any(summary.events.values()):
        print(f"events: {summary.events['delivered']} delivered, {summary.events['pending']} waiting for a retry "
              f"(the service sends them), {summary.events['dead']} dead (see: feedmill failures)", file=out)
    for poll in failed:
        print(f"  failed: {poll.feed_url}: {poll.error}", file=out)
    for poll in deferred:
        print(f"  deferred: {poll.feed_url}: HTTP {poll.status_code}, next attempt {poll.next_attempt}", file=out)
    for article in summary.failed_articles[:FAILED_ARTICLES_SHOWN]:
        print(f"  failed article {article.id} ({article.feed_url}) in {article.stage}: {article.error}", file=out)
    if len(summary.failed_articles) > FAILED_ARTICLES_SHOWN:
        print(f"  ... and {len(summary.failed_articles) - FAILED_ARTICLES_SHOWN} more failed article(s) "
              "(feedmill failures list; --json names them all)", file=out)


#: Failed articles named in the text summary (--json names every one).
FAILED_ARTICLES_SHOWN = 20


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 for every interface (behind a proxy or in a container).")
@click.option("--port", default=8080, show_default=True, type=int)
def web(host: str, port: int) -> None:
    """Serve the HTTP endpoint: the read API (/api/v1), WebSub callbacks, /metrics and /healthz."""
    settings = migrated_settings()
    if not settings.websub_callback_url:
        click.echo("note: FEEDMILL_WEBSUB_CALLBACK_URL is not set, so no hub can be asked to call this endpoint", err=True)
    if not settings.api_token:
        click.echo("note: FEEDMILL_API_TOKEN is not set, so /api and /feeds answer anyone who can reach this port", err=True)
    click.echo(f"serving the read API on http://{host}:{port}/api/v1 (OpenAPI: /api/v1/openapi.json) "
               f"and WebSub callbacks on http://{host}:{port}/websub/<feed id>", err=True)
    serve(settings, host, port)

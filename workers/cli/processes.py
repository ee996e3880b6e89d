"""Process commands: ``migrate``, ``worker``, ``scheduler`` and ``run [--once]``."""

from __future__ import annotations

import json
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
from workers.scheduler import claim_feeds, enqueue_fetches
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
    settings = migrated_settings()
    os.execv(sys.executable, service.scheduler_command(settings, loglevel))


@click.command()
@click.option("--once", is_flag=True, help="Poll every feed once, wait for all stages, print a summary, exit.")
@click.option("--no-workers", is_flag=True, help="Workers run elsewhere; start none here.")
@click.option("--concurrency", "-c", type=int, help="Worker processes to start (default: one per core).")
@click.option("--timeout", default=1800.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="With --once: seconds to wait for all work.")
@click.option("--json", "as_json", is_flag=True, help="With --once: print the summary as JSON.")
def run(once: bool, no_workers: bool, concurrency: int | None, timeout: float, as_json: bool) -> None:
    """Run workers and scheduler together: the whole service on one machine."""
    settings = migrated_settings()
    if once:
        _run_once(settings, no_workers, concurrency, timeout, as_json)
        return
    os.environ.update(worker_environment(settings))
    children = [service.start_process(service.scheduler_command(settings))]
    if not no_workers:
        children.append(service.start_process(service.worker_command(concurrency=concurrency)))
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    try:
        enqueue_fetches(claim_feeds(settings))  # start now, not at the first beat
        while all(child.poll() is None for child in children):
            time.sleep(1)
        codes = [child.returncode for child in children]
        raise click.ClickException(f"a child process exited (exit codes {codes}); stopping")
    finally:
        for child in children:
            service.stop_process(child)


def _run_once(settings: Settings, no_workers: bool, concurrency: int | None, timeout: float, as_json: bool) -> None:
    workers = None
    if not no_workers:
        log_path = service.worker_log_path(settings)
        workers = service.start_process(service.worker_command(concurrency=concurrency), log_path)
    show_progress = sys.stderr.isatty() and not as_json
    try:
        summary = service.run_once(
            settings,
            timeout=timeout,
            workers=workers,
            on_progress=_print_progress if show_progress else lambda progress: None,
        )
    except (service.RoundTimeout, service.WorkersDied) as exc:
        hint = f"; worker log: {log_path}" if workers is not None else ""
        raise click.ClickException(f"{exc}{hint}") from exc
    finally:
        if show_progress:
            click.echo("", err=True)
        if workers is not None:
            service.stop_process(workers)
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
        return
    _print_summary(summary, sys.stdout)


def _print_progress(progress: service.Progress) -> None:
    click.echo(
        f"\rfeeds polled {progress.polls_finished}/{progress.polls_total}; "
        f"articles still in stages: {progress.articles_pending}   ",
        err=True,
        nl=False,
    )


def _print_summary(summary: service.RoundSummary, out: TextIO) -> None:
    ok = len(summary.polls) - len(summary.feed_errors)
    print(
        f"polled {len(summary.polls)} feed(s) in {summary.seconds:.1f} s: {ok} ok, "
        f"{len(summary.feed_errors)} failed"
        + (f", {summary.skipped_feeds} skipped (being fetched elsewhere)" if summary.skipped_feeds else ""),
        file=out,
    )
    print(
        f"articles: {summary.articles_new} new, {summary.articles_updated} updated; "
        f"{summary.articles_done} through every stage, {summary.articles_failed} failed, "
        f"{summary.duplicates} duplicate(s)",
        file=out,
    )
    for poll in summary.feed_errors:
        print(f"  failed: {poll.feed_url}: {poll.error}", file=out)


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
def web(host: str, port: int) -> None:
    """Serve the HTTP endpoint: WebSub callbacks, /metrics and /healthz."""
    settings = migrated_settings()
    if not settings.websub_callback_url:
        click.echo("note: FEEDMILL_WEBSUB_CALLBACK_URL is not set, so no hub can be asked to call this endpoint", err=True)
    click.echo(f"serving WebSub callbacks on http://{host}:{port}/websub/<feed id>", err=True)
    serve(settings, host, port)

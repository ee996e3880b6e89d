"""The ``feedmill`` command line: a contract scripts rely on.

Errors are one line on stderr (exit 1); ``--json`` output is for scripts;
long work shows progress on a terminal. Set FEEDMILL_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

import click
from sqlalchemy import func, select

from schemas.db import insert_for, migrate, redact_url, session_scope
from schemas.models import Article, Feed
from schemas.settings import Settings, current_settings
from workers import service
from workers.celery_app import QUEUES
from workers.scheduler import claim_feeds, enqueue_fetches


def _settings() -> Settings:
    settings = current_settings()
    migrate(settings)
    return settings


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


@click.group()
def cli() -> None:
    """feedmill: poll feeds; fetch, parse, clean, dedupe, classify and store their articles."""


@cli.command("migrate")
def migrate_command() -> None:
    """Upgrade the database schema (safe at every start)."""
    settings = current_settings()
    migrate(settings)
    click.echo(f"database {redact_url(settings.database_url)} is up to date")


# ---------------------------------------------------------------- feeds


@cli.group()
def feeds() -> None:
    """Add, import, export and list feeds."""


def _check_feed_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.ClickException(f"not an http(s) feed URL: {url!r}")
    return url.strip()


def _add_feeds(settings: Settings, urls: list[str]) -> int:
    """Insert feeds not yet known; return how many were new."""
    if not urls:
        return 0
    with session_scope(settings) as session:
        insert = insert_for(session, Feed.__table__)
        rows = [{"url": url, "status": "active", "consecutive_errors": 0} for url in dict.fromkeys(urls)]
        added = session.scalars(
            insert.values(rows).on_conflict_do_nothing(index_elements=["url"]).returning(Feed.id)
        ).all()
    return len(added)


@feeds.command("add")
@click.argument("urls", nargs=-1, required=True)
def feeds_add(urls: tuple[str, ...]) -> None:
    """Add feeds by URL (already known ones are left as they are)."""
    checked = [_check_feed_url(url) for url in urls]
    added = _add_feeds(_settings(), checked)
    click.echo(f"added {added} feed(s); {len(set(checked)) - added} already present")


@feeds.command("import")
@click.argument("opml_file", type=click.File("rb"))
def feeds_import(opml_file: Any) -> None:
    """Import the feeds of an OPML file."""
    try:
        root = ET.parse(opml_file).getroot()
    except ET.ParseError as exc:
        raise click.ClickException(f"{opml_file.name} is not valid OPML: {exc}") from exc
    urls = [o.get("xmlUrl", "").strip() for o in root.iter("outline") if o.get("xmlUrl")]
    good = [url for url in urls if urlsplit(url).scheme in ("http", "https")]
    for bad in sorted(set(urls) - set(good)):
        click.echo(f"skipped (not an http(s) URL): {bad}", err=True)
    added = _add_feeds(_settings(), good)
    click.echo(f"imported {added} new feed(s) of {len(set(good))} in {opml_file.name}")


@feeds.command("export")
def feeds_export() -> None:
    """Write all feeds as OPML to stdout."""
    with session_scope(_settings()) as session:
        rows = session.execute(select(Feed.url, Feed.title, Feed.site_url).order_by(Feed.id)).all()
    opml = ET.Element("opml", version="2.0")
    ET.SubElement(ET.SubElement(opml, "head"), "title").text = "feedmill feeds"
    body = ET.SubElement(opml, "body")
    for url, title, site_url in rows:
        attrs = {"type": "rss", "text": title or url, "xmlUrl": url}
        if site_url:
            attrs["htmlUrl"] = site_url
        ET.SubElement(body, "outline", attrs)
    ET.indent(opml)
    click.echo('<?xml version="1.0" encoding="utf-8"?>')
    click.echo(ET.tostring(opml, encoding="unicode"))


def _feed_record(feed: Feed) -> dict[str, Any]:
    return {
        "id": feed.id,
        "url": feed.url,
        "title": feed.title,
        "status": feed.status,
        "last_polled_at": _iso(feed.last_polled_at),
        "last_status_code": feed.last_status_code,
        "last_error": feed.last_error,
        "consecutive_errors": feed.consecutive_errors,
        "next_poll_at": _iso(feed.next_poll_at),
        "etag": feed.etag,
        "last_modified": feed.last_modified,
    }


@feeds.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def feeds_list(as_json: bool) -> None:
    """List feeds with their last poll and next poll."""
    with session_scope(_settings()) as session:
        records = [_feed_record(feed) for feed in session.scalars(select(Feed).order_by(Feed.id))]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo("no feeds; add one with: feedmill feeds add URL")
        return
    for r in records:
        last = f"{r['last_status_code'] or '-'} at {r['last_polled_at']}" if r["last_polled_at"] else "never polled"
        trouble = f"  errors: {r['consecutive_errors']} ({r['last_error']})" if r["consecutive_errors"] else ""
        click.echo(f"{r['id']:>5}  {r['status']:<7} {r['url']}\n       last: {last}; next: {r['next_poll_at']}{trouble}")


# ---------------------------------------------------------------- processes


@cli.command()
@click.option("--queues", "-Q", default=",".join(QUEUES), show_default=True, help="Comma-separated queues to consume.")
@click.option("--concurrency", "-c", type=int, help="Worker processes (default: one per core).")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(queues: str, concurrency: int | None, loglevel: str) -> None:
    """Run a Celery worker for some or all stage queues."""
    unknown = set(queues.split(",")) - set(QUEUES)
    if unknown:
        raise click.ClickException(f"unknown queue(s): {', '.join(sorted(unknown))}; known: {', '.join(QUEUES)}")
    _settings()
    os.execv(sys.executable, service.worker_command(tuple(queues.split(",")), concurrency, loglevel))


@cli.command()
@click.option("--loglevel", default="INFO", show_default=True)
def scheduler(loglevel: str) -> None:
    """Run the scheduler alone (celery beat enqueuing due feeds)."""
    settings = _settings()
    os.execv(sys.executable, service.scheduler_command(settings, loglevel))


@cli.command()
@click.option("--once", is_flag=True, help="Poll every feed once, wait for all stages, print a summary, exit.")
@click.option("--no-workers", is_flag=True, help="Workers run elsewhere; start none here.")
@click.option("--concurrency", "-c", type=int, help="Worker processes to start (default: one per core).")
@click.option("--timeout", default=1800.0, show_default=True, help="With --once: seconds to wait for all work.")
@click.option("--json", "as_json", is_flag=True, help="With --once: print the summary as JSON.")
def run(once: bool, no_workers: bool, concurrency: int | None, timeout: float, as_json: bool) -> None:
    """Run workers and scheduler together: the whole service on one machine."""
    settings = _settings()
    if once:
        _run_once(settings, no_workers, concurrency, timeout, as_json)
        return
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


# ---------------------------------------------------------------- export


def article_record(article: Article, feed_url: str) -> dict[str, Any]:
    """The export format: one JSON object per stored article."""
    return {
        "id": article.id,
        "feed_url": feed_url,
        "guid": article.guid,
        "url": article.url or article.link,
        "title": article.title,
        "author": article.author,
        "published_at": _iso(article.published_at),
        "summary": article.summary,
        "text": article.text,
        "html": article.html,
        "images": article.images or [],
        "language": article.language,
        "topics": [label for label, _score in (article.topics or [])],
        "topic_scores": {label: score for label, score in (article.topics or [])},
        "places": article.places or [],
        "duplicate_of": article.duplicate_of,
        "content_hash": article.content_hash,
        "revision": article.revision,
        "stage": article.stage,
        "status": article.status,
        "error": article.error,
    }


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="File to write (default stdout).")
def export(fmt: str, output: str | None) -> None:
    """Export stored articles, one JSON object per line."""
    settings = _settings()
    out: TextIO = open(output, "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
    try:
        with session_scope(settings) as session:
            total = session.scalar(select(func.count()).select_from(Article)) or 0
            rows = session.execute(
                select(Article, Feed.url).join(Feed, Feed.id == Article.feed_id).order_by(Article.id)
            ).yield_per(500)
            with click.progressbar(
                rows, length=total, label="exporting", file=sys.stderr, hidden=not (output and sys.stderr.isatty())
            ) as bar:
                for article, feed_url in bar:
                    out.write(json.dumps(article_record(article, feed_url), ensure_ascii=False) + "\n")
    finally:
        if output:
            out.close()
    if output:
        click.echo(f"exported {total} article(s) to {output}", err=True)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("feedmill: aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        click.echo(f"feedmill: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # one clear line for people; the traceback on request
        if os.environ.get("FEEDMILL_DEBUG"):
            raise
        click.echo(f"feedmill: error: {type(exc).__name__}: {exc}".splitlines()[0], err=True)
        sys.exit(1)

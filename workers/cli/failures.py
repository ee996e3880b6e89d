"""``feedmill failures list|show|purge``: the dead letters (``feedmill requeue failed`` retries them).

Every command says what it will do, asks before changing anything in bulk
(unless --yes) and reports what it did.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from schemas.db import session_scope
from schemas.models import Failure
from schemas.pipeline import STAGE_NAMES
from tasks.storage.failures import FailureFilter, count_purgeable, open_failures, purge_failures
from workers.cli.common import find_feed, iso, migrated_settings
from workers.cli.reprocess import Since


def _as_dict(failure: Failure, *, traceback: bool = False) -> dict[str, Any]:
    row = {
        "id": failure.id, "task": failure.task, "stage": failure.stage, "subject": failure.subject,
        "article_ids": failure.article_ids, "poll_id": failure.poll_id, "feed_id": failure.feed_id,
        "error": failure.error, "attempts": failure.attempts, "first_seen": iso(failure.first_seen),
        "last_seen": iso(failure.last_seen), "requeued_at": iso(failure.requeued_at),
    }
    if traceback:
        row["traceback"] = failure.traceback
    return row


def selection(stage: str | None, feed_url: str | None, since: datetime | None) -> FailureFilter:
    feed_id = None
    if feed_url is not None:
        with session_scope(migrated_settings()) as session:
            feed_id = find_feed(session, feed_url).id
    return FailureFilter(stage=stage, feed_id=feed_id, since=since)


filter_options = [
    click.option("--stage", type=click.Choice(STAGE_NAMES), help="Only failures of this stage."),
    click.option("--feed", "feed_url", help="Only failures of this feed's polls and articles."),
    click.option("--since", type=Since(), help="Only failures last seen since then: 2024-05-01, 12h, 7d."),
]


def with_filters(command: Any) -> Any:
    for option in reversed(filter_options):
        command = option(command)
    return command


@click.group()
def failures() -> None:
    """Work that failed for good (dead letters): list, show, purge."""


@failures.command("list")
@with_filters
@click.option("--json", "as_json", is_flag=True, help="One JSON array for scripts.")
def list_command(stage: str | None, feed_url: str | None, since: datetime | None, as_json: bool) -> None:
    """Open failures (not yet re-queued), newest first."""
    with session_scope(migrated_settings()) as session:
        rows = open_failures(session, selection(stage, feed_url, since))
    if as_json:
        click.echo(json.dumps([_as_dict(f) for f in rows], indent=2))
        return
    if not rows:
        click.echo("no open failures")
        return
    for f in rows:
        click.echo(f"{f.id:>6}  {iso(f.last_seen)}  {f.stage:<8} {f.subject[:40]:<40} x{f.attempts}  {f.error.splitlines()[0][:100]}")
    click.echo(f"{len(rows)} open failure(s); `feedmill failures show ID` for one, `feedmill requeue failed` to retry them")


@failures.command("show")
@click.argument("failure_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def show_command(failure_id: int, as_json: bool) -> None:
    """One failure with its traceback."""
    with session_scope(migrated_settings()) as session:
        failure = session.get(Failure, failure_id)
        if failure is None:
            raise click.ClickException(f"no failure {failure_id}")
        row = _as_dict(failure, traceback=True)
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    for key, value in row.items():
        if key != "traceback" and value is not None:
            click.echo(f"{key}: {value}")
    click.echo(f"traceback:\n{row['traceback'] or '(none)'}")


@failures.command("purge")
@click.option("--all", "everything", is_flag=True, help="Also delete open failures, not only re-queued ones.")
@click.option("--dry-run", is_flag=True, help="Only say what would be deleted.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask first.")
def purge_command(everything: bool, dry_run: bool, yes: bool) -> None:
    """Delete re-queued failures (with --all, every failure)."""
    settings = migrated_settings()
    with session_scope(settings) as session:
        count = count_purgeable(session, everything)
    kind = "failure(s)" if everything else "re-queued failure(s)"
    click.echo(f"{'would delete' if dry_run else 'deleting'} {count} {kind}")
    if dry_run or not count:
        return
    if not yes:
        click.confirm(f"delete {count} {kind}?", abort=True, err=True)
    with session_scope(settings) as session:
        deleted = purge_failures(session, everything)
    click.echo(f"deleted {deleted} {kind}")


"""``feedmill prune``: apply the retention policy now, or cut every feed at one age.

The service prunes on its own (``feedmill.prune``, every FEEDMILL_PRUNE_EVERY s); this is
for an operator who wants it now, narrower, or to see first what would go.
"""

from __future__ import annotations

import json

import click

from schemas.db import session_scope
from schemas.settings import duration_seconds
from tasks.base import announce_changed
from tasks.retention import FeedPrune, run_prune
from tasks.storage.retention import reclaim_space
from workers.cli.common import find_feed, migrated_settings
from workers.cli.feeds import describe_retention


def _line(feed: FeedPrune, dry_run: bool) -> str:
    if feed.max_age is None:
        return f"{feed.url}: kept all (retention forever)"
    verb = "would remove" if dry_run else "removed"
    floor = f" ({feed.kept_by_floor} more kept by the floor)" if feed.kept_by_floor else ""
    return f"{feed.url}: {verb} {feed.removed} article(s) older than {describe_retention(feed.max_age)}{floor}"


@click.command("prune")
@click.option("--older-than", "older_than", metavar="AGE",
              help="Remove articles older than this (30d, 12h, 4w) from every chosen feed, with no floor; "
                   "without it, each feed's retention policy applies, keeping its newest FEEDMILL_RETENTION_KEEP.")
@click.option("--feed", "feed_urls", multiple=True, metavar="URL", help="Only this feed (repeatable).")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def prune(older_than: str | None, feed_urls: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Remove old articles, with their index rows, leaving tombstones so feeds do not bring them back."""
    try:
        age = duration_seconds(older_than) if older_than is not None else None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    settings = migrated_settings()
    feed_ids = None
    if feed_urls:
        with session_scope(settings, read_only=True) as session:
            feed_ids = [find_feed(session, url).id for url in feed_urls]
    report = run_prune(settings, older_than=age, feed_ids=feed_ids, dry_run=dry_run)
    announce_changed(report.changed)
    if not dry_run and report.removed:
        reclaim_space(settings)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    for feed in report.feeds:
        if feed_urls or feed.removed or feed.kept_by_floor:
            click.echo(_line(feed, dry_run))
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {report.removed} article(s) of {sum(1 for f in report.feeds if f.removed)} feed(s)"
               + (f"; {report.repointed} article(s) re-pointed to their story's earliest published copy left"
                  if report.repointed else "")
               + (f"; {report.tombstones_expired} expired tombstone(s) deleted" if report.tombstones_expired else ""))

"""``feedmill reprocess``: re-run a stage, and every stage after it, on stored articles."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from schemas.db import session_scope
from schemas.models import utcnow
from schemas.pipeline import REPROCESS_STAGES, article_stages_from
from tasks.base import send_articles
from tasks.storage.articles import Selection, count_selected, reset_to_stage
from workers.cli.common import find_feed, iso, migrated_settings

#: Changing more articles than this asks first (unless --yes).
CONFIRM_ABOVE = 100
_AGO = re.compile(r"(\d+)([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class Since(click.ParamType):
    """An ISO 8601 date or time (UTC unless it says otherwise), or an age like 30m, 12h, 7d, 2w."""

    name = "since"

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime:
        if isinstance(value, datetime):
            return value
        ago = _AGO.fullmatch(value.strip())
        if ago:
            return utcnow() - timedelta(**{_UNITS[ago[2]]: int(ago[1])})
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            self.fail(f"{value!r} is neither an ISO 8601 date/time nor an age like 7d", param, ctx)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@click.command()
@click.option("--stage", required=True, type=click.Choice(REPROCESS_STAGES),
              help="Stage to re-run; the stages after it run again too.")
@click.option("--since", type=Since(), help="Only articles stored since then: 2024-05-01, 2024-05-01T12:00, 7d, 12h.")
@click.option("--feed", "feed_url", help="Only this feed's articles.")
@click.option("--yes", "-y", is_flag=True, help=f"Do not ask before changing more than {CONFIRM_ABOVE} articles.")
@click.option("--dry-run", is_flag=True, help="Only say what would be done.")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
def reprocess(stage: str, since: datetime | None, feed_url: str | None, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Send stored articles back to --stage and enqueue them, e.g. after a model or rule change.

    Only articles that have reached the stage go back; running workers pick
    them up (or the next `feedmill run --once` does). Idempotent: running it
    twice re-runs the stage twice, with the same result.
    """
    settings = migrated_settings()
    feed_id = None
    if feed_url is not None:
        with session_scope(settings) as session:
            feed_id = find_feed(session, feed_url).id
    selection = Selection(stage=stage, feed_id=feed_id, since=since)
    with session_scope(settings) as session:
        count = count_selected(session, selection)
    following = article_stages_from(stage)
    scope = (f" of {feed_url}" if feed_url else "") + (f" stored since {iso(since)}" if since else "")
    plan = f"{count} article(s){scope} go back to {stage} and then run {' -> '.join(following)} again"
    if not as_json:
        click.echo(("would send " if dry_run else "") + plan)
    if dry_run or count == 0:
        if as_json:
            click.echo(json.dumps({"stage": stage, "articles": count if dry_run else 0, "batches": 0,
                                   "dry_run": dry_run, "feed_url": feed_url, "since": iso(since)}))
        return
    if count > CONFIRM_ABOVE and not yes:
        click.confirm(f"change {count} articles?", abort=True, err=True)
    with session_scope(settings) as session:
        ids = reset_to_stage(session, selection)
    batches = send_articles(stage, ids)
    if as_json:
        click.echo(json.dumps({"stage": stage, "articles": len(ids), "batches": batches, "dry_run": False,
                               "feed_url": feed_url, "since": iso(since)}))
        return
    click.echo(f"reset {len(ids)} article(s) to {stage}; enqueued {batches} batch(es) on the {stage} queue; "
               "running workers process them (feedmill run --once waits for them)")

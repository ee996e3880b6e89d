"""``feedmill requeue failed|article``: send work back to its stage.

Each says what it will do, asks before changing more than a few items
(unless --yes) and reports what it did. Stages are idempotent, so
re-queuing something twice, or something that meanwhile finished, is harmless.
"""

from __future__ import annotations

from datetime import datetime

import click

from schemas.db import session_scope
from schemas.pipeline import REPROCESS_STAGES, article_stages_from, positions_from
from tasks.base import send_articles
from tasks.storage.articles import Selection, reset_to_stage, stages_of
from tasks.storage.failures import close_article_failures, open_failures
from workers.cli.common import migrated_settings
from workers.cli.failures import selection, with_filters
from workers.cli.reprocess import CONFIRM_ABOVE
from workers.failures import requeue_failures


@click.group()
def requeue() -> None:
    """Send work back to its stage."""


@requeue.command("failed")
@with_filters
@click.option("--dry-run", is_flag=True, help="Only say what would be re-queued.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask first.")
def requeue_failed(stage: str | None, feed_url: str | None, since: datetime | None, dry_run: bool, yes: bool) -> None:
    """Re-queue open failures: failed articles go back to pending in their stage, failed messages are sent again."""
    settings = migrated_settings()
    with session_scope(settings) as session:
        rows = open_failures(session, selection(stage, feed_url, since))
    click.echo(f"{'would re-queue' if dry_run else 're-queuing'} {len(rows)} open failure(s)")
    for f in rows:
        click.echo(f"  {f.id}: {f.stage} {f.subject[:60]}")
    if dry_run or not rows:
        return
    if not yes:
        click.confirm(f"re-queue {len(rows)} failure(s)?", abort=True, err=True)
    done = requeue_failures(settings, [f.id for f in rows])
    click.echo(f"re-queued {done} failure(s); running workers process them (feedmill run --once waits for them)")


@requeue.command("article")
@click.argument("article_ids", nargs=-1, type=int, required=True)
@click.option("--from-stage", "stage", required=True, type=click.Choice(REPROCESS_STAGES),
              help="Stage to run again; the stages after it run again too.")
@click.option("--dry-run", is_flag=True, help="Only say what would be re-queued.")
@click.option("--yes", "-y", is_flag=True, help=f"Do not ask before re-queuing more than {CONFIRM_ABOVE} articles.")
def requeue_article(article_ids: tuple[int, ...], stage: str, dry_run: bool, yes: bool) -> None:
    """Put ARTICLE_IDS back to pending in --from-stage and enqueue them: that stage and every later one run again.

    Only articles that have reached the stage can go back to it (an earlier one
    would skip the stages before); their open failures are marked re-queued.
    Exit 1 when an id is no article (the others are still re-queued).
    """
    settings = migrated_settings()
    wanted = tuple(dict.fromkeys(article_ids))
    with session_scope(settings) as session:
        found = stages_of(session, wanted)
    reached = [i for i in wanted if i in found and found[i] in positions_from(stage)]
    following = " -> ".join(article_stages_from(stage))
    click.echo(f"{'would send' if dry_run else 'sending'} {len(reached)} article(s) back to {stage}, then {following}")
    for article_id in wanted:
        if article_id not in found:
            click.echo(f"  skipped {article_id}: no such article")
        elif article_id not in reached:
            click.echo(f"  skipped {article_id}: still waiting for {found[article_id]}, before {stage}; "
                       f"use --from-stage {found[article_id]}")
    missing = [article_id for article_id in wanted if article_id not in found]
    if dry_run or not reached:
        if missing:
            raise click.ClickException(f"no article {', '.join(map(str, missing))} (see: feedmill export)")
        return
    if len(reached) > CONFIRM_ABOVE and not yes:
        click.confirm(f"re-queue {len(reached)} articles?", abort=True, err=True)
    with session_scope(settings) as session:
        ids = reset_to_stage(session, Selection(stage=stage, article_ids=tuple(reached)))
    with session_scope(settings) as session:
        closed = close_article_failures(session, ids)
    batches = send_articles(stage, ids)
    click.echo(f"reset {len(ids)} article(s) to {stage}, pending; enqueued {batches} batch(es) on the {stage} queue"
               + (f"; marked {closed} open failure(s) re-queued" if closed else ""))
    if missing:
        raise click.ClickException(f"no article {', '.join(map(str, missing))} (the others were re-queued)")

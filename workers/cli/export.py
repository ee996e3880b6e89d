"""``feedmill export``: stored articles as JSON lines."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import click
from sqlalchemy import func, select, true

from schemas.db import session_scope
from schemas.models import Article, Feed
from schemas.payloads import article_object
from workers.cli.common import migrated_settings


@click.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="File to write (default stdout).")
@click.option("--include-dropped", is_flag=True, help="Also export articles a drop rule matched (dropped_by set).")
def export(fmt: str, output: str | None, include_dropped: bool) -> None:
    """Export stored articles, one JSON object per line."""
    settings = migrated_settings()
    shown = true() if include_dropped else Article.dropped_by.is_(None)
    out: TextIO = open(output, "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
    try:
        with session_scope(settings) as session:
            total = session.scalar(select(func.count()).select_from(Article).where(shown)) or 0
            rows = session.execute(
                select(Article, Feed.url).join(Feed, Feed.id == Article.feed_id).where(shown).order_by(Article.id)
            ).yield_per(500)
            with click.progressbar(
                rows, length=total, label="exporting", file=sys.stderr, hidden=not (output and sys.stderr.isatty())
            ) as bar:
                for article, feed_url in bar:
                    out.write(json.dumps(article_object(article, feed_url), ensure_ascii=False) + "\n")
    finally:
        if output:
            out.close()
    if output:
        click.echo(f"exported {total} article(s) to {output}", err=True)

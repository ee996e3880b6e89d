"""``feedmill export``: stored articles as JSON lines."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import click
from sqlalchemy import func, select, true

from schemas.db import session_scope
from schemas.models import Article, Feed
from workers.cli.common import iso, migrated_settings


def article_record(article: Article, feed_url: str) -> dict[str, Any]:
    """The export format: one JSON object per stored article."""
    return {
        "id": article.id,
        "feed_url": feed_url,
        "guid": article.guid,
        "url": article.url or article.link,
        "title": article.title,
        "author": article.author,
        "published_at": iso(article.published_at),
        "summary": article.summary,
        "text": article.text,
        "html": article.html,
        "images": article.images or [],
        "enclosures": article.enclosures or [],
        "language": article.language,
        "topics": [label for label, _score in (article.topics or [])],
        "topic_scores": {label: score for label, score in (article.topics or [])},
        "places": article.places or [],
        "tags": article.tags or [],
        "dropped_by": article.dropped_by,
        "duplicate_of": article.duplicate_of,
        "duplicate_reason": article.duplicate_reason,
        "cluster_id": article.cluster_id,
        "content_hash": article.content_hash,
        "revision": article.revision,
        "stage": article.stage,
        "status": article.status,
        "error": article.error,
    }


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
                    out.write(json.dumps(article_record(article, feed_url), ensure_ascii=False) + "\n")
    finally:
        if output:
            out.close()
    if output:
        click.echo(f"exported {total} article(s) to {output}", err=True)

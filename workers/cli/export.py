"""``feedmill export``: stored articles as JSON lines."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import click
from sqlalchemy import func, select

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


@click.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="File to write (default stdout).")
def export(fmt: str, output: str | None) -> None:
    """Export stored articles, one JSON object per line."""
    settings = migrated_settings()
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

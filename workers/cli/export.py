"""``feedmill export``: stored articles as JSON lines."""

from __future__ import annotations

import json
import sys
from typing import TextIO

import click

from schemas.db import session_scope
from tasks.storage.reading import article_record, export_count, export_rows
from workers.cli.common import migrated_settings


@click.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="File to write (default stdout).")
@click.option("--include-dropped", is_flag=True, help="Also export articles a drop rule matched (dropped_by set).")
def export(fmt: str, output: str | None, include_dropped: bool) -> None:
    """Export stored articles, one JSON object per line."""
    settings = migrated_settings()
    out: TextIO = open(output, "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
    try:
        with session_scope(settings) as session:
            total = export_count(session, include_dropped)
            rows = export_rows(session, include_dropped)
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

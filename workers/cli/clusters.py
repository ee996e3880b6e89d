"""``feedmill clusters``: the largest story clusters and where each copy came from."""

from __future__ import annotations

import json

import click

from schemas.db import session_scope
from tasks.storage.articles import largest_clusters
from workers.cli.common import iso, migrated_settings


@click.command()
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1), help="Clusters to list.")
@click.option("--min-size", default=2, show_default=True, type=click.IntRange(min=1), help="Smallest cluster listed.")
@click.option("--json", "as_json", is_flag=True, help="Print the clusters as JSON.")
def clusters(limit: int, min_size: int, as_json: bool) -> None:
    """List the largest story clusters: one story's copies across feeds."""
    with session_scope(migrated_settings()) as session:
        found = largest_clusters(session, limit, min_size)
    if as_json:
        click.echo(json.dumps(found, indent=2, ensure_ascii=False, default=iso))
        return
    if not found:
        click.echo(f"no story cluster has {min_size} or more articles")
        return
    for cluster in found:
        click.echo(
            f"cluster {cluster['cluster_id']}: {cluster['size']} articles from "
            f"{len(cluster['feeds'])} feed(s): {cluster['title'] or '(untitled)'}"
        )
        for article in cluster["articles"]:
            reason = f" [{article['duplicate_reason']}]" if article["duplicate_reason"] else " [first seen]"
            click.echo(f"  {article['id']}{reason} {article['feed_url']}  {article['title'] or '(untitled)'}")

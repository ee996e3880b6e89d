"""``feedmill clusters``: the largest story clusters and where each copy came from."""

from __future__ import annotations

import json
from typing import Any

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schemas.db import session_scope
from schemas.models import Article, Feed
from workers.cli.common import iso, migrated_settings


def largest_clusters(session: Session, limit: int, min_size: int) -> list[dict[str, Any]]:
    """Clusters of at least ``min_size`` articles, largest first, each with its articles."""
    size = func.count().label("size")
    top = session.execute(
        select(Article.cluster_id, size)
        .where(Article.cluster_id.is_not(None))
        .group_by(Article.cluster_id)
        .having(func.count() >= min_size)
        .order_by(size.desc(), Article.cluster_id)
        .limit(limit)
    ).all()
    members: dict[int, list[dict[str, Any]]] = {cluster_id: [] for cluster_id, _ in top}
    rows = session.execute(
        select(Article, Feed.url)
        .join(Feed, Feed.id == Article.feed_id)
        .where(Article.cluster_id.in_(list(members)))
        .order_by(Article.id)
    ).all()
    for article, feed_url in rows:
        members[article.cluster_id].append({
            "id": article.id,
            "feed_url": feed_url,
            "url": article.url or article.link,
            "title": article.title,
            "published_at": iso(article.published_at),
            "duplicate_of": article.duplicate_of,
            "duplicate_reason": article.duplicate_reason,
        })
    clusters = []
    for cluster_id, count in top:
        articles = members[cluster_id]
        first = next((a for a in articles if a["id"] == cluster_id), articles[0])
        clusters.append({
            "cluster_id": cluster_id,
            "size": count,
            "title": first["title"],
            "feeds": sorted({a["feed_url"] for a in articles}),
            "articles": articles,
        })
    return clusters


@click.command()
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1), help="Clusters to list.")
@click.option("--min-size", default=2, show_default=True, type=click.IntRange(min=1), help="Smallest cluster listed.")
@click.option("--json", "as_json", is_flag=True, help="Print the clusters as JSON.")
def clusters(limit: int, min_size: int, as_json: bool) -> None:
    """List the largest story clusters: one story's copies across feeds."""
    with session_scope(migrated_settings()) as session:
        found = largest_clusters(session, limit, min_size)
    if as_json:
        click.echo(json.dumps(found, indent=2, ensure_ascii=False))
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

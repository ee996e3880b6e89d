"""What the dedupe benchmarks share: a fresh store, articles inserted waiting for dedupe, a timed run."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from sqlalchemy import insert, select, text

from schemas.db import migrate, session_scope
from schemas.models import PENDING, Article, Feed, utcnow
from schemas.payloads import chunked
from schemas.settings import Settings
from tasks.dedupe import run_dedupe


def store_settings(home: Path, database_url: str | None) -> Settings:
    """Settings for a benchmark store: SQLite under ``home`` unless a URL is given; migrated."""
    settings = dataclasses.replace(
        Settings.from_env(), home=home, database_url=database_url or f"sqlite:///{home / 'bench.db'}"
    )
    migrate(settings)
    return settings


def add_feed(settings: Settings, url: str) -> int:
    with session_scope(settings) as session:
        feed = Feed(url=url)
        session.add(feed)
        session.flush()
        return feed.id


def add_articles(
    settings: Settings, feed_id: int, articles: Sequence[tuple[str, str]],
    published: Sequence[datetime | None] | None = None,
) -> list[int]:
    """Insert (title, text) articles as the clean stage leaves them: waiting for dedupe;
    ``published`` gives each its ``published_at`` (default none)."""
    now = utcnow()
    ids: list[int] = []
    for start in range(0, len(articles), 1000):
        rows = [
            {
                "feed_id": feed_id, "entry_key": f"bench:{start + i}:{now.timestamp()}", "raw_hash": "-",
                "title": title, "text": text, "revision": 1, "stage": "dedupe", "status": PENDING,
                "created_at": now, "updated_at": now,
                "published_at": published[start + i] if published else None,
            }
            for i, (title, text) in enumerate(articles[start : start + 1000])
        ]
        with session_scope(settings) as session:
            ids.extend(session.scalars(insert(Article).returning(Article.id, sort_by_parameter_order=True), rows))
    return ids


def dedupe_all(settings: Settings, ids: Sequence[int], batch_size: int = 200) -> float:
    """Run the real dedupe stage over ``ids`` in batches; return the seconds it took."""
    return sum(dedupe_timed(settings, ids, batch_size))


def dedupe_timed(settings: Settings, ids: Sequence[int], batch_size: int = 200) -> list[float]:
    """Run the real dedupe stage over ``ids`` in batches; return each batch's seconds."""
    seconds = []
    for batch in chunked(list(ids), batch_size):
        started = time.perf_counter()
        run_dedupe(settings, batch)
        seconds.append(time.perf_counter() - started)
    return seconds


def analyze(settings: Settings) -> None:
    """Refresh PostgreSQL's planner statistics, as autovacuum would after a bulk fill."""
    with session_scope(settings) as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("ANALYZE"))


def clusters_of(settings: Settings, ids: Sequence[int]) -> dict[int, int]:
    """Article id -> cluster id."""
    found: dict[int, int] = {}
    with session_scope(settings) as session:
        for batch in chunked(list(ids), 5000):
            found.update(session.execute(select(Article.id, Article.cluster_id).where(Article.id.in_(batch))).all())
    return found

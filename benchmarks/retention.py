"""Retention at steady state: 60 simulated days of feeds publishing every day under a 30-day window.

    .venv/bin/python benchmarks/retention.py [--feeds 1000] [--per-day 10] [--days 60] [--window 30]
        [--database-url URL] [--json]

The clock is injected: day ``d`` is ``start + d`` days, and every article is published at its
day's time, so the prune (``tasks.retention.run_periodic_prune`` with ``now`` = that day, the
service's periodic task) sees each article's true age. Each day, each feed's document lists its
newest ``2 * per_day`` items (yesterday's again, and the new ones), stored through parse's own
storage (``tasks.parse.store_entries``: tombstone check, insert); new articles are then given
what the pipeline derives (MinHash signatures and band rows, paragraph fingerprints) through the
storage functions that write them, and marked done. Then the day's prune runs and is timed.
Per day: rows of each table, database size, prune seconds. The window holds when row counts and
size at the last day are within 1.1x of day ``window`` and a prune costs the same late as early.
SQLite in a temporary folder unless ``--database-url`` names an empty database. On a PostgreSQL
server with autovacuum off (this machine's), each day ends with ``VACUUM ANALYZE``, outside the
measured prune, as autovacuum would (``--no-vacuum`` skips it): without it deleted rows' space is
never reused and the size cannot level off.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
from articles_db import store_settings
from sqlalchemy import func, insert, select, text, update

from schemas.db import get_engine, session_scope
from schemas.models import OK, Article, ArticleTombstone, Feed, MinhashBand, MinhashSignature, ParagraphFingerprints, utcnow
from schemas.payloads import RawEntry
from schemas.settings import DAY, Settings
from tasks.parse import store_entries
from tasks.retention import run_periodic_prune
from tasks.dedupe import SIGNATURE_KINDS
from tasks.storage.clusters import write_index

#: Feeds stored per transaction, as a few parse tasks' worth.
FEEDS_PER_TRANSACTION = 50
#: Words of a made-up article body (a feed's summary or a short article).
BODY_WORDS = 250
SIGNATURE_VALUES = 128
TABLES = {"articles": Article, "minhash_signatures": MinhashSignature, "minhash_bands": MinhashBand,
          "paragraph_fingerprints": ParagraphFingerprints, "article_tombstones": ArticleTombstone}


def entry(feed: int, number: int, published, rng: np.random.Generator) -> RawEntry:
    body = " ".join(f"w{w}" for w in rng.integers(0, 20_000, BODY_WORDS))
    key = f"guid:f{feed}-{number}"
    return RawEntry(entry_key=key, guid=key[5:], link=f"https://feed{feed}.example/{number}",
                    title=f"Item {number} of feed {feed}", author=None, published_at=published,
                    summary_html=f"<p>{body}</p>", content_html=None, tags=(), enclosures=(), raw_hash=f"{feed}-{number}")


def derive(settings: Settings, ids: list[int], feed_of: dict[int, int], rng: np.random.Generator) -> None:
    """What clean, dedupe and classify leave: text, index rows, fingerprints, done."""
    with session_scope(settings) as session:
        write_index(session, {
            article_id: {kind: rng.integers(0, 2**32, SIGNATURE_VALUES, dtype=np.uint32) for kind in SIGNATURE_KINDS}
            for article_id in ids
        })
        session.execute(insert(ParagraphFingerprints), [
            {"article_id": article_id, "feed_id": feed_of[article_id], "fingerprints": rng.integers(0, 2**62, 3).tolist()}
            for article_id in ids
        ])
        session.execute(
            update(Article).where(Article.id.in_(ids))
            .values(stage="done", status=OK, text=Article.raw_summary_html, content_hash="-")
        )


def vacuum_if_autovacuum_is_off(settings: Settings) -> bool:
    """PostgreSQL with autovacuum off: VACUUM ANALYZE, as autovacuum would; whether it ran."""
    engine = get_engine(settings.database_url)
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if connection.exec_driver_sql("SHOW autovacuum").scalar() != "off":
            return False
        connection.exec_driver_sql("VACUUM ANALYZE")
    return True


def database_bytes(settings: Settings) -> int:
    with session_scope(settings, read_only=True) as session:
        if session.get_bind().dialect.name == "postgresql":
            return int(session.scalar(text("SELECT pg_database_size(current_database())")))
        return int(session.scalar(text("PRAGMA page_count"))) * int(session.scalar(text("PRAGMA page_size")))


def row_counts(settings: Settings) -> dict[str, int]:
    with session_scope(settings, read_only=True) as session:
        return {name: int(session.scalar(select(func.count()).select_from(model))) for name, model in TABLES.items()}


def simulate(settings: Settings, feeds: int, per_day: int, days: int, vacuum: bool = True) -> list[dict]:
    rng = np.random.default_rng(7)
    with session_scope(settings) as session:
        feed_ids = list(session.scalars(
            insert(Feed).returning(Feed.id, sort_by_parameter_order=True),
            [{"url": f"https://feed{i}.example/rss", "url_key": f"https://feed{i}.example/rss"} for i in range(feeds)],
        ))
    start = utcnow() - timedelta(days=days + 1)
    history: list[dict] = []
    for day in range(1, days + 1):
        now = start + timedelta(days=day)
        started = time.perf_counter()
        new_ids: list[int] = []
        feed_of: dict[int, int] = {}
        for chunk_start in range(0, feeds, FEEDS_PER_TRANSACTION):
            with session_scope(settings) as session:
                for feed in feed_ids[chunk_start:chunk_start + FEEDS_PER_TRANSACTION]:
                    listed = [entry(feed, number, now - timedelta(seconds=DAY * (day * per_day - number) / per_day), rng)
                              for number in range(max(0, (day - 2) * per_day), day * per_day)]
                    ids, _ = store_entries(session, feed, None, listed)
                    new_ids.extend(ids)
                    feed_of.update(dict.fromkeys(ids, feed))
        for chunk_start in range(0, len(new_ids), 1000):
            derive(settings, new_ids[chunk_start:chunk_start + 1000], feed_of, rng)
        stored_seconds = time.perf_counter() - started
        started = time.perf_counter()
        report = run_periodic_prune(settings, now=now)
        prune_seconds = time.perf_counter() - started
        vacuumed = vacuum and vacuum_if_autovacuum_is_off(settings)
        row = {"day": day, "stored": len(new_ids), "store_seconds": round(stored_seconds, 2),
               "pruned": report.removed, "prune_seconds": round(prune_seconds, 3),
               "tombstones_expired": report.tombstones_expired, "vacuumed": vacuumed,
               "database_mb": round(database_bytes(settings) / 2**20, 1), **row_counts(settings)}
        history.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return history


def summary(history: list[dict], window: int) -> dict:
    at_window, last = history[window - 1], history[-1]
    after = [row["prune_seconds"] for row in history[window:]]
    return {
        "articles_ratio": round(last["articles"] / at_window["articles"], 3),
        "bands_ratio": round(last["minhash_bands"] / at_window["minhash_bands"], 3),
        "size_ratio": round(last["database_mb"] / at_window["database_mb"], 3),
        "prune_seconds_first_after_window": history[window]["prune_seconds"] if after else None,
        "prune_seconds_last": last["prune_seconds"],
        "prune_seconds_median_after_window": float(np.median(after)) if after else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--per-day", type=int, default=10)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--window", type=int, default=30, help="FEEDMILL_RETENTION in days")
    parser.add_argument("--database-url")
    parser.add_argument("--no-vacuum", action="store_true", help="no VACUUM ANALYZE on PostgreSQL without autovacuum")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        settings = replace(store_settings(Path(home), args.database_url), retention=args.window * DAY)
        history = simulate(settings, args.feeds, args.per_day, args.days, vacuum=not args.no_vacuum)
        result = {"feeds": args.feeds, "per_day": args.per_day, "days": args.days, "window": args.window,
                  "backend": settings.database_url.split(":", 1)[0], "days_measured": history,
                  "summary": summary(history, args.window)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()

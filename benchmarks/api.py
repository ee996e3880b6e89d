"""Read API latency: p50/p95 of a filtered list and of a search over N stored articles, through a
real ``feedmill web`` process (docs/performance.md, "Read API").

Synthetic finished articles are inserted straight into a fresh PostgreSQL database (or the given
one): titles and texts drawn from a Zipf-distributed made-up vocabulary, a language, a topic, a
place and a tag each. Then each kind of request is timed over HTTP with one keep-alive client:

- list: ``language`` + ``topic`` filters, ``limit=100``, from a random cursor position;
- search: ``q`` = a word found in about 1% of articles, ranked (no cursor), ``limit=100``,
  and the same with a ``language`` filter.

    .venv/bin/python benchmarks/api.py --articles 100000
    .venv/bin/python benchmarks/api.py --articles 2000 --requests 20 --backend sqlite   # tiny
    .venv/bin/python benchmarks/api.py --database-url postgresql://.../db   # filled once, kept: A/B runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from articles_db import add_feed, store_settings
from sqlalchemy import func, insert, select, text

from schemas.db import get_engine, session_scope
from schemas.models import OK, Article, utcnow
from workers.web.api import encode_cursor

ADMIN_URL = os.environ.get("FEEDMILL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
LANGUAGES, TOPICS = ("en", "fr", "de", "es"), ("politics", "business", "sport", "technology", "health")
PLACES, TAGS = ("Paris", "London", "Berlin", "Madrid", "Rome"), ("world", "local", "opinion")


def vocabulary(rng: random.Random, size: int = 20000) -> list[str]:
    return list(dict.fromkeys(
        "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 5)))
        for _ in range(size * 2)
    ))[:size]


def fill(settings, count: int, rng: random.Random) -> list[str]:  # type: ignore[no-untyped-def]
    """Insert ``count`` finished articles; return the vocabulary, most frequent first."""
    words = vocabulary(rng)
    weights = [1 / (rank + 1) for rank in range(len(words))]
    feeds = [add_feed(settings, f"https://bench.example/{n}.xml") for n in range(20)]
    now = utcnow()
    for start in range(0, count, 2000):
        rows = []
        for i in range(start, min(count, start + 2000)):
            drawn = rng.choices(words, weights, k=90)
            rows.append({
                "feed_id": feeds[i % len(feeds)], "entry_key": f"bench-{i}", "raw_hash": "-", "revision": 1,
                "title": " ".join(drawn[:8]).capitalize(), "text": " ".join(drawn[8:]) + ".",
                "language": LANGUAGES[i % len(LANGUAGES)], "topics": [[rng.choice(TOPICS), 0.8]],
                "places": [rng.choice(PLACES)], "tags": [rng.choice(TAGS)], "cluster_id": None,
                "stage": "done", "status": OK, "change_seq": i + 2, "published_at": now, "created_at": now,
                "updated_at": now,
            })
        with session_scope(settings) as session:
            session.execute(insert(Article), rows)
    with session_scope(settings) as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT setval('article_change_seq', :n)"), {"n": count + 2})
        else:
            session.execute(text("UPDATE article_change_counter SET last_seq = :n"), {"n": count + 2})
    with get_engine(settings.database_url).connect() as connection:
        connection.execute(text("ANALYZE"))
        connection.commit()
    return words


def timed(client: httpx.Client, path: str, params_of, requests: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    for _ in range(5):  # warm the server and the caches
        client.get(path, params=params_of())
    seconds = []
    found = 0
    for _ in range(requests):
        params = params_of()
        begin = time.perf_counter()
        response = client.get(path, params=params)
        seconds.append(time.perf_counter() - begin)
        response.raise_for_status()
        found += len(response.json()["items"])
    seconds.sort()
    return {"p50_ms": round(statistics.median(seconds) * 1000, 1),
            "p95_ms": round(seconds[int(0.95 * (len(seconds) - 1))] * 1000, 1),
            "items_per_answer": round(found / requests, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--port", type=int, default=18931)
    parser.add_argument("--database-url", help="use (and keep) this PostgreSQL database, filled only if it has no articles")
    args = parser.parse_args()
    rng = random.Random(20)
    home = Path(tempfile.mkdtemp(prefix="feedmill-bench-api-"))
    database = None
    if args.backend == "postgres" and not args.database_url:
        import psycopg

        database = f"feedmill_bench_api_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
    url = args.database_url or (ADMIN_URL.rsplit("/", 1)[0] + f"/{database}" if database else None)
    web = None
    try:
        settings = store_settings(home, url)
        begin = time.perf_counter()
        with session_scope(settings, read_only=True) as session:
            stored = session.scalar(select(func.count()).select_from(Article))
        if stored:  # a kept database: the same words, drawn as fill drew them
            words, args.articles = vocabulary(rng), stored
        else:
            words = fill(settings, args.articles, rng)
        filled = time.perf_counter() - begin
        env = os.environ | {"FEEDMILL_HOME": str(home), "FEEDMILL_DATABASE_URL": settings.database_url,
                            "FEEDMILL_API_TOKEN": "bench"}
        web = subprocess.Popen([sys.executable, "-m", "workers", "web", "--port", str(args.port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{args.port}"
        with httpx.Client(base_url=base, headers={"Authorization": "Bearer bench"}, timeout=30) as client:
            for _ in range(150):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            # A word in about 1% of articles: a Zipf rank whose expected article frequency is near 1%.
            searched = words[300:320]

            def cursor() -> str:
                seq = rng.randint(2, args.articles)
                return encode_cursor((seq, 0))

            results = {
                "list_filtered": timed(client, "/api/v1/articles", lambda: {
                    "language": rng.choice(LANGUAGES), "topic": rng.choice(TOPICS), "limit": 100,
                    "cursor": cursor()}, args.requests),
                "search_ranked": timed(client, "/api/v1/articles", lambda: {
                    "q": rng.choice(searched), "limit": 100}, args.requests),
                "search_ranked_filtered": timed(client, "/api/v1/articles", lambda: {
                    "q": rng.choice(searched), "language": rng.choice(LANGUAGES), "limit": 100}, args.requests),
                "search_by_cursor": timed(client, "/api/v1/articles", lambda: {
                    "q": rng.choice(searched), "limit": 100, "cursor": cursor()}, args.requests),
            }
        print(json.dumps({"backend": args.backend, "articles": args.articles, "requests": args.requests,
                          "fill_seconds": round(filled, 1), **results}, indent=2))
    finally:
        if web is not None:
            web.terminate()
            web.wait(timeout=20)
        if database:
            import psycopg

            get_engine(url).dispose()
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    main()

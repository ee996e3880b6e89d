"""What one 304 costs the fetch stage: SQL statements, transactions and milliseconds of ``run_fetch``.

    .venv/bin/python benchmarks/fetch_304.py [--database-url URL] [--polls 50] [--json]

One feed of 50 entries on the local publisher is fetched and parsed once; then
it is claimed and fetched ``--polls`` times more, each answered ``304``, and
every ``run_fetch`` call is counted (SQLAlchemy engine events) and timed. The
median is reported beside the fastest call, which other work on the machine
moves least. SQLite in a temporary folder unless ``--database-url`` names an
empty database.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

from articles_db import add_feed, store_settings
from corpus import build_corpus, render_rss
from publisher import Publisher
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tasks.fetch import run_fetch
from tasks.parse import run_parse
from workers.scheduler import claim_feeds


def measure(database_url: str | None, polls: int) -> dict[str, float]:
    counted = {"statements": 0, "transactions": 0}

    def on_statement(*_: object) -> None:
        counted["statements"] += 1

    def on_begin(*_: object) -> None:
        counted["transactions"] += 1

    publisher = Publisher(["127.0.0.1"])
    try:
        with tempfile.TemporaryDirectory() as home:
            settings = store_settings(Path(home), database_url)
            # The publisher is on loopback; one feed, so the spacing between its polls is not measured.
            settings = dataclasses.replace(settings, allow_private_networks=True, host_min_interval=0.0)
            (entries,) = build_corpus(1, 50, None).feeds
            publisher.publish("/feed", render_rss("Benchmark feed", "https://news.example/", entries))
            add_feed(settings, f"http://127.0.0.1:{publisher.port}/feed")
            for poll_id in claim_feeds(settings, due_only=False):
                run_fetch(settings, poll_id)
                run_parse(settings, poll_id)
            event.listen(Engine, "before_cursor_execute", on_statement)
            event.listen(Engine, "begin", on_begin)
            times, statements, transactions = [], [], []
            try:
                for _ in range(polls):
                    (poll_id,) = claim_feeds(settings, due_only=False)
                    counted.update(statements=0, transactions=0)
                    started = time.perf_counter()
                    step = run_fetch(settings, poll_id)
                    times.append(1000 * (time.perf_counter() - started))
                    if step.parse or step.wait_seconds is not None:
                        raise RuntimeError(f"expected a 304, got {step}")
                    statements.append(counted["statements"])
                    transactions.append(counted["transactions"])
            finally:
                event.remove(Engine, "before_cursor_execute", on_statement)
                event.remove(Engine, "begin", on_begin)
    finally:
        publisher.close()
    return {
        "statements": statistics.median(statements),
        "transactions": statistics.median(transactions),
        "median_ms": round(statistics.median(times), 2),
        "min_ms": round(min(times), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url")
    parser.add_argument("--polls", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.database_url, args.polls)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"one 304: {result['statements']:g} statements in {result['transactions']:g} transactions, "
              f"median {result['median_ms']} ms, fastest {result['min_ms']} ms")


if __name__ == "__main__":
    main()

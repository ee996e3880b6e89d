"""Per-article dedupe time at 10k and at 100k stored articles: it must stay flat.

    .venv/bin/python benchmarks/dedupe_scale.py [--database-url URL] [--sizes 10000,100000] [--json]

Generated text (words drawn from a Zipf-distributed vocabulary, like news
prose; a tenth of the articles are edited copies of stored ones) fills the
store through the real dedupe stage; at each size, ``--probe`` further
articles are deduped and timed in batches of 200, as the stage runs them. The
mean is what a batch costs on average; the median batch is less moved by
other work on the machine, so both are reported.
SQLite in a temporary folder unless ``--database-url`` names an empty database.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from articles_db import (
    add_articles,
    add_feed,
    analyze,
    clusters_of,
    dedupe_all,
    dedupe_timed,
    store_settings,
)

VOCABULARY = 30_000
WORDS_PER_ARTICLE = (150, 600)
COPY_SHARE = 0.1
#: Articles per timed batch, as the stage runs them (FEEDMILL_BATCH_SIZE's default).
BATCH = 200


class TextSource:
    """Reproducible generated articles: fresh ones, and edited copies of earlier ones."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.words = np.array([f"w{i}" for i in range(VOCABULARY)])
        weights = 1.0 / np.arange(1, VOCABULARY + 1) ** 1.1
        self.weights = weights / weights.sum()
        self.made: list[str] = []

    def fresh(self) -> str:
        count = self.rng.integers(*WORDS_PER_ARTICLE)
        return " ".join(self.rng.choice(self.words, size=count, p=self.weights))

    def copy(self) -> str:
        tokens = self.made[self.rng.integers(len(self.made))].split()
        tokens = tokens[: max(20, len(tokens) * 4 // 5)]
        for i in self.rng.choice(len(tokens), size=len(tokens) // 20, replace=False):
            tokens[i] = str(self.rng.choice(self.words))
        return "Dateline - " + " ".join(tokens)

    def articles(self, count: int) -> list[tuple[str, str]]:
        texts = []
        for _ in range(count):
            text = self.copy() if self.made and self.rng.random() < COPY_SHARE else self.fresh()
            self.made.append(text)
            texts.append(("", text))
        return texts


def measure(sizes: list[int], probe: int, seed: int, database_url: str | None) -> dict:
    source = TextSource(seed)
    results = []
    with tempfile.TemporaryDirectory() as home:
        settings = store_settings(Path(home), database_url)
        feed_id = add_feed(settings, "https://generated.example/feed")
        stored = 0
        for size in sizes:
            fill = add_articles(settings, feed_id, source.articles(size - stored))
            dedupe_all(settings, fill)
            analyze(settings)
            probe_ids = add_articles(settings, feed_id, source.articles(probe))
            batch_seconds = dedupe_timed(settings, probe_ids, BATCH)
            linked = sum(1 for aid, cid in clusters_of(settings, probe_ids).items() if cid != aid)
            stored = size + probe
            results.append({
                "stored_articles": size,
                "probe_articles": probe,
                "ms_per_article": round(1000 * sum(batch_seconds) / probe, 3),
                "median_batch_ms_per_article": round(1000 * float(np.median(batch_seconds)) / BATCH, 3),
                "probe_linked_as_copies": linked,
            })
    backend = (database_url or "sqlite").split(":", 1)[0]
    return {
        "database": backend,
        "results": results,
        "ratio_last_to_first": round(results[-1]["ms_per_article"] / results[0]["ms_per_article"], 3),
        "median_ratio_last_to_first": round(
            results[-1]["median_batch_ms_per_article"] / results[0]["median_batch_ms_per_article"], 3
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="an empty database to use instead of a temporary SQLite file")
    parser.add_argument("--sizes", default="10000,100000", help="store sizes to time at, ascending")
    parser.add_argument("--probe", type=int, default=2000, help="articles timed at each size")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    report = measure(sizes, args.probe, args.seed, args.database_url)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    for row in report["results"]:
        print(f"{row['stored_articles']:>7} stored: {row['ms_per_article']:.3f} ms per article "
              f"(median batch {row['median_batch_ms_per_article']:.3f}; "
              f"{row['probe_linked_as_copies']} of {row['probe_articles']} linked as copies)")
    print(f"ratio: {report['ratio_last_to_first']} (of medians: {report['median_ratio_last_to_first']}) "
          f"on {report['database']}")


if __name__ == "__main__":
    main()

"""Dedupe with real workers: concurrent copies of one story, export and ``feedmill clusters``;
and the BBC News evaluation when its corpus is present."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from schemas.settings import Settings
from tests.conftest import (
    ROOT,
    Publisher,
    WorkerProcess,
    export,
    feedmill,
    make_settings,
    ok,
    rss,
)

FEEDS, STORIES = 4, 12




def wire_story(number: int, outlet: int) -> str:
    """Story ``number`` as outlet ``outlet`` runs it: its own dateline, a changed word, its own footer."""
    rng = random.Random(number)
    tokens = [f"{rng.choice('bdfgklmnprst')}{rng.choice('aeiou')}{rng.randrange(90)}" for _ in range(160)]
    tokens[outlet * 7] = "edited"
    return f"<p>CITY{outlet} (Outlet {outlet}) - {' '.join(tokens)}.</p><p>Footer of outlet {outlet}.</p>"


def test_concurrent_workers_keep_one_first_seen_copy_per_story(
    settings: Settings, publisher: Publisher, start_worker: Callable[..., WorkerProcess]
) -> None:
    """Several feeds carry the same stories; their batches meet in different worker processes."""
    urls = [
        publisher.add(
            f"/outlet{outlet}.xml",
            rss([
                {"title": f"Story {n} at outlet {outlet}", "guid": f"o{outlet}-s{n}",
                 "link": f"https://outlet{outlet}.example/s{n}", "description": wire_story(n, outlet)}
                for n in range(STORIES)
            ]),
        )
        for outlet in range(FEEDS)
    ]
    ok(feedmill(settings, "feeds", "add", *urls))
    start_worker(settings, concurrency=2)
    start_worker(settings, concurrency=2)
    ok(feedmill(settings, "run", "--once", "--no-workers"))

    articles = export(settings)
    assert len(articles) == FEEDS * STORIES
    by_story = defaultdict(list)
    for article in articles:
        by_story[article["title"].split(" at ")[0]].append(article)
    for copies in by_story.values():
        first_seen = [a for a in copies if a["duplicate_of"] is None]
        assert len(first_seen) == 1, [(a["id"], a["duplicate_of"]) for a in copies]
        head = first_seen[0]["id"]
        assert all(a["cluster_id"] == head for a in copies)
        assert sorted(a["duplicate_of"] for a in copies if a["id"] != head) == [head] * (FEEDS - 1)
        assert {a["duplicate_reason"] for a in copies if a["id"] != head} == {"near"}

    listed = json.loads(ok(feedmill(settings, "clusters", "--json", "--limit", "5")))
    assert len(listed) == 5 and all(c["size"] == FEEDS for c in listed)
    assert all(c["feeds"] == sorted(urls) for c in listed)
    text = ok(feedmill(settings, "clusters", "--limit", "1"))
    assert text.startswith(f"cluster {listed[0]['cluster_id']}: {FEEDS} articles from {FEEDS} feed(s): Story ")
    assert text.count("[near]") == FEEDS - 1 and text.count("[first seen]") == 1


def test_clusters_on_an_empty_store_and_bad_options(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert ok(feedmill(settings, "clusters")) == "no story cluster has 2 or more articles\n"
    assert json.loads(ok(feedmill(settings, "clusters", "--json"))) == []
    bad = feedmill(settings, "clusters", "--limit", "0")
    assert bad.returncode != 0 and "--limit" in bad.stderr and bad.stderr.count("\n") <= 2


def test_bbc_evaluation_meets_its_targets(bbc_corpus: Path) -> None:
    """A subsample of benchmarks/dedupe_bbc.py: planted copies of 150 articles among all 2,225."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dedupe_bbc.py"), "--corpus", str(bbc_corpus),
         "--sample", "150", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["planted_copies"] == 600
    assert scores["planted_precision"] >= 0.99 and scores["planted_recall"] >= 0.95, scores
    assert scores["corpus_same_story_pairs_found"] == scores["corpus_same_story_pairs"] > 150
    assert scores["clusters_merging_unrelated_stories"] == 0, scores["unrelated_merges"]


def test_hard_bbc_evaluation_meets_its_targets(bbc_corpus: Path) -> None:
    """One planted set of benchmarks/dedupe_hard.py: syndication's copies, arriving in any order."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dedupe_hard.py"), "--corpus", str(bbc_corpus),
         "--seeds", "1", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )
    assert result.returncode == 0, result.stderr
    (scores,) = json.loads(result.stdout)["runs"]
    assert scores["copies"] > 120
    assert scores["precision"] >= 0.99 and scores["recall"] >= 0.9, scores
    assert all(kind["recall"] >= 0.75 for kind in scores["by_kind"].values()), scores["by_kind"]
    assert scores["marked_as_expected"] >= 0.95, scores


def test_band_layouts_benchmark_finds_the_copies_it_counts(bbc_corpus: Path) -> None:
    """benchmarks/band_layouts.py (its figures are in docs/dedupe.md) on one planted set, so it
    cannot rot: the layout in use finds every copy the one before migration 0016 found, with
    half the band rows and no more false sharers."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "band_layouts.py"), "--corpus", str(bbc_corpus),
         "--seeds", "1", "--articles", "500", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    before, now = "before 0016: 2w 42x3, 3w 42x3, lead 20x3", "now: 2w 32x3, lead 20x3"
    assert all(counts[now] == counts[before] <= counts["copies"] for counts in report["copies_found"].values())
    assert sum(counts["copies"] for counts in report["copies_found"].values()) > 120
    assert report["sharers"][before]["band_rows"] == 104 and report["sharers"][now]["band_rows"] == 52
    assert report["sharers"][now]["sharers_per_article"] <= report["sharers"][before]["sharers_per_article"]

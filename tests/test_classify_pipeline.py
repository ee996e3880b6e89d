"""Classify end to end: rules, explain, a trained model and reprocess, with real workers.

Each scenario runs on the embedded default (SQLite and the filesystem
broker) and on PostgreSQL with Redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from schemas.db import session_scope
from schemas.models import Article, Feed, utcnow
from schemas.pipeline import ARTICLE_STAGES, article_stages_from, stage_named
from schemas.settings import Settings
from tests.conftest import (
    Publisher,
    WorkerProcess,
    export,
    feedmill,
    feedmill_env,
    ok,
    rss,
)
from tests.test_classify_model import write_labelled_csv
from workers.cli.reprocess import CONFIRM_ABOVE

NEWS = [
    {"title": "Striker scores late goal in cup final", "guid": "n1", "category": "Sport",
     "description": "<p>The striker scored a goal in stoppage time and the goalkeeper saved a penalty.</p>"},
    {"title": "Sponsored: the best casino bonuses", "guid": "n2",
     "description": "<p>Play now and win big with our partner casino.</p>"},
    {"title": "Sponsored: a message from our partner", "guid": "n3",
     "description": "<p>Our partner bank cut interest rates on savings.</p>"},
]
BLOG = [
    {"title": "How to bake bread", "guid": "b1",
     "description": "<p>Knead flour, yeast and water into a dough, let it rise and bake it.</p>"},
    {"title": "Sponsored: kitchen knives", "guid": "b2", "description": "<p>Buy our knives.</p>"},
]


def wait_until_done(settings: Settings, worker: WorkerProcess, timeout: float = 90) -> list[Article]:
    """Every article through every stage (as a worker processes reprocessed ones)."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(settings) as session:
            articles = list(session.scalars(select(Article).order_by(Article.id)))
        if all(a.stage == "done" for a in articles):
            return articles
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.2)


def answering(settings: Settings, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line with ``answer`` typed at its prompt."""
    return subprocess.run([sys.executable, "-m", "workers", *args], input=answer, env=feedmill_env(settings),
                          cwd=settings.home, capture_output=True, text=True, timeout=120, check=False)


def by_title(records: list[dict]) -> dict[str, dict]:
    return {r["title"]: r for r in records}


def test_rules_model_and_reprocess_end_to_end(
    settings: Settings, publisher: Publisher, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    news = publisher.add("/news.xml", rss(NEWS), etag='"n-1"')
    blog = publisher.add("/blog.xml", rss(BLOG))
    ok(feedmill(settings, "feeds", "add", news, blog))
    ok(feedmill(settings, "rules", "add", "drop", "--keyword", "sponsored", "--field", "title"))  # rule 1, global
    ok(feedmill(settings, "rules", "add", "keep", "--keyword", "partner bank", "--feed", news))  # rule 2
    ok(feedmill(settings, "rules", "add", "tag", "--tag", "sport", "--regex", "^Sport$", "--field", "tags"))  # rule 3
    ok(feedmill(settings, "rules", "add", "tag", "--tag", "recipe", "--keyword", "bake", "--feed", blog))  # rule 4

    summary = json.loads(ok(feedmill(settings, "run", "--once", "--json", "--concurrency", "2")))
    assert summary["articles_new"] == 5 and summary["articles_done"] == 5

    exported = by_title(export(settings))
    assert set(exported) == {
        "Striker scores late goal in cup final", "Sponsored: a message from our partner", "How to bake bread"
    }
    assert exported["Striker scores late goal in cup final"]["tags"] == ["Sport", "sport"]
    assert exported["Striker scores late goal in cup final"]["topics"][0] == "sport"
    striker_record = exported["Striker scores late goal in cup final"]
    assert 0 < striker_record["topic_confidence"] == striker_record["topic_scores"]["sport"] <= 1
    assert all(r["topics"] and r["topic_confidence"] > 0 for r in exported.values())  # five words or more: a topic
    assert exported["How to bake bread"]["tags"] == ["recipe"]
    assert exported["Sponsored: a message from our partner"]["dropped_by"] is None  # kept by rule 2
    everything = by_title(json.loads(line) for line in ok(feedmill(settings, "export", "--include-dropped")).splitlines())
    assert everything["Sponsored: the best casino bonuses"]["dropped_by"] == 1
    assert everything["Sponsored: kitchen knives"]["dropped_by"] == 1
    casino_id = everything["Sponsored: the best casino bonuses"]["id"]

    # Polled again with new content headers: the dropped entry is a tombstone, not new.
    publisher.add("/news.xml", rss(NEWS), etag='"n-2"')
    again = json.loads(ok(feedmill(settings, "run", "--once", "--json")))
    assert again["articles_new"] == 0 and again["articles_updated"] == 0
    assert everything == by_title(json.loads(line) for line in ok(feedmill(settings, "export", "--include-dropped")).splitlines())

    striker = ok(feedmill(settings, "explain", str(exported["Striker scores late goal in cup final"]["id"])))
    assert "topics from: default lexicon (17 IPTC topics)" in striker and "language: en" in striker
    sport_line = next(line for line in striker.splitlines() if line.startswith(" * sport"))
    assert "goal" in sport_line and "goalkeeper" in sport_line
    assert "rule 3 (global): tag 'sport' on regex '^Sport$' in tags" in striker and "tags: Sport, sport" in striker

    explained = json.loads(ok(feedmill(settings, "explain", str(casino_id), "--json")))
    assert explained["classifier"]["kind"] == "lexicon" and explained["dropped_by"] == 1
    assert [r["id"] for r in explained["rules"]] == [1] and explained["stored_is_current"]
    text = ok(feedmill(settings, "explain", str(casino_id)))
    assert "rule 1 (global): drop on keyword 'sponsored' in title" in text and "dropped: by rule 1" in text

    # A worker already running picks up a newly trained model and a removed rule,
    # without a restart; reprocess relabels every stored article.
    article_queues = ",".join(dict.fromkeys(stage_named(name).queue for name in ARTICLE_STAGES))
    worker = start_worker(settings, concurrency=2, queues=article_queues)
    ok(feedmill(settings, "classifier", "train", str(write_labelled_csv(tmp_path / "labelled.csv")), "--holdout", "0"))
    ok(feedmill(settings, "rules", "remove", "1"))
    stale = json.loads(ok(feedmill(settings, "explain", str(casino_id), "--json")))
    assert stale["classifier"] == {"kind": "model", "version": 1, "labels": ["cooking", "football", "markets"]}
    assert stale["dropped_by"] is None and not stale["stored_is_current"]

    dry = ok(feedmill(settings, "reprocess", "--stage", "classify", "--dry-run"))
    assert dry.startswith("would send 5 article(s) go back to classify")
    result = json.loads(ok(feedmill(settings, "reprocess", "--stage", "classify", "--json")))
    assert result == {"stage": "classify", "articles": 5, "batches": 1, "dry_run": False, "feed_url": None, "since": None}
    articles = wait_until_done(settings, worker)
    assert all(a.classifier_version == 1 and a.dropped_by is None for a in articles)
    relabelled = by_title(export(settings))
    assert len(relabelled) == 5
    assert relabelled["Striker scores late goal in cup final"]["topics"][0] == "football"
    assert relabelled["How to bake bread"]["topics"][0] == "cooking"
    assert relabelled["How to bake bread"]["text"] == exported["How to bake bread"]["text"]
    assert ok(feedmill(settings, "explain", str(casino_id))).count("trained model v1") == 1

    # One feed, from clean on: only its articles go round again, to the same result.
    from_clean = ok(feedmill(settings, "reprocess", "--stage", "clean", "--feed", blog))
    assert "2 article(s) of " + blog + f" go back to clean and then run {' -> '.join(article_stages_from('clean'))} again" in from_clean
    assert "reset 2 article(s) to clean; enqueued 1 batch(es) on the clean queue" in from_clean
    wait_until_done(settings, worker)
    assert by_title(export(settings)) == relabelled


def test_reprocess_asks_before_bulk_changes(sqlite_settings: Settings) -> None:
    ok(feedmill(sqlite_settings, "feeds", "add", "https://a.example.org/feed"))
    now = utcnow()
    with session_scope(sqlite_settings) as session:
        feed_id = session.scalar(select(Feed.id))
        session.add_all(
            Article(feed_id=feed_id, entry_key=f"k{i}", raw_hash="h", title=f"t{i}", text="x", stage="done",
                    status="ok", created_at=now - timedelta(days=10 if i % 2 else 0))
            for i in range(2 * CONFIRM_ABOVE + 2)
        )
    refused = answering(sqlite_settings, "n\n", "reprocess", "--stage", "dedupe")
    assert refused.returncode == 1 and "feedmill: aborted" in refused.stderr
    assert f"change {2 * CONFIRM_ABOVE + 2} articles? [y/N]" in refused.stderr
    assert f"{2 * CONFIRM_ABOVE + 2} article(s) go back to dedupe" in refused.stdout
    with session_scope(sqlite_settings) as session:
        assert set(session.scalars(select(Article.stage))) == {"done"}

    recent = answering(sqlite_settings, "y\n", "reprocess", "--stage", "dedupe", "--since", "2d")
    assert recent.returncode == 0, recent.stderr
    assert f"reset {CONFIRM_ABOVE + 1} article(s) to dedupe" in recent.stdout
    assert feedmill(sqlite_settings, "reprocess", "--stage", "dedupe", "--since", "2d", "--yes").returncode == 0
    with session_scope(sqlite_settings) as session:
        stages = {(a.stage, a.status, a.created_at > now - timedelta(days=2)) for a in session.scalars(select(Article))}
    assert stages == {("dedupe", "pending", True), ("done", "ok", False)}

    nothing = feedmill(sqlite_settings, "reprocess", "--stage", "classify", "--since", "2999-01-01", "--json")
    assert json.loads(nothing.stdout)["articles"] == 0
    bad = feedmill(sqlite_settings, "reprocess", "--stage", "classify", "--since", "yesterday")
    assert bad.returncode != 0 and "neither an ISO 8601 date/time nor an age" in bad.stderr

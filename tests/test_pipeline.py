"""End to end: real ``feedmill`` commands, real Celery workers, a local publisher.

Each scenario runs on the embedded default (SQLite and the filesystem
broker) and on PostgreSQL with Redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from celery import Celery

from schemas.settings import Settings
from tests.conftest import (
    EXAMPLES,
    Publisher,
    WorkerProcess,
    export,
    feedmill,
    ok,
    rss,
)

SEED_TITLES = {
    "Pro-Iran Factions Keep up Escalation against Iraqi President, PM, US",
    "At Least 34 People Killed in Israeli Strikes in Gaza",
}






def test_run_once_stores_seed_articles_once_cleaned(settings: Settings, publisher: Publisher) -> None:
    url = publisher.add("/seed.xml", (EXAMPLES / "seed-news.xml").read_bytes(), etag='"seed-1"')
    assert "added 1 feed(s)" in ok(feedmill(settings, "feeds", "add", url))

    summary = json.loads(ok(feedmill(settings, "run", "--once", "--json", "--concurrency", "2")))
    assert summary["feeds_polled"] == 1 and summary["feed_errors"] == 0
    assert summary["articles_new"] == 2 and summary["articles_done"] == 2

    articles = export(settings)
    assert {a["title"] for a in articles} == SEED_TITLES
    for article in articles:
        assert article["stage"] == "done" and article["status"] == "ok"
        paragraphs = article["text"].split("\n\n")
        assert article["title"] not in paragraphs
        assert "TT" not in paragraphs and "20" not in paragraphs
        assert len(paragraphs) == len(set(paragraphs))
        assert article["images"] and all(not i["caption"] or i["caption"] not in article["text"] for i in article["images"])
        assert article["language"] == "en"
        assert article["topics"][0] == "conflict_war_peace"
        assert article["duplicate_of"] is None and len(article["content_hash"]) == 64
        assert "utm_" not in article["url"]
        assert article["published_at"].endswith("Z")
    by_title = {a["title"]: a for a in articles}
    assert {"IQ", "US"} <= set(by_title["Pro-Iran Factions Keep up Escalation against Iraqi President, PM, US"]["places"])
    assert "PS" in by_title["At Least 34 People Killed in Israeli Strikes in Gaza"]["places"]

    # Again: the publisher answers 304 and nothing new is stored.
    again = json.loads(ok(feedmill(settings, "run", "--once", "--json")))
    assert again["articles_new"] == 0 and again["articles_updated"] == 0
    assert again["polls"][0]["status"] == "not_modified"
    assert len(export(settings)) == 2


def test_run_once_reports_broken_feeds_and_processes_the_rest(settings: Settings, publisher: Publisher) -> None:
    good = publisher.add("/good.xml", rss([{"title": "Fine", "guid": "g1", "description": "<p>A real article body.</p>"}]))
    not_feed = publisher.add("/page.xml", rss([{"title": "Soon gone", "guid": "p1"}]))
    missing = publisher.url("/missing.xml")
    ok(feedmill(settings, "feeds", "add", good, not_feed, missing))
    publisher.add("/page.xml", "<html><body>not a feed</body></html>", content_type="text/html")  # the feed became a page

    result = feedmill(settings, "run", "--once")
    out = result.stdout
    assert result.returncode == 1, f"{out}\n{result.stderr}"  # some feeds failed
    assert "polled 3 feed(s)" in out and "1 ok, 2 failed" in out
    assert f"failed: {missing}: HTTP 404 Not Found" in out
    assert f"failed: {not_feed}: not a" in out
    assert [a["title"] for a in export(settings)] == ["Fine"]

    listed = json.loads(ok(feedmill(settings, "feeds", "list", "--json")))
    errors = {f["url"]: f["consecutive_errors"] for f in listed}
    assert errors == {good: 0, not_feed: 1, missing: 1}


def test_workers_elsewhere_and_redelivered_tasks_change_nothing(
    settings: Settings, publisher: Publisher, start_worker: Callable[..., WorkerProcess]
) -> None:
    url = publisher.add("/seed.xml", (EXAMPLES / "seed-news.xml").read_bytes())
    ok(feedmill(settings, "feeds", "add", url))
    assert publisher.hits("/seed.xml") == 1  # `feeds add` looked at it once
    worker = start_worker(settings, concurrency=2)
    ok(feedmill(settings, "run", "--once", "--no-workers"))
    before = export(settings)
    assert len(before) == 2

    # Deliver every stage's message again, as a broker might after a lost ack.
    ids = [a["id"] for a in before]
    app = Celery("redeliver", broker=settings.broker_url)
    if settings.embedded_broker:
        from workers.celery_app import celery_config

        app.conf.update(celery_config(settings))
    sent = [
        app.send_task(name, args=[{"article_ids": ids}], queue=queue)
        for name, queue in (("feedmill.clean", "clean"), ("feedmill.dedupe", "dedupe"), ("feedmill.classify", "classify"))
    ]
    sent.append(app.send_task("feedmill.parse", args=[{"poll_id": 1}], queue="parse"))
    sent.append(app.send_task("feedmill.fetch", args=[{"poll_id": 1}], queue="fetch"))
    deadline = time.monotonic() + 60
    while not all(f"[{s.id}] succeeded" in worker.output() for s in sent):
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.2)
    assert export(settings) == before
    assert publisher.hits("/seed.xml") == 2  # one poll: the redelivered fetch and parse fetched nothing again

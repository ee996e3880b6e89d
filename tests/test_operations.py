"""Operating the pipeline end to end with real workers: a failure seen, fixed and re-queued;
``feeds poll``, ``requeue article`` and ``feeds remove``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from sqlalchemy import func, select

from schemas.db import session_scope
from schemas.models import PENDING, Article, Feed, Poll
from schemas.pipeline import article_stages_from
from schemas.settings import Settings
from tests.conftest import Publisher, WorkerProcess, export, feedmill, ok, rss

#: An operator's rule that passes the backtracking probe but times out on a long run of
#: digits followed, somewhere later, by a "y": the classify stage fails that article.
SLOW_RULE = r"(\d|[0-9])+y"
DIGITS = "7" * 70


def story(key: str, text: str) -> dict[str, str]:
    return {"title": f"Story {key}", "guid": key, "link": f"https://example.org/{key}",
            "description": f"<p>{text}</p>"}


def wait_until_settled(settings: Settings, expected: int, timeout: float = 60) -> dict[str, tuple[str, str]]:
    """Wait until ``expected`` articles are stored and none is pending; return key -> (stage, status)."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(settings) as session:
            rows = {title.split()[-1]: (stage, status) for title, stage, status in
                    session.execute(select(Article.raw_title, Article.stage, Article.status))}
            unfinished = session.scalar(select(func.count()).select_from(Poll).where(Poll.status.in_(["queued", "fetched"])))
        if len(rows) == expected and unfinished == 0 and all(status != PENDING for _, status in rows.values()):
            return rows
        assert time.monotonic() < deadline, f"not settled: {rows}, {unfinished} unfinished poll(s)"
        time.sleep(0.2)


def status_json(settings: Settings) -> dict:
    return json.loads(ok(feedmill(settings, "status", "--json")))


def test_a_failure_is_seen_fixed_requeued_and_stored(
    postgres_settings: Settings, publisher: Publisher, start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = postgres_settings
    url = publisher.add("/feed.xml", rss([story("a", "Plain news."), story("b", f"Serial {DIGITS} sold, says your agency."),
                                          story("c", "More plain news.")]))
    ok(feedmill(settings, "feeds", "add", url))
    ok(feedmill(settings, "rules", "add", "drop", "--regex", SLOW_RULE, "--field", "text"))
    start_worker(settings, concurrency=2)
    assert "polling 1 feed(s) now" in ok(feedmill(settings, "feeds", "poll", url))
    assert wait_until_settled(settings, 3) == {"a": ("done", "ok"), "b": ("classify", "failed"), "c": ("done", "ok")}

    seen = status_json(settings)
    assert seen["articles"] == {"done": {"ok": 2}, "classify": {"failed": 1}}
    assert seen["failures_open"] == {"classify": 1} and seen["last_hour"]["failures"] == {"classify": 1}
    assert seen["last_hour"]["articles_new"] == 3 and seen["last_hour"]["polls"] == {"parsed": 1}
    text = ok(feedmill(settings, "status"))
    assert "classify  failed 1" in text and "open failures: classify 1" in text
    [failure] = json.loads(ok(feedmill(settings, "failures", "list", "--json")))
    assert failure["stage"] == "classify" and failure["subject"].startswith("article ")
    assert "RuleTimeout: rule 1 took over" in failure["error"]

    ok(feedmill(settings, "rules", "remove", "1"))  # the cause goes away
    assert "re-queued 1 failure(s)" in ok(feedmill(settings, "requeue", "failed", "--yes"))
    assert wait_until_settled(settings, 3) == {key: ("done", "ok") for key in "abc"}
    assert status_json(settings)["failures_open"] == {}
    assert sorted(a["title"] for a in export(settings)) == ["Story a", "Story b", "Story c"]


def test_feeds_poll_requeue_article_and_remove(
    sqlite_settings: Settings, publisher: Publisher, start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = sqlite_settings
    same = "The same wire story about the harbour strike, sent by two feeds word for word."
    first = publisher.add("/first.xml", rss([story("x1", same)]))
    second = publisher.add("/second.xml", rss([story("y1", same), story("y2", "A council vote on bus lanes, only here.")]))
    ok(feedmill(settings, "feeds", "add", first, second))
    ok(feedmill(settings, "feeds", "pause", second))
    start_worker(settings, concurrency=1)
    polled = ok(feedmill(settings, "feeds", "poll", first, second))
    assert f"skipped {second}: paused" in polled and "enqueued 1 fetch(es)" in polled
    wait_until_settled(settings, 1)
    ok(feedmill(settings, "feeds", "resume", second))
    ok(feedmill(settings, "feeds", "poll", second))
    wait_until_settled(settings, 3)
    copies = {a["title"]: a for a in export(settings)}
    assert copies["Story y1"]["duplicate_of"] == copies["Story x1"]["id"] and copies["Story y2"]["duplicate_of"] is None

    y2 = copies["Story y2"]["id"]
    with session_scope(settings) as session:
        finished_at = session.scalar(select(Article.updated_at).where(Article.id == y2))
    partly = feedmill(settings, "requeue", "article", str(y2), "999", "--from-stage", "dedupe")
    out = partly.stdout
    assert partly.returncode == 1 and "no article 999 (the others were re-queued)" in partly.stderr  # an unknown id fails the command
    assert f"sending 1 article(s) back to dedupe, then {' -> '.join(article_stages_from('dedupe'))}" in out
    assert "skipped 999: no such article" in out and "reset 1 article(s) to dedupe, pending" in out
    assert wait_until_settled(settings, 3) == {"x1": ("done", "ok"), "y1": ("done", "ok"), "y2": ("done", "ok")}
    with session_scope(settings) as session:
        assert session.scalar(select(Article.updated_at).where(Article.id == y2)) > finished_at

    refused = feedmill(settings, "feeds", "remove", first)  # no terminal to say yes
    assert refused.returncode == 1 and "removing 1 feed(s) with 1 article(s), 1 poll(s)" in refused.stdout
    removed = ok(feedmill(settings, "feeds", "remove", first, "--yes"))
    assert "removed 1 feed(s), 1 article(s) and 1 poll(s); 1 article(s)" in removed
    # y1, finished and changed, went back to deliver (to be announced) and the worker finishes it.
    assert wait_until_settled(settings, 2)["y1"] == ("done", "ok")
    left = {a["title"]: a for a in export(settings)}
    y1 = copies["Story y1"]["id"]
    assert sorted(left) == ["Story y1", "Story y2"] and left["Story y2"] == copies["Story y2"]
    # y1 is now its story's first-seen article, and names the story.
    assert left["Story y1"] == {**copies["Story y1"], "duplicate_of": None, "duplicate_reason": None, "cluster": y1,
                                "cluster_id": y1}
    with session_scope(settings) as session:
        assert session.scalars(select(Feed.url)).all() == [second]
        assert session.scalar(select(func.count()).select_from(Poll)) == 1

    # A later copy of the story joins it and points at y1, an article that exists.
    third = publisher.add("/third.xml", rss([story("z1", same)]))
    ok(feedmill(settings, "feeds", "add", third))
    ok(feedmill(settings, "feeds", "poll", third))
    assert wait_until_settled(settings, 3)["z1"] == ("done", "ok")
    later = {a["title"]: a for a in export(settings)}["Story z1"]
    assert (later["duplicate_of"], later["cluster_id"]) == (y1, y1)

"""The clean stage against real databases and workers: learned furniture, full text.

Each test runs on the embedded default (SQLite, filesystem broker) and on
PostgreSQL with Redis.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import select

from schemas.db import session_scope
from schemas.models import Article, Feed, ParagraphFingerprints
from schemas.settings import Settings
from tasks.clean.stage import run_clean
from tasks.parse import parse_document, store_entries
from tests.conftest import Publisher, WorkerProcess, feedmill, ok, rss

FURNITURE = "Listen to this article. Sign in to save stories for later."






def _store(settings: Settings, feed_id: int, items: list[dict[str, str]]) -> list[int]:
    entries = parse_document(rss(items).encode(), None, None).entries
    with session_scope(settings) as session:
        new_ids, changed_ids = store_entries(session, feed_id, None, entries)
    return sorted(new_ids + changed_ids)


def _story(n: int, extra: str = "") -> dict[str, str]:
    body = (
        f"<p>{FURNITURE}</p><p>Story {n} opens with its own sentence about harbour number {n}.</p>"
        f"{extra}<p>Council officers said work on quay {n} would finish by spring.</p>"
    )
    return {"title": f"Story {n}", "guid": f"g{n}", "description": body.replace("<", "&lt;")}


def test_furniture_is_learned_per_feed_and_kept_across_batches(settings: Settings) -> None:
    with session_scope(settings) as session:
        feeds = [Feed(url="https://a.example/feed"), Feed(url="https://b.example/feed")]
        session.add_all(feeds)
        session.flush()
        a, b = feeds[0].id, feeds[1].id

    # Two articles: too few to call anything furniture.
    first = _store(settings, a, [_story(1), _story(2, "<p>Yes.</p>")])
    run_clean(settings, first)
    # A later batch of one: the stored fingerprints make three articles carrying the line.
    later = _store(settings, a, [_story(3, "<p>Yes.</p>")])
    run_clean(settings, later)
    # Another feed carrying the same line once learns nothing from feed a.
    other = _store(settings, b, [_story(9)])
    run_clean(settings, other)

    with session_scope(settings) as session:
        texts = dict(session.execute(select(Article.guid, Article.text).where(Article.feed_id == a)).all())
        other_text = session.scalar(select(Article.text).where(Article.feed_id == b))
        rows = session.scalar(select(ParagraphFingerprints.fingerprints).where(ParagraphFingerprints.article_id == later[0]))
    assert texts["g1"].startswith(FURNITURE) and texts["g2"].startswith(FURNITURE)
    assert texts["g3"] == (
        "Story 3 opens with its own sentence about harbour number 3.\n\nYes.\n\n"
        "Council officers said work on quay 3 would finish by spring."
    )
    assert other_text.startswith(FURNITURE)
    assert len(rows) == 4  # distinct short paragraphs of g3, furniture included


PAGE = """<!doctype html><html><head><title>{title} | Harbour Gazette</title>
<meta property="article:published_time" content="2024-03-05T09:30:00+00:00"></head>
<body><nav><a href="/">Home</a> <a href="/news">News</a> <a href="/sport">Sport</a></nav>
<header><h1>{title}</h1><p class="byline">By Ann Reporter</p></header>
<article>{paragraphs}</article>
<aside><h3>Most read</h3><ul><li><a href="/x">Another story entirely</a></li></ul></aside>
<footer>Copyright 2024 Harbour Gazette Ltd. All rights reserved.</footer></body></html>"""

PARAGRAPHS = [
    "The harbour board approved a plan on Tuesday to dredge the eastern channel before the summer season.",
    "Fishing crews have complained for two years that silt leaves their boats stranded at low tide.",
    "The work will cost about four million pounds and is expected to take eleven weeks to finish.",
    "Board members said the money would come from mooring fees rather than from local taxes.",
    "A public meeting on the timetable will be held next month in the town hall.",
]


def test_summary_only_feed_gets_full_text_from_the_page(
    settings: Settings, publisher: Publisher, start_worker: Callable[..., WorkerProcess]
) -> None:
    page = PAGE.format(title="Harbour to be dredged", paragraphs="".join(f"<p>{p}</p>" for p in PARAGRAPHS))
    publisher.add("/news/dredge.html", page, content_type="text/html; charset=utf-8")
    items = [
        {"title": "Harbour to be dredged", "guid": "s1", "link": publisher.url("/news/dredge.html"),
         "description": "The eastern channel will be dredged. Read more"},
        {"title": "Gone story", "guid": "s2", "link": publisher.url("/news/gone.html"),
         "description": "A story whose page has gone.", "pubDate": "Mon, 04 Mar 2024 10:00:00 GMT"},
    ]
    url = publisher.add("/feed.xml", rss(items))
    ok(feedmill(settings, "feeds", "add", url))
    assert "full text auto" in ok(feedmill(settings, "feeds", "set", url, "--full-text", "auto"))
    assert json.loads(ok(feedmill(settings, "feeds", "show", url, "--json")))["full_text"] == "auto"

    start_worker(settings, concurrency=2)
    summary = json.loads(ok(feedmill(settings, "run", "--once", "--json", "--no-workers")))
    assert summary["articles_done"] == 2

    with session_scope(settings) as session:
        articles = {a.title: a for a in session.scalars(select(Article))}
        dredge, gone = articles["Harbour to be dredged"], articles["Gone story"]
        assert dredge.text == "\n\n".join(PARAGRAPHS)
        assert dredge.summary == "The eastern channel will be dredged."
        assert dredge.clean_note is None
        assert dredge.published_at.isoformat() == "2024-03-05T00:00:00+00:00"  # the page's date: the entry had none
        assert gone.text == "A story whose page has gone."
        assert gone.clean_note == "full text: page fetch failed: HTTP 404 Not Found"
        assert gone.published_at.isoformat() == "2024-03-04T10:00:00+00:00"
        assert gone.status == "ok" and gone.stage == "done"
    assert publisher.hits("/news/dredge.html") == 1 and publisher.hits("/news/gone.html") == 1


def test_busy_host_defers_the_page(sqlite_settings: Settings, publisher: Publisher) -> None:
    from schemas.db import session_scope
    from tasks.fulltext import fetch_pages
    from tasks.storage.hosts import claim_host_slot, free_host_slot

    url = publisher.add("/news/busy.html", PAGE.format(title="Busy", paragraphs=""), content_type="text/html")
    with session_scope(sqlite_settings) as session:
        held = [claim_host_slot(session, sqlite_settings, "127.0.0.1", None) for _ in range(sqlite_settings.host_max_concurrent)]
    try:
        waiting = fetch_pages(sqlite_settings, [(7, url)])
        assert waiting.deferred == [7] and waiting.pages == {} and waiting.wait_seconds >= 1.0
        assert fetch_pages(sqlite_settings, [(7, url)], slot_wait=0.0).deferred == [7]
    finally:
        with session_scope(sqlite_settings) as session:
            for claim in held:
                free_host_slot(session, claim.slot_id)
    assert publisher.hits("/news/busy.html") == 0


def test_a_busy_host_never_holds_an_article_back_its_page_comes_later(
    settings: Settings, publisher: Publisher
) -> None:
    """Summary-only entries on a host that allows one request every 1.5 s: under `feedmill run`,
    every article goes through every stage on its summary first (an `article.created` with the
    summary), then its page is fetched in the host's turn and the article is cleaned again with
    it, and re-deduped, re-classified and re-sent (`article.updated` with the page's text)."""
    import signal
    import subprocess
    import sys
    import time

    from benchmarks.receiver import Receiver
    from tests.conftest import feedmill_env

    count = 5
    items = []
    for n in range(count):
        page = PAGE.format(title=f"Harbour story {n}",
                           paragraphs="".join(f"<p>Story {n}. {p}</p>" for p in PARAGRAPHS))
        publisher.add(f"/news/{n}.html", page, content_type="text/html; charset=utf-8")
        items.append({"title": f"Harbour story {n}", "guid": f"busy{n}", "link": publisher.url(f"/news/{n}.html"),
                      "description": f"Story {n}: the eastern channel will be dredged. Read more"})
    url = publisher.add("/busy.xml", rss(items))
    receiver = Receiver({})
    env = feedmill_env(settings) | {"FEEDMILL_HOST_MIN_INTERVAL": "1.5", "FEEDMILL_FULL_TEXT_EVERY": "1",
                                    "FEEDMILL_DELIVER_EVERY": "1"}
    try:
        ok(feedmill(settings, "feeds", "add", url))
        ok(feedmill(settings, "feeds", "set", url, "--full-text", "auto"))
        ok(feedmill(settings, "subscriptions", "add", "news", "--webhook", receiver.url))
        service = subprocess.Popen([sys.executable, "-m", "workers", "run", "--concurrency", "2"], env=env,
                                   cwd=settings.home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            first_done: set[int] = set()
            while True:
                with session_scope(settings) as session:
                    rows = session.execute(select(Article.id, Article.stage, Article.text, Article.page_due_at)).all()
                went_on = {i for i, stage, text, due in rows if stage == "done" and due is not None}
                if went_on and not first_done:  # status tells how many wait for their page
                    assert json.loads(ok(feedmill(settings, "status", "--json")))["pages_due"] >= 1
                first_done |= went_on
                if len(rows) == count and all(due is None and stage == "done" and "mooring fees" in (text or "")
                                              for _, stage, text, due in rows):
                    break
                assert service.poll() is None, service.stdout.read().decode()[-3000:]
                assert time.monotonic() < deadline, f"{rows}"
                time.sleep(0.2)
            while len([c for c in receiver.calls if c["status"] == 200]) < count + len(first_done):
                assert time.monotonic() < deadline, f"{len(receiver.calls)} calls"  # the updated events follow
                time.sleep(0.2)
        finally:
            service.send_signal(signal.SIGTERM)
            output = service.communicate(timeout=60)[0].decode()
        assert service.returncode == 0, output[-3000:]
    finally:
        receiver.close()
    # At most one page could go at once (the feed's own fetch had just used the host's turn):
    # the others went on with their summary first, finished, and were updated once their page came.
    assert len(first_done) >= count - 1
    events = [json.loads(call["body"]) for call in receiver.calls if call["status"] == 200]
    by_article: dict[int, list[dict]] = {}
    for event in events:
        by_article.setdefault(event["data"]["id"], []).append(event)
    for article_id in first_done:
        created, updated = by_article[article_id]
        assert created["type"] == "article.created" and "mooring fees" not in created["data"]["text"]
        assert updated["type"] == "article.updated" and "mooring fees" in updated["data"]["text"]
    assert publisher.hits("/busy.xml") >= 1 and all(publisher.hits(f"/news/{n}.html") == 1 for n in range(count))

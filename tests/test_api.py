"""The read API of ``feedmill web``, a real server process over a store a real run filled, on both backends:
the token, paging by cursor, search, filters, the cursor under concurrent ingest, OpenAPI."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx

from schemas.db import session_scope
from schemas.settings import Settings
from tasks.storage import changes
from tests.conftest import Publisher, WorkerProcess, export, feedmill, feedmill_env, free_port, ok, rss
from tests.test_operations import wait_until_settled

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SENTENCES = (
    "The city council in Paris approved a new budget for schools and hospitals.",
    "Shares rose on the London stock exchange after the bank reported higher profits.",
    "The football club won the cup final in Madrid after extra time.",
    "Scientists in Berlin published a study on climate change and rising sea levels.",
)


def word(rng: random.Random) -> str:
    """A made-up word: article texts that share nothing, so dedupe joins none of them."""
    return "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(3, 5)))


def items(feed: int, count: int, rng: random.Random, start: int = 0) -> list[dict[str, str]]:
    published = datetime(2026, 11, 1, tzinfo=UTC)
    return [
        {
            "title": f"Story {word(rng)}{feed}x{i}" + (" harbour" if feed == 1 else ""),
            "guid": f"f{feed}-{i}",
            "link": f"https://example.org/{feed}/{i}",
            "pubDate": format_datetime(published + timedelta(hours=feed * 100 + i)),
            "category": f"section{feed}",
            "description": f"<p>{SENTENCES[i % len(SENTENCES)]} " + " ".join(word(rng) for _ in range(60)) + "</p>",
        }
        for i in range(start, start + count)
    ]


@contextmanager
def web_server(settings: Settings, token: str = TOKEN) -> Iterator[str]:
    """A real ``feedmill web`` on a free port; its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "workers", "web", "--port", str(port)],
        env=feedmill_env(settings) | {"FEEDMILL_API_TOKEN": token}, cwd=settings.home,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "feedmill web did not start"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


def get(base: str, path: str, **params: Any) -> Any:
    response = httpx.get(f"{base}{path}", params=params, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def page_all(base: str, limit: int = 100, **params: Any) -> tuple[list[dict[str, Any]], str]:
    """Every item, by following next_cursor from the start until a page is empty; and the last cursor."""
    seen: list[dict[str, Any]] = []
    cursor = "0"
    while True:
        page = get(base, "/api/v1/articles", cursor=cursor, limit=limit, **params)
        assert len(page["items"]) <= limit
        if not page["items"]:
            assert page["next_cursor"] == cursor
            return seen, cursor
        seen += page["items"]
        cursor = page["next_cursor"]


def ids(records: list[dict[str, Any]], keep: Callable[[dict[str, Any]], bool] = lambda r: True) -> list[int]:
    return sorted(r["id"] for r in records if keep(r))


def test_read_api_token_paging_search_filters_and_openapi(settings: Settings, publisher: Publisher) -> None:
    rng = random.Random(20)
    urls = [publisher.add(f"/feed{feed}.xml", rss(items(feed, 50, rng), title=f"Feed {feed}")) for feed in range(6)]
    ok(feedmill(settings, "feeds", "add", *urls))
    ok(feedmill(settings, "run", "--once", "--concurrency", "2"))
    stored = export(settings)
    listed = [r for r in stored if r["stage"] == "done" and r["dropped_by"] is None]
    assert len(listed) == 300

    with web_server(settings) as base:
        assert httpx.get(f"{base}/api/v1/articles").status_code == 401
        assert httpx.get(f"{base}/api/v1/articles", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{base}/api/v1/openapi.json").status_code == 401
        assert httpx.get(f"{base}/healthz").status_code == 200  # untouched by the token
        assert "feedmill_articles" in httpx.get(f"{base}/metrics").text
        assert httpx.get(f"{base}/websub/not-a-feed-id").status_code == 404  # as before the API

        first = get(base, "/api/v1/articles")  # no cursor: from the oldest change, 100 by default
        assert len(first["items"]) == 100
        everything, last = page_all(base, limit=100)
        assert ids(everything) == ids(listed) and len(everything) == 300  # each once
        assert everything[0] == first["items"][0]
        assert get(base, "/api/v1/articles", cursor=last) == {"items": [], "next_cursor": last}
        by_id = {r["id"]: r for r in listed}
        assert all(item == by_id[item["id"]] for item in everything)  # export's record, field for field
        assert httpx.get(f"{base}/api/v1/articles", params={"limit": 501}, headers=AUTH).status_code == 422
        assert httpx.get(f"{base}/api/v1/articles", params={"cursor": "nonsense!"}, headers=AUTH).status_code == 422

        # Search: a title word finds its article, ranked first; combinable with filters and the cursor.
        target = listed[123]
        unique = target["title"].split()[1]
        found = get(base, "/api/v1/articles", q=unique)
        assert [item["id"] for item in found["items"]][:1] == [target["id"]]
        assert get(base, "/api/v1/articles", q=unique, cursor=found["next_cursor"])["items"] == []  # nothing newer
        harbour = ids(listed, lambda r: "harbour" in r["title"])
        assert len(harbour) == 50
        assert ids(get(base, "/api/v1/articles", q="harbour", limit=500)["items"]) == harbour
        assert ids(page_all(base, limit=7, q="harbour")[0]) == harbour
        feed1 = next(r["feed_url"] for r in listed if "harbour" in r["title"])
        assert ids(get(base, "/api/v1/articles", q="harbour", feed=feed1, limit=500)["items"]) == harbour
        assert get(base, "/api/v1/articles", q="harbour", feed=urls[0] if urls[0] != feed1 else urls[2])["items"] == []

        # Filters: each gives exactly the listed articles it names.
        feed_ids = {r["url"]: r["id"] for r in get(base, "/api/v1/feeds")["items"]}
        language = next(r["language"] for r in listed if r["language"])
        assert set(feed_ids) == set(urls)
        checks: dict[str, tuple[Any, Callable[[dict[str, Any]], bool]]] = {
            "feed": (feed_ids[urls[3]], lambda r: r["feed_url"] == urls[3]),
            "tag": ("section4", lambda r: "section4" in r["tags"]),
            "language": (language, lambda r: r["language"] == language),
            "cluster": (target["cluster_id"], lambda r: r["cluster_id"] == target["cluster_id"]),
            "since": (target["published_at"], lambda r: r["published_at"] >= target["published_at"]),
        }
        topic = next(topic for r in listed for topic in r["topics"])
        place = next(place for r in listed for place in r["places"])
        checks["topic"] = (topic, lambda r: topic in r["topics"])
        checks["place"] = (place, lambda r: place in r["places"])
        for name, (value, keep) in checks.items():
            expected = ids(listed, keep)
            assert expected, name
            assert ids(page_all(base, limit=100, **{name: value})[0]) == expected, name
        assert get(base, "/api/v1/articles", tag="section4", language="zz")["items"] == []

        # One article, one feed, one cluster, the status; unknown ids are 404 in JSON.
        assert get(base, f"/api/v1/articles/{target['id']}") == target
        assert get(base, f"/api/v1/feeds/{feed_ids[urls[3]]}")["url"] == urls[3]
        cluster = get(base, f"/api/v1/clusters/{target['cluster_id']}")
        assert target["id"] in ids(cluster["items"]) and cluster["size"] == len(cluster["items"])
        assert get(base, "/api/v1/status")["articles"]["done"]["ok"] == 300
        for path in ("/api/v1/articles/99999999", "/api/v1/feeds/99999999", "/api/v1/clusters/99999999"):
            response = httpx.get(f"{base}{path}", headers=AUTH)
            assert response.status_code == 404 and "detail" in response.json()

        schema = get(base, "/api/v1/openapi.json")
        assert {"/api/v1/articles", "/api/v1/articles/{article_id}", "/api/v1/feeds", "/api/v1/feeds/{feed_id}",
                "/api/v1/clusters/{cluster_id}", "/api/v1/status"} <= set(schema["paths"])


def test_cursor_sees_each_article_once_under_concurrent_ingest(
    settings: Settings, publisher: Publisher, start_worker: Callable[..., WorkerProcess]
) -> None:
    """A reader follows the cursor, small pages, as fast as it can, while four workers store and
    process six feeds; when all is done it has seen every article exactly once."""
    rng = random.Random(7)
    urls = [publisher.add(f"/live{feed}.xml", rss(items(feed, 40, rng), title=f"Live {feed}")) for feed in range(10, 16)]
    ok(feedmill(settings, "feeds", "add", *urls))
    start_worker(settings, concurrency=4)
    seen: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    with web_server(settings) as base:
        def follow() -> None:
            cursor = "0"
            try:
                while True:
                    stopping = stop.is_set()
                    page = get(base, "/api/v1/articles", cursor=cursor, limit=7)
                    seen.extend(item["id"] for item in page["items"])
                    cursor = page["next_cursor"]
                    if stopping and not page["items"]:
                        return
            except BaseException as exc:  # noqa: BLE001 (reported by the test thread)
                errors.append(exc)

        reader = threading.Thread(target=follow)
        reader.start()
        for url in urls:  # feeds land one after another while the reader pages
            ok(feedmill(settings, "feeds", "poll", url))
            time.sleep(0.3)
        wait_until_settled(settings, 240, timeout=180)
        stop.set()
        reader.join(timeout=60)
    assert not errors, errors
    assert sorted(seen) == ids([r for r in export(settings) if r["stage"] == "done"]) and len(seen) == 240


def test_postgres_change_values_become_visible_in_the_order_taken(postgres_settings: Settings) -> None:
    """The commit-order point: a transaction that took a change value holds the change lock to its
    commit, so the next value is taken only after it is visible; a reader past N+1 never misses N."""
    taken: list[tuple[str, int]] = []
    second_took = threading.Event()

    def second() -> None:
        with session_scope(postgres_settings) as session:
            taken.append(("second", changes.current(session)))
            second_took.set()

    with session_scope(postgres_settings) as session:
        taken.append(("first", changes.current(session)))
        thread = threading.Thread(target=second)
        thread.start()
        assert not second_took.wait(1.0)  # waits for the first transaction's commit
    thread.join(timeout=10)
    assert second_took.is_set()
    assert [name for name, _ in taken] == ["first", "second"] and taken[0][1] < taken[1][1]


def test_without_a_token_the_api_is_open(sqlite_settings: Settings) -> None:
    with web_server(sqlite_settings, token="") as base:
        assert httpx.get(f"{base}/api/v1/articles").json() == {"items": [], "next_cursor": "0"}

"""Prometheus metrics: a worker's task metrics move with a run; the web's gauges read the pipeline."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from schemas.pipeline import ARTICLE_STAGES
from schemas.settings import Settings
from tests.conftest import Publisher, WorkerProcess, feedmill, free_port, ok, rss
from tests.test_operations import story, wait_until_settled
from workers.web import make_app


def samples(text: str) -> dict[str, float]:
    """Metric lines as {'name{labels}': value}."""
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\w+(?:\{[^}]*\})?) (\S+)$", text, re.MULTILINE)}


def scrape_worker(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return samples(response.read().decode())


def scrape_web(settings: Settings) -> dict[str, float]:
    response = TestClient(make_app(settings)).get("/metrics")
    assert response.status_code == 200
    return samples(response.text)


def test_worker_and_web_metrics_count_a_run(
    sqlite_settings: Settings, publisher: Publisher, start_worker: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = sqlite_settings
    url = publisher.add("/feed.xml", rss([story("a", "Ferry timetable changes."), story("b", "A library reopens.")]))
    missing = publisher.url("/gone.xml")
    ok(feedmill(settings, "feeds", "add", url, missing))
    port = free_port()
    monkeypatch.setenv("FEEDMILL_METRICS_PORT", str(port))
    start_worker(settings, concurrency=2)
    ok(feedmill(settings, "feeds", "poll", url, missing))
    wait_until_settled(settings, 2)

    worker = scrape_worker(port)
    assert worker['feedmill_fetches_total{status_code="200"}'] == 1
    assert worker['feedmill_fetches_total{status_code="404"}'] == 1
    for stage in ARTICLE_STAGES:
        assert worker[f'feedmill_articles_processed_total{{outcome="ok",stage="{stage}"}}'] == 2
        assert worker[f'feedmill_tasks_total{{outcome="success",stage="{stage}"}}'] == 1
    assert worker['feedmill_task_duration_seconds_count{stage="fetch"}'] == 2
    assert worker['feedmill_task_duration_seconds_bucket{le="+Inf",stage="parse"}'] == 1

    web = scrape_web(settings)
    assert web['feedmill_articles{stage="done",status="ok"}'] == 2
    assert web['feedmill_feeds{health="ok"}'] == 1 and web['feedmill_feeds{health="failing"}'] == 1
    assert web['feedmill_queue_depth{queue="fetch"}'] == 0

    ok(feedmill(settings, "feeds", "poll", url))  # unchanged: fetched and parsed again, nothing new stored
    wait_until_settled(settings, 2)
    again = scrape_worker(port)
    assert again['feedmill_fetches_total{status_code="200"}'] == 2
    assert again['feedmill_task_duration_seconds_count{stage="parse"}'] == 2
    assert again['feedmill_articles_processed_total{outcome="ok",stage="clean"}'] == 2

"""JSON logs: every line a task writes carries its task id and the ids of its message."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from schemas.settings import Settings
from tests.conftest import Publisher, WorkerProcess, feedmill, ok, rss
from tests.test_operations import story, wait_until_settled


def test_json_log_lines_carry_task_and_article_ids(
    sqlite_settings: Settings, publisher: Publisher, start_worker: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = sqlite_settings
    url = publisher.add("/feed.xml", rss([story("a", "Tram works begin."), story("b", "The market hall opens.")]))
    ok(feedmill(settings, "feeds", "add", url))
    monkeypatch.setenv("FEEDMILL_LOG_FORMAT", "json")
    worker = start_worker(settings, concurrency=1)
    ok(feedmill(settings, "feeds", "poll", url))
    wait_until_settled(settings, 2)

    records = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    by_task = [r for r in records if r.get("task_name") == "feedmill.clean"]
    assert by_task and all(len(r["task_id"]) == 36 and len(r["article_ids"]) == 2 for r in by_task)
    [done] = [r for r in by_task if "succeeded" in r["message"]]
    assert f"feedmill.clean[{done['task_id']}] succeeded" in done["message"]
    fetch = [r for r in records if r.get("task_name") == "feedmill.fetch"]
    assert fetch and all(isinstance(r["poll_id"], int) for r in fetch)
    assert not any("task_id" in r for r in records if "ready." in r["message"])  # not inside a task

"""``feedmill status`` and ``feedmill healthcheck`` on both backends, without workers."""

from __future__ import annotations

import dataclasses
import json

from schemas.pipeline import QUEUES
from schemas.settings import Settings
from tests.conftest import feedmill, free_port, make_settings, ok


def test_status_counts_queued_messages_and_hides_passwords(settings: Settings) -> None:
    if not settings.embedded_broker:  # trust authentication ignores the password; status must not show it
        settings = dataclasses.replace(settings, database_url=settings.database_url.replace("postgres@", "postgres:s3cret@"))
    urls = ["https://a.example.org/feed", "https://b.example.org/feed", "https://c.example.org/feed"]
    ok(feedmill(settings, "feeds", "add", *urls))
    ok(feedmill(settings, "feeds", "pause", urls[2]))
    ok(feedmill(settings, "feeds", "poll", *urls[:2]))  # no worker: the two fetch messages wait in the queue

    raw = ok(feedmill(settings, "status", "--json"))
    status = json.loads(raw)
    assert status["queues"] == {queue: 0 for queue in QUEUES} | {"fetch": 2}
    assert status["workers"] == {} and status["broker_error"] is None
    assert status["feeds"] == {"ok": 2, "failing": 0, "paused": 1, "retired": 0}
    assert status["oldest_stuck"]["kind"] == "poll" and status["oldest_stuck"]["stage"] == "fetch"
    assert status["articles"] == {} and status["failures_open"] == {}
    assert status["pages_due"] == 0
    text = ok(feedmill(settings, "status"))
    assert "queues: schedule 0, fetch 2, parse 0" in text and "workers: 0 answering" in text
    assert "oldest unfinished: poll" in text
    assert "s3cret" not in raw + text


def test_healthcheck_fails_one_line_each_without_secrets(tmp_path) -> None:
    healthy = make_settings(tmp_path)
    assert ok(feedmill(healthy, "healthcheck")).splitlines() == [
        f"database ok: {healthy.database_url}", "broker ok: filesystem://localhost/"]

    closed = free_port()
    down = make_settings(tmp_path, f"postgresql://feedmill:s3cret@127.0.0.1:{closed}/feedmill",
                         f"redis://:s3cret@127.0.0.1:{closed}/0")
    result = feedmill(down, "healthcheck")
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and "s3cret" not in result.stderr
    assert lines[0].startswith(f"database unreachable: postgresql://feedmill:***@127.0.0.1:{closed}/feedmill: ")
    assert lines[1].startswith(f"broker unreachable: redis://:***@127.0.0.1:{closed}/0: ")
    as_json = feedmill(down, "healthcheck", "--json")
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and not report["ok"] and "s3cret" not in as_json.stdout
    assert not report["database"]["ok"] and not report["broker"]["ok"] and report["broker"]["error"]

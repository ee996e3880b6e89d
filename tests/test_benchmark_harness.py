"""The pipeline benchmark (benchmarks/pipeline.py) on a tiny corpus, so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from schemas.pipeline import LINE
from tests.conftest import POSTGRES_ADMIN_URL, REDIS_URL, ROOT, _postgres_reachable, _redis_reachable, require_service

FEEDS, ENTRIES = 3, 4


def harness(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--feeds", str(FEEDS), "--entries", str(ENTRIES),
         "--json", *args],
        env={**os.environ, "FEEDMILL_BENCH_REDIS_URL": REDIS_URL, "FEEDMILL_TEST_POSTGRES_URL": POSTGRES_ADMIN_URL},
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def check_feedmill_run(run: dict, planted: int) -> None:
    assert run["entries"] == FEEDS * ENTRIES
    assert run["entries_per_second"] > 0
    assert run["failed"] == 0
    assert run["duplicates_found"] >= planted
    for stage in LINE:
        assert run["stages"][stage]["tasks"] >= 1
        assert 0 < run["stages"][stage]["median_ms"] <= run["stages"][stage]["p95_ms"]
    assert run["peak_rss"]["main_mb"] > 0
    assert run["second_pass"]["feeds"] == FEEDS
    assert run["second_pass"]["not_modified"] == FEEDS  # unchanged feeds: every answer a 304


def test_embedded_inline_and_reader() -> None:
    report = harness("--backends", "embedded", "--inline")
    runs, planted = report["runs"], report["corpus"]["planted_duplicates"]
    assert report["corpus"]["entries"] == FEEDS * ENTRIES
    check_feedmill_run(runs["embedded"], planted)
    check_feedmill_run(runs["inline embedded"], planted)
    assert runs["embedded"]["peak_rss"]["pool_processes"] >= 1
    assert runs["embedded"]["second_pass"]["http_answers"] == {"304": FEEDS}
    assert runs["reader"]["entries"] == FEEDS * ENTRIES
    assert runs["reader"]["second_pass"]["entries"] == 0
    assert runs["reader"]["http_answers"] == {"200": FEEDS, "304": FEEDS}
    assert set(report["ratios"]) == {"embedded / reader", "inline embedded / reader", "inline embedded / embedded"}


@pytest.mark.integration
def test_postgres_and_redis() -> None:
    require_service("PostgreSQL", _postgres_reachable)
    require_service("Redis", _redis_reachable)
    report = harness("--backends", "postgres+redis", "--no-reader")
    check_feedmill_run(report["runs"]["postgres+redis"], report["corpus"]["planted_duplicates"])


def scale(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--feeds", "4", "--entries", "3", "--rounds", "2",
         "--warmup", "2", "--concurrency", "2", "--json", *args],
        env={**os.environ, "FEEDMILL_BENCH_REDIS_URL": REDIS_URL, "FEEDMILL_TEST_POSTGRES_URL": POSTGRES_ADMIN_URL},
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def check_scale_run(run: dict) -> None:
    assert run["warmup"]["entries"] == 2 * 3
    assert [c["stored"] for c in run["checkpoints"]] == [12, 18]  # each round only its new feeds' entries
    for checkpoint in run["checkpoints"]:
        assert checkpoint["feeds"] == 2 and checkpoint["entries"] == 6 and checkpoint["failed"] == 0
        for stage in LINE:
            assert checkpoint["stages"][stage]["tasks"] >= 1
        memory = checkpoint["memory"]
        assert memory["main_rss_mb"] > 0 and len(memory["pool_rss_mb"]) == 2
        assert checkpoint["pool_replaced"] is False  # recycling is off for the measurement
        assert checkpoint["store_mb"] > 0 and len(checkpoint["load_average"]) == 3
    assert run["checkpoints"][1]["store_mb"] >= run["checkpoints"][0]["store_mb"]
    assert run["checkpoints"][0]["worker_cpu_ms_per_article"] > 0
    assert set(run["ratios"]) >= {"ms_per_article", "worker_cpu_ms_per_article", "dedupe_median_ms", "main_rss",
                                  "pool_rss_max"}
    assert all(value > 0 for name, value in run["ratios"].items() if name != "database_cpu_ms_per_article")


def test_scale_embedded() -> None:
    report = scale("--backends", "embedded")
    check_scale_run(report["runs"]["embedded"])


@pytest.mark.integration
def test_scale_postgres_and_redis() -> None:
    require_service("PostgreSQL", _postgres_reachable)
    require_service("Redis", _redis_reachable)
    report = scale("--backends", "postgres+redis")
    run = report["runs"]["postgres+redis"]
    check_scale_run(run)
    # PostgreSQL's server processes are measured (a tiny round may use less CPU there than the 10 ms
    # a process's CPU time is counted in, so the figure itself may be 0).
    for checkpoint in run["checkpoints"]:
        assert checkpoint["database_processes"] >= 1 and checkpoint["database_cpu_ms_per_article"] >= 0
    # A server without autovacuum gets a VACUUM ANALYZE after each checkpoint, as autovacuum would give it.
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL) as connection:
        autovacuum = connection.execute("SHOW autovacuum").fetchone()[0]
    analyzed = [checkpoint.get("vacuum_analyze_seconds") for checkpoint in run["checkpoints"]]
    if autovacuum == "off":
        assert run["maintenance"].startswith("VACUUM ANALYZE") and all(seconds is not None for seconds in analyzed)
    else:
        assert analyzed == [None, None]


@pytest.mark.integration
def test_fault_benchmark_runs_its_quick_scenario() -> None:
    """benchmarks/faults.py (its figures are in docs/operations.md) on the scenario that takes
    seconds: `run --once` over a good feed and a 404, on PostgreSQL and a Redis of its own."""
    require_service("PostgreSQL", _postgres_reachable)
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "faults.py"), "--scenario", "once", "--json"],
        env={**os.environ, "FEEDMILL_TEST_POSTGRES_URL": POSTGRES_ADMIN_URL}, capture_output=True, text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    once = json.loads(result.stdout)["once"]
    assert once["exit_code"] == 1 and once["names_failing_feed"] and once["stored"] == 2
    assert 0 < once["seconds"] < 60


def test_delivery_benchmark_sends_every_event() -> None:
    """benchmarks/delivery.py's sending-rate scenario on a few events, so it cannot rot."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "delivery.py"), "--scenario", "throughput", "--events", "60", "--json"],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    rate = json.loads(result.stdout)["throughput"]
    assert rate["received"] == rate["events"] == 60 and rate["events_per_second"] > 0


def test_pipeline_benchmark_with_a_webhook_subscription() -> None:
    """benchmarks/pipeline.py --webhook: the pass again with a subscription, and the ratio of the two."""
    report = harness("--backends", "embedded", "--no-reader", "--webhook")
    runs, planted = report["runs"], report["corpus"]["planted_duplicates"]
    check_feedmill_run(runs["embedded"], planted)
    check_feedmill_run(runs["embedded + webhook"], planted)
    assert "webhook_calls_during_first_pass" not in runs["embedded"]
    assert 0 <= runs["embedded + webhook"]["webhook_calls_during_first_pass"]
    assert set(report["ratios"]) == {"embedded + webhook / embedded"}


@pytest.mark.integration
def test_delivery_benchmark_through_a_worker_on_postgres_and_redis() -> None:
    """benchmarks/delivery.py --scenario worker: a real worker on PostgreSQL + Redis sends every event."""
    require_service("PostgreSQL", _postgres_reachable)
    require_service("Redis", _redis_reachable)
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "delivery.py"), "--scenario", "worker", "--events", "60", "--json"],
        env={**os.environ, "FEEDMILL_BENCH_REDIS_URL": REDIS_URL, "FEEDMILL_TEST_POSTGRES_URL": POSTGRES_ADMIN_URL},
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rate = json.loads(result.stdout)["worker"]
    assert rate["received"] == rate["events"] == 60 and rate["events_per_second"] > 0


def test_retention_benchmark_levels_off_at_its_window() -> None:
    """benchmarks/retention.py on 3 feeds over 6 simulated days with a 3-day window (SQLite): 30 articles
    per feed in the window, above the floor of 20."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "retention.py"), "--feeds", "3", "--per-day", "10",
         "--days", "6", "--window", "3", "--json"],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    days = report["days_measured"]
    assert [day["stored"] for day in days] == [30] * 6  # yesterday's items, listed again, are not stored twice
    assert [day["pruned"] for day in days] == [0, 0, 0, 30, 30, 30]
    assert [day["articles"] for day in days] == [30, 60, 90, 90, 90, 90]
    assert [day["article_tombstones"] for day in days] == [0, 0, 0, 30, 60, 90]
    assert all(day["minhash_bands"] == 52 * day["articles"] for day in days)
    assert report["summary"]["articles_ratio"] == report["summary"]["bands_ratio"] == 1.0

"""Prometheus metrics recorded inside worker processes: tasks, fetches, article outcomes.

Plain prometheus_client objects, so tasks/ needs nothing from workers/. In a
worker started by ``feedmill worker`` with ``FEEDMILL_METRICS_PORT`` set,
``PROMETHEUS_MULTIPROC_DIR`` is set before Python starts, so every prefork
child writes these to its own file and the worker's main process serves their
sum (``workers/worker_metrics.py``). Elsewhere they count in memory and nobody reads them.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TASK_SECONDS = Histogram(
    "feedmill_task_duration_seconds",
    "Time a stage task took, by stage.",
    ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
TASKS = Counter("feedmill_tasks_total", "Stage tasks run, by stage and outcome (success, retry, failure).", ["stage", "outcome"])
FETCHES = Counter("feedmill_fetches_total", "Feed fetches recorded, by HTTP status code ('none': no response).", ["status_code"])
ARTICLES = Counter(
    "feedmill_articles_processed_total", "Articles through an article stage, by stage and outcome (ok, failed).",
    ["stage", "outcome"],
)


def observe_task(stage: str, outcome: str, seconds: float) -> None:
    TASK_SECONDS.labels(stage).observe(seconds)
    TASKS.labels(stage, outcome).inc()


def count_fetch(status_code: int | None) -> None:
    FETCHES.labels(str(status_code) if status_code is not None else "none").inc()


def count_articles(stage: str, total: int, failed: int) -> None:
    if total > failed:
        ARTICLES.labels(stage, "ok").inc(total - failed)
    if failed:
        ARTICLES.labels(stage, "failed").inc(failed)

"""Prometheus metrics: per-worker task metrics, and pipeline gauges computed at scrape time.

Two sources, two endpoints (names and labels in docs/operations.md):

- **Workers** (``FEEDMILL_METRICS_PORT``): the counters and histograms of
  ``tasks/metrics.py`` are recorded in the prefork children, in
  prometheus_client's multiprocess mode. ``feedmill worker`` empties this
  worker's own directory (``$FEEDMILL_HOME/metrics/<host>-<port>``) and sets
  ``PROMETHEUS_MULTIPROC_DIR`` before Celery starts (the mode is chosen when
  prometheus_client is first imported); the main process serves the children's
  sum from ``worker_ready``. Counts start at zero with each worker start, as
  Prometheus counters may.
- **``feedmill web``** at ``/metrics``: gauges read from the database and the
  broker when scraped (queue depth, articles by stage and status, feeds by
  health, open failures, duplicates), the same numbers ``feedmill status`` shows,
  so one scrape target covers the whole pipeline whichever workers run.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery import signals
from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily

from schemas.db import session_scope
from schemas.settings import Settings, current_settings
from workers import status

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiproc_dir(settings: Settings) -> Path:
    """One directory per worker: the host and the port tell workers sharing FEEDMILL_HOME apart."""
    return settings.home / "metrics" / f"{socket.gethostname()}-{settings.metrics_port}"


def worker_environment(settings: Settings) -> dict[str, str]:
    """Environment for a worker about to start: a fresh multiprocess directory when metrics are on."""
    if not settings.metrics_port:
        return {}
    folder = multiproc_dir(settings)
    shutil.rmtree(folder, ignore_errors=True)  # files of a previous run's processes
    folder.mkdir(parents=True)
    return {MULTIPROC_ENV: str(folder.resolve())}


@signals.worker_ready.connect
def serve_worker_metrics(**_kwargs: Any) -> None:
    """In the worker's main process: serve the sum of its children's metrics."""
    settings = current_settings()
    if not settings.metrics_port:
        return
    if MULTIPROC_ENV not in os.environ:
        log.warning("FEEDMILL_METRICS_PORT is set but this worker was not started by `feedmill worker`: no metrics")
        return
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(settings.metrics_port, registry=registry)
    log.info("serving worker metrics on port %s", settings.metrics_port)


class PipelineCollector:
    """Gauges from the database and broker, computed at each scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("feedmill_queue_depth", "Messages waiting in a stage queue.", labels=["queue"])
        try:
            for queue, count in status.queue_depths(self.settings).items():
                depth.add_metric([queue], count)
        except Exception as exc:  # the database gauges are still worth having
            log.warning("queue depth unavailable: %s", status.scrub(str(exc), self.settings))
        yield depth
        with session_scope(self.settings) as session:
            articles = status.article_counts(session)
            feeds = status.feed_health(session)
            failures = status.open_failures_by_stage(session)
            duplicates = status.duplicates_by_reason(session)
        yield _gauge("feedmill_articles", "Stored articles by the stage they wait for and status.", ["stage", "status"],
                     {(stage, state): n for stage, states in articles.items() for state, n in states.items()})
        yield _gauge("feedmill_feeds", "Feeds by health: ok, failing (errors in a row), paused, retired.",
                     ["health"], {(health,): n for health, n in feeds.items()})
        yield _gauge("feedmill_failures_open", "Dead letters not yet re-queued, by stage.", ["stage"],
                     {(stage,): n for stage, n in failures.items()})
        yield _gauge("feedmill_duplicates", "Articles found to duplicate an earlier one, by reason.", ["reason"],
                     {(reason or "unknown",): n for reason, n in duplicates.items()})


def _gauge(name: str, documentation: str, labels: list[str], values: dict[tuple[str, ...], int]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in sorted(values.items()):
        gauge.add_metric(list(label_values), value)
    return gauge


def metrics_app(settings: Settings) -> Any:
    """The WSGI app ``feedmill web`` serves at /metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(settings))
    return make_wsgi_app(registry)

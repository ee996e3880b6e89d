"""The pipeline's Prometheus gauges, computed at scrape time, that ``feedmill web`` serves at /metrics.

Gauges read from the database and the broker when scraped (queue depth,
articles by stage and status, feeds by health, open failures, duplicates), the
same numbers ``feedmill status`` shows, so one scrape target covers the whole
pipeline whichever workers run. Each worker serves its own task counters
(``workers/worker_metrics.py``); names and labels in docs/operations.md.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from schemas.db import session_scope
from schemas.models import utcnow
from schemas.settings import Settings
from tasks.storage import deliveries as deliveries_storage
from tasks.storage import service as service_storage
from tasks.storage import status as storage
from workers import status

log = logging.getLogger(__name__)


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
            articles = storage.article_counts(session)
            feeds = storage.feed_health(session)
            failures = storage.open_failures_by_stage(session)
            duplicates = storage.duplicates_by_reason(session)
            children = service_storage.live_children(session)
            subscriptions = deliveries_storage.delivery_counts(session, utcnow())
        yield _gauge("feedmill_articles", "Stored articles by the stage they wait for and status.", ["stage", "status"],
                     {(stage, state): n for stage, states in articles.items() for state, n in states.items()})
        yield _gauge("feedmill_feeds", "Feeds by health: ok, failing (errors in a row), paused, retired.",
                     ["health"], {(health,): n for health, n in feeds.items()})
        yield _gauge("feedmill_failures_open", "Dead letters not yet re-queued, by stage.", ["stage"],
                     {(stage,): n for stage, n in failures.items()})
        restarts: Counter[tuple[str, str]] = Counter()
        crash_loops: Counter[tuple[str, str]] = Counter()
        for child in children:  # summed over the supervisors of a host
            restarts[child["host"], child["name"]] += child["restarts"]
            crash_loops[child["host"], child["name"]] += int(child["crash_loop"])
        yield _gauge("feedmill_service_restarts", "Restarts of the processes `feedmill run` supervises, since it started.",
                     ["host", "child"], restarts)
        yield _gauge("feedmill_service_crash_loops", "Supervised processes in a crash loop (5 restarts within a minute).",
                     ["host", "child"], crash_loops)
        yield _gauge("feedmill_deliveries", "Events of each subscription by state: delivered, pending, retrying, dead.",
                     ["subscription", "state"],
                     {(s["name"], state): s[state] for s in subscriptions
                      for state in ("delivered", "pending", "retrying", "dead")})
        yield _gauge("feedmill_delivery_lag_seconds", "Age of each subscription's oldest undelivered event (0: none).",
                     ["subscription"], {(s["name"],): s["oldest_pending_seconds"] or 0 for s in subscriptions})
        yield _gauge("feedmill_duplicates", "Articles found to duplicate an earlier one, by reason.", ["reason"],
                     {(reason or "unknown",): n for reason, n in duplicates.items()})


def _gauge(name: str, documentation: str, labels: list[str], values: dict[tuple[str, ...], float]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in sorted(values.items()):
        gauge.add_metric(list(label_values), value)
    return gauge


def pipeline_registry(settings: Settings) -> CollectorRegistry:
    """The registry ``feedmill web`` serves at /metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(settings))
    return registry

"""A worker's own Prometheus endpoint (``FEEDMILL_METRICS_PORT``).

The counters and histograms of ``tasks/metrics.py`` are recorded in the prefork
children, in prometheus_client's multiprocess mode. ``feedmill worker`` empties
this worker's own directory (``$FEEDMILL_HOME/metrics/<host>-<port>``) and sets
``PROMETHEUS_MULTIPROC_DIR`` before Celery starts (the mode is chosen when
prometheus_client is first imported); the main process serves the children's
sum from ``worker_ready``. Counts start at zero with each worker start, as
Prometheus counters may. The pipeline's gauges are served by ``feedmill web``
(``workers/metrics.py``); names and labels in docs/operations.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from celery import signals
from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from schemas.settings import Settings, current_settings

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

"""The Celery app: broker, reliability settings and one queue per stage.

With no configuration the broker is kombu's filesystem transport under
``$FEEDMILL_HOME/broker``: real worker processes on one machine, no server.
``FEEDMILL_BROKER_URL`` points it at Redis (or RabbitMQ) instead.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from kombu import Queue

from schemas.pipeline import QUEUES, STAGES, TASK_MODULES, stage_named
from schemas.settings import Settings, current_settings

# Celery signal handlers, connected on import: task ids (and JSON) on every worker's and
# scheduler's log lines, and a worker's metrics endpoint.
from workers import logs, worker_metrics  # noqa: F401

log = logging.getLogger(__name__)
#: Seconds between the scheduler's looks for lost messages (workers/scheduler.recover_lost_task).
RECOVER_EVERY = 10.0
#: Longer than any retry countdown (StageTask's backoff cap is 300 s), so a
#: delayed retry is not redelivered early by Redis.
VISIBILITY_TIMEOUT = 3600


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        # A worker that loses its broker keeps reconnecting (Celery gives up after 100 tries by
        # default); should Celery still give up, `feedmill run` (or the unit manager) restarts it.
        "broker_connection_max_retries": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": 1000,
        # FEEDMILL_MAX_RETRIES overrides StageTask.max_retries on every feedmill task.
        "task_annotations": {stage.task: {"max_retries": settings.max_retries} for stage in STAGES},
        # Task events cost about 3% of a run's throughput (a Redis publish per task state), and
        # Flower, which reads them, turns them on in the workers by itself while it runs
        # (its enable_events, on by default); FEEDMILL_TASK_EVENTS sends them from the start.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "task_queues": [Queue(name) for name in QUEUES],
        "task_default_queue": QUEUES[0],
        "task_routes": {stage.task: {"queue": stage.queue} for stage in STAGES},
        # A dispatch, sweep or prune not started within its interval (10 s at least) is dropped: the next
        # one is on its way, and a backlog of sweeps (workers down for a while) would each re-send
        # all stuck work at once.
        "beat_schedule": {
            "dispatch-due-feeds": {"task": "feedmill.dispatch", "schedule": settings.dispatch_every,
                                   "options": {"expires": max(settings.dispatch_every, 10.0)}},
            "sweep-stuck-work": {"task": "feedmill.sweep", "schedule": settings.sweep_every,
                                 "options": {"expires": max(settings.sweep_every, 10.0)}},
            "recover-lost-messages": {"task": "feedmill.recover", "schedule": RECOVER_EVERY,
                                      "options": {"expires": RECOVER_EVERY}},
            "send-due-deliveries": {"task": "feedmill.deliver_due", "schedule": settings.deliver_every,
                                    "options": {"expires": max(settings.deliver_every, 5.0)}},
            "send-due-pages": {"task": "feedmill.fulltext_due", "schedule": settings.full_text_every,
                               "options": {"expires": max(settings.full_text_every, 5.0)}},
            "prune-old-articles": {"task": "feedmill.prune", "schedule": settings.prune_every,
                                   "options": {"expires": max(settings.prune_every, 10.0)}},
        },
        # Beat keeps its schedule in memory, no file: every entry is an interval whose real state
        # (feeds' next polls and leases, pending work) is in the database, so a restarted or second
        # scheduler loses nothing and needs no writable directory.
        "beat_scheduler": "celery.beat:Scheduler",
        "timezone": "UTC",
    }
    if settings.worker_max_memory_kb > 0:
        config["worker_max_memory_per_child"] = settings.worker_max_memory_kb
    if settings.embedded_broker:
        folder = settings.broker_folder
        for sub in ("queue", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        config["broker_transport"] = "workers.embedded_broker:Transport"
        config["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            # kombu sleeps this long whenever a poll finds nothing it may take, which includes
            # every time the prefetch window is full: at 0.1 s a worker waited about 0.1 s after
            # each task (200 fetches of 10 ms took 10 s). Idle, the polls cost about 1% of a core.
            "polling_interval": 0.01,
        }
    else:
        config["broker_transport_options"] = {
            "visibility_timeout": VISIBILITY_TIMEOUT,
            # A connection to a restarted Redis is found dead and replaced within seconds.
            "health_check_interval": 10,
            "socket_keepalive": True,
        }
    return config


def create_app(settings: Settings) -> Celery:
    app = Celery("feedmill", include=list(TASK_MODULES))
    app.conf.update(celery_config(settings))
    return app


app = create_app(current_settings())
# The default app too, not only the current one (which is per thread): tasks enqueued from
# other threads, such as the web endpoint's, must reach this broker and no other.
app.set_default()


#: Seconds this worker spent loading classify's models before forking its pool (None: it did not).
classify_models_seconds: float | None = None


@signals.worker_init.connect
def load_classify_models(**_: Any) -> None:
    """In a worker that consumes the classify queue, load the language model (0.7 s) and the
    automatons in the main process before it forks its pool: every pool process, replacements
    included, then shares them instead of loading its own at its first classify task."""
    global classify_models_seconds
    if stage_named("classify").queue in app.amqp.queues.consume_from:
        from tasks.classify import load_models

        classify_models_seconds = load_models()


@signals.worker_ready.connect
def report_classify_models(**_: Any) -> None:
    # Logging is set up only after worker_init.
    if classify_models_seconds is not None:
        log.info("classify models loaded in %.1f s before the pool started", classify_models_seconds)


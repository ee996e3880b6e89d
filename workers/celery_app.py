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

from schemas.settings import Settings, current_settings

log = logging.getLogger(__name__)

#: Queue per stage, in pipeline order, so each can be scaled on its own.
QUEUES = ("schedule", "fetch", "parse", "clean", "dedupe", "classify")
TASK_QUEUES = {
    "feedmill.dispatch": "schedule",
    "feedmill.sweep": "schedule",
    "feedmill.fetch": "fetch",
    "feedmill.websub_subscribe": "fetch",
    "feedmill.parse": "parse",
    "feedmill.clean": "clean",
    "feedmill.dedupe": "dedupe",
    "feedmill.classify": "classify",
}
#: Longer than any retry countdown (StageTask's backoff cap is 300 s), so a
#: delayed retry is not redelivered early by Redis.
VISIBILITY_TIMEOUT = 3600


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": 1000,
        # FEEDMILL_MAX_RETRIES overrides StageTask.max_retries on every feedmill task.
        "task_annotations": {name: {"max_retries": settings.max_retries} for name in TASK_QUEUES},
        # Task events cost about 3% of a run's throughput (a Redis publish per task state), and
        # Flower, which reads them, turns them on in the workers by itself while it runs
        # (its enable_events, on by default); FEEDMILL_TASK_EVENTS sends them from the start.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "task_queues": [Queue(name) for name in QUEUES],
        "task_default_queue": "fetch",
        "task_routes": {name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        # A dispatch or sweep not started within its interval (10 s at least) is dropped: the next
        # one is on its way, and a backlog of sweeps (workers down for a while) would each re-send
        # all stuck work at once.
        "beat_schedule": {
            "dispatch-due-feeds": {"task": "feedmill.dispatch", "schedule": settings.dispatch_every,
                                   "options": {"expires": max(settings.dispatch_every, 10.0)}},
            "sweep-stuck-work": {"task": "feedmill.sweep", "schedule": settings.sweep_every,
                                 "options": {"expires": max(settings.sweep_every, 10.0)}},
        },
        "beat_schedule_filename": str(settings.home / "celerybeat-schedule"),
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
        config["broker_transport_options"] = {"visibility_timeout": VISIBILITY_TIMEOUT}
    return config


def create_app(settings: Settings) -> Celery:
    app = Celery(
        "feedmill",
        include=[
            "workers.scheduler",
            "tasks.websub",
            "tasks.fetch",
            "tasks.parse",
            "tasks.clean",
            "tasks.dedupe",
            "tasks.classify",
        ],
    )
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
    if "classify" in app.amqp.queues.consume_from:
        from tasks.classify import load_models

        classify_models_seconds = load_models()


@signals.worker_ready.connect
def report_classify_models(**_: Any) -> None:
    # Logging is set up only after worker_init.
    if classify_models_seconds is not None:
        log.info("classify models loaded in %.1f s before the pool started", classify_models_seconds)


# Last, as they import this module's names: Celery signal handlers that give every worker and
# scheduler process task ids on its log lines (and JSON logs), and a worker its metrics endpoint.
from workers import logs, metrics  # noqa: E402, F401

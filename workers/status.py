"""What the pipeline is doing right now, from the broker and the database: ``feedmill status``,
``feedmill healthcheck`` and the gauges of ``/metrics`` (workers/metrics.py) all read it here.

Queue depth is the broker's own message count per stage queue: on Redis the
length of the queue's list plus its priority lists (kombu names them
``<queue>\\x06\\x16<priority>``), on the embedded broker the message files of
that queue. URLs are shown with their passwords hidden, and so are error texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from datetime import datetime

from celery import Celery
from kombu import Connection
from sqlalchemy.engine import make_url

from schemas.db import redact_url, session_scope
from schemas.models import utcnow
from schemas.pipeline import QUEUES
from schemas.settings import Settings
from tasks.storage import deliveries as deliveries_storage
from tasks.storage import service as service_storage
from tasks.storage import status as storage
from tasks.storage.articles import pages_waiting
from tasks.storage.reading import iso
from workers.celery_app import celery_config

#: Seconds to wait for workers to answer a ping, and for the broker or database to answer.
REPLY_TIMEOUT = 1.0
CONNECT_TIMEOUT = 3


def broker_connection(settings: Settings) -> Connection:
    config = celery_config(settings)
    return Connection(
        config["broker_url"], transport=config.get("broker_transport"),
        transport_options=config["broker_transport_options"], connect_timeout=CONNECT_TIMEOUT,
    )


def scrub(message: str, settings: Settings) -> str:
    """An error text with the database's and broker's passwords taken out, on one line."""
    for url in (settings.database_url, settings.broker_url):
        try:
            password = make_url(url).password
        except Exception:
            password = None
        if password:
            message = message.replace(str(password), "***")
    return (message.splitlines() or [""])[0]


@dataclass(frozen=True)
class Check:
    """One service's health: reachable or not, and why not."""

    name: str
    url: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "url": self.url, "error": self.error}


def check_database(settings: Settings) -> Check:
    url = redact_url(settings.database_url)
    try:
        storage.ping_database(settings)
    except Exception as exc:
        return Check("database", url, scrub(f"{type(exc).__name__}: {exc}", settings))
    return Check("database", url)


def check_broker(settings: Settings) -> Check:
    url = redact_url(settings.broker_url)
    try:
        with broker_connection(settings) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=CONNECT_TIMEOUT)
    except Exception as exc:
        return Check("broker", url, scrub(f"{type(exc).__name__}: {exc}", settings))
    return Check("broker", url)


def queue_depths(settings: Settings) -> dict[str, int]:
    """Messages waiting in each stage queue (delayed retries on Redis are not in a queue yet)."""
    with broker_connection(settings) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=CONNECT_TIMEOUT)
        channel = connection.default_channel
        if hasattr(channel, "_size"):  # kombu's virtual transports: Redis and the embedded broker
            return {queue: channel._size(queue) for queue in QUEUES}
        return {queue: channel.queue_declare(queue, passive=True).message_count for queue in QUEUES}  # RabbitMQ


def live_workers(app: Celery) -> dict[str, list[str]]:
    """Workers that answered within REPLY_TIMEOUT, with the queues each consumes."""
    replies = app.control.inspect(timeout=REPLY_TIMEOUT).active_queues() or {}
    return {name: sorted(queue["name"] for queue in queues) for name, queues in sorted(replies.items())}


def pipeline_status(settings: Settings, app: Celery | None = None) -> dict[str, Any]:
    """Everything ``feedmill status`` shows; workers are asked only when ``app`` is given.

    A broker that cannot be reached leaves ``queues`` (and ``workers``) None,
    with the reason in ``broker_error``; the database part is still shown.
    """
    now = utcnow()
    status: dict[str, Any] = {
        "time": now,
        "database": redact_url(settings.database_url),
        "broker": redact_url(settings.broker_url),
        "broker_error": None,
        "queues": None,
        "workers": None,
    }
    try:
        status["queues"] = queue_depths(settings)
        if app is not None:
            status["workers"] = live_workers(app)
    except Exception as exc:
        status["broker_error"] = scrub(f"{type(exc).__name__}: {exc}", settings)
    with session_scope(settings) as session:
        status.update(
            articles=storage.article_counts(session),
            failures_open=storage.open_failures_by_stage(session),
            last_hour=storage.last_hour(session, now),
            feeds=storage.feed_health(session),
            feeds_in_trouble=storage.feeds_in_trouble(session),
            oldest_stuck=storage.oldest_stuck(session, now),
            stuck_after=settings.stuck_after,
            service=service_storage.live_children(session),
            subscriptions=deliveries_storage.delivery_counts(session, now),
            pages_due=pages_waiting(session),
        )
    return status


def jsonable(value: Any) -> Any:
    """``pipeline_status`` as JSON can carry it: its times in ISO 8601."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [jsonable(item) for item in value]
    return value

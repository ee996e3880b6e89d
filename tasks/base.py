"""The Celery task base every stage uses: retries, time limits, late acks, dead letters,
and what operators see of each task (metrics and the ids its log lines carry).

Transient failures (the database or broker briefly away, a timeout; see
``tasks.failures.is_transient``) retry the whole message with exponential
backoff and full jitter, at most ``max_retries`` times; that is safe because
every stage is idempotent. Anything else, and a transient failure that
outlasts the retries, is recorded in the ``failures`` table and not retried.
A bad article never raises here: stages record it instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

from celery import Task, current_app
from celery.utils.time import get_exponential_backoff_interval

from schemas.payloads import ArticleBatch, chunked
from schemas.pipeline import ANNOUNCE_STAGE, stage_named, stage_of_task
from schemas.settings import current_settings
from tasks import metrics
from tasks.failures import is_transient
from tasks.storage.failures import record_task_failure

#: The running task's ids (task_id, task_name, and poll_id, feed_id or article_ids
#: from its message), for the log filter in workers/logs.py; empty between tasks.
TASK_CONTEXT: ContextVar[dict[str, Any]] = ContextVar("feedmill_task_context", default={})
#: Message fields worth putting on every log line of a task.
CONTEXT_FIELDS = ("poll_id", "feed_id", "article_ids", "subscription_id")


def message_ids(args: tuple[Any, ...]) -> dict[str, Any]:
    """The ids a task message carries: a dict with some of CONTEXT_FIELDS, or a bare feed id."""
    message = args[0] if args else None
    if isinstance(message, dict):
        return {key: message[key] for key in CONTEXT_FIELDS if key in message}
    if isinstance(message, int):
        return {"feed_id": message}
    return {}


class StageTask(Task):
    retry_backoff = 2
    retry_backoff_max = 300
    max_retries = 8
    soft_time_limit = 240
    time_limit = 300

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.request.called_directly:
            # Reset in after_return, which Celery calls after its own success or failure line,
            # so that line carries the ids too.
            TASK_CONTEXT.set({"task_id": self.request.id, "task_name": self.name, **message_ids(args),
                              "started": time.monotonic()})
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc) or self.request.called_directly:
                raise
            countdown = get_exponential_backoff_interval(
                self.retry_backoff, self.request.retries, self.retry_backoff_max, full_jitter=True
            )
            # Past max_retries, retry() raises exc itself, which ends in on_failure.
            raise self.retry(exc=exc, countdown=countdown) from exc

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # The first try plus its retries.
        record_task_failure(current_settings(), self.name, args, exc, str(einfo), attempts=self.request.retries + 1)

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        started = TASK_CONTEXT.get().get("started")
        if started is not None:
            metrics.observe_task(stage_of_task(self.name), status.lower(), time.monotonic() - started)
        TASK_CONTEXT.set({})


def send(stage: str, *args: Any, **options: Any) -> None:
    """Send a message to ``stage``'s task by name; Celery's routes (from the registry) pick its queue."""
    current_app.send_task(stage_named(stage).task, args=args, **options)


def hand_on(stage: str, message: dict[str, Any]) -> None:
    """Send ``stage``'s result to the stage after it, if any (``schemas/pipeline.py``)."""
    successor = stage_named(stage).successor
    if successor is not None:
        send(successor, message)


def send_articles(stage: str, article_ids: Sequence[int]) -> int:
    """Send articles to ``stage`` in batches of ``FEEDMILL_BATCH_SIZE``; return how many batches."""
    batches = chunked(article_ids, current_settings().batch_size)
    for batch in batches:
        send(stage, ArticleBatch(tuple(batch)).to_message())
    return len(batches)


def announce_changed(article_ids: Sequence[int]) -> None:
    """Send articles a write changed after they were finished (``tasks.storage.articles.reopened``
    put them back) to the announcing stage, so that subscribers hear of the change; the stage
    passes over those not waiting for it."""
    send_articles(ANNOUNCE_STAGE, article_ids)


def hand_on_articles(stage: str, article_ids: Sequence[int]) -> None:
    """Send articles ``stage`` has finished to the next stage, if any."""
    successor = stage_named(stage).successor
    if successor is not None:
        send_articles(successor, article_ids)

"""The Celery task base every stage uses: retries, time limits, late acks, dead letters.

Transient failures (the database or broker briefly away, a timeout; see
``tasks.failures.is_transient``) retry the whole message with exponential
backoff and full jitter, at most ``max_retries`` times; that is safe because
every stage is idempotent. Anything else, and a transient failure that
outlasts the retries, is recorded in the ``failures`` table and not retried.
A bad article never raises here: stages record it instead.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from schemas.settings import current_settings
from tasks.failures import is_transient, record_task_failure


class StageTask(Task):
    retry_backoff = 2
    retry_backoff_max = 300
    max_retries = 8
    soft_time_limit = 240
    time_limit = 300

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
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
        record_task_failure(current_settings(), self.name, args, exc, str(einfo))

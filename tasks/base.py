"""The Celery task base every stage uses: retries, time limits, late acks.

Transient failures (the database or broker briefly away) retry the whole
batch with exponential backoff and jitter; that is safe because every stage
is idempotent. A bad article never raises here: stages record it instead.
"""

from __future__ import annotations

from celery import Task
from sqlalchemy.exc import DBAPIError, OperationalError

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OperationalError, DBAPIError, ConnectionError)


class StageTask(Task):
    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = 2
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 8
    soft_time_limit = 240
    time_limit = 300

"""Log lines operators can search: every line of a task carries its ids, optionally as JSON.

Connected to Celery's logging signals (``workers/celery_app.py`` imports this
module), so the worker and the scheduler, main process and prefork children
alike, get it after Celery has set up its own handlers:

- a filter on every handler adds ``task_id``, ``task_name`` and the message's
  ``poll_id``, ``feed_id`` or ``article_ids`` (set by ``tasks.base.StageTask``)
  to each record logged while a task runs;
- with ``FEEDMILL_LOG_FORMAT=json`` each line is one JSON object (python-json-logger)
  with ``time``, ``level``, ``logger``, ``process``, ``message`` and those ids.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from pythonjsonlogger.json import JsonFormatter

from schemas.settings import current_settings
from tasks.base import TASK_CONTEXT

JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(processName)s %(message)s"


class TaskContextFilter(logging.Filter):
    """Adds the running task's ids to a record (nothing between tasks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in TASK_CONTEXT.get().items():
            if key != "started" and not hasattr(record, key):
                setattr(record, key, value)
        return True


_TASK_CONTEXT_FILTER = TaskContextFilter()


def json_formatter() -> JsonFormatter:
    return JsonFormatter(
        JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "processName": "process"}
    )


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def configure_handlers(logger: logging.Logger, **_kwargs: Any) -> None:
    json_lines = current_settings().log_format == "json"
    for handler in logger.handlers:
        handler.addFilter(_TASK_CONTEXT_FILTER)
        if json_lines:
            handler.setFormatter(json_formatter())

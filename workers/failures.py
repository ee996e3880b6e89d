"""Dead letters for operators: send them back to their stage.

``requeue_failures`` re-opens failed articles (status back to pending in the
stage that failed), makes a dead event due again (with a fresh retry window) and
re-sends the message of a failed task, as the stage's
registry entry says it takes one; stages are idempotent, so re-queuing
something that meanwhile succeeded changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas.db import session_scope
from schemas.models import Failure
from schemas.payloads import PollRef
from schemas.pipeline import ARTICLES, BY_NAME, FEED, NOTHING, POLL, SUBSCRIPTION
from schemas.settings import Settings
from tasks.base import send, send_articles
from tasks.storage import deliveries as stored_deliveries
from tasks.storage import failures as stored_failures


def requeue_failures(settings: Settings, failure_ids: Sequence[int]) -> int:
    """Send these failures back to their stage and mark them re-queued; return how many."""
    articles: list[tuple[str, list[int]]] = []
    sends: list[tuple[str, tuple[Any, ...]]] = []
    with session_scope(settings) as session:
        failures = stored_failures.take_open_failures(session, failure_ids)
        for failure in failures:
            if failure.delivery_id is not None:
                sends += [("send", ({"subscription_id": subscription_id},))
                          for subscription_id in stored_deliveries.reopen_deliveries(session, [failure.delivery_id])]
            elif failure.article_ids and _message_of(failure) == ARTICLES:
                stored_failures.reopen_failed_articles(session, failure.article_ids, failure.stage)
                articles.append((failure.stage, failure.article_ids))
            else:
                sends += _resends(failure)
    # After the commit: a worker must find the articles pending when the message arrives.
    for stage, article_ids in articles:
        send_articles(stage, article_ids)
    for stage, args in sends:
        send(stage, *args)
    return len(failures)


def _message_of(failure: Failure) -> str | None:
    stage = BY_NAME.get(failure.stage)
    return stage.message if stage is not None else None


def _resends(failure: Failure) -> list[tuple[str, tuple[Any, ...]]]:
    """The message that sends a failed task's message back to its stage, in the shape the stage takes."""
    message = _message_of(failure)
    if failure.poll_id is not None and message == POLL:
        return [(failure.stage, (PollRef(failure.poll_id).to_message(),))]
    if failure.feed_id is not None and message == FEED:
        return [(failure.stage, (failure.feed_id,))]
    if message == NOTHING:
        return [(failure.stage, ())]
    if message == SUBSCRIPTION:  # its events are rows: the periodic look sends whatever is due
        return [("deliver_due", ())]
    return []

"""Failure classification: is an exception worth retrying?

``is_transient`` decides whether an exception is worth retrying (the database
or broker briefly away, a timeout) or permanent (a bug or bad data: retrying
gives the same answer). Work that fails for good lands in the ``failures``
table (``tasks/storage/failures.py``); operators list it and send it back to its
stage (``workers/failures.py``, ``feedmill failures``, ``feedmill requeue failed``).
"""

from __future__ import annotations

from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

_transient: list[type[BaseException]] = [
    OperationalError,  # connection lost, server restarting, locked, serialization failure
    InterfaceError,
    BrokerError,
    ConnectionError,
    TimeoutError,
    SoftTimeLimitExceeded,
]
try:
    import redis.exceptions

    _transient += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
except ImportError:  # Redis is optional: the embedded default needs no server
    pass
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = tuple(_transient)


def is_transient(exc: BaseException) -> bool:
    """True when the same work may well succeed later; False when a retry would fail alike."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated

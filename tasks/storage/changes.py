"""The article change sequence: every write readers can see gives the article a new ``change_seq``.

A read API cursor is "after change (seq, id)", so a reader that keeps its cursor sees each new or
changed article exactly once, in order. That needs more than a monotonic counter: it needs no
transaction to become visible with a value below one a reader has already passed.

- SQLite: writers are serialised (``BEGIN IMMEDIATE``), so a one-row counter
  (``article_change_counter``) bumped inside the transaction commits in order.
- PostgreSQL: ``nextval`` alone is not enough. A transaction that took N can commit after one
  that took N+1, and a reader that saw N+1 and moved its cursor past it would never see N.
  So a transaction takes its value under a transaction-level advisory lock held until its
  commit: the next transaction to take a value waits until this one has committed (or rolled
  back), so values become visible in the order they were taken. The lock is held only from the
  moment the value is taken until commit, and taken only when the rows it stamps are already
  locked by the transaction, so holding it never waits for another writer (no deadlock).

One value per transaction: every article the transaction changed gets it, and a cursor orders
ties by id. Gaps (a rolled back transaction's value) are harmless: a cursor only needs order.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import event, text, update
from sqlalchemy.orm import Session

from schemas.models import Article

#: ``pg_advisory_xact_lock`` key serialising the change stamps (env.py's migration lock is 727465).
CHANGE_LOCK = 727466
_SEQ = "feedmill_change_seq"
_NOTED = "feedmill_changed_articles"


def current(session: Session) -> int:
    """This transaction's change value, taken (under the change lock on PostgreSQL) at first use.

    Call it only once the rows it will stamp are locked by this transaction: from then on to
    commit the transaction must not wait for another writer's row locks.
    """
    seq = session.info.get(_SEQ)
    if seq is None:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHANGE_LOCK})
            seq = session.scalar(text("SELECT nextval('article_change_seq')"))
        else:
            seq = session.scalar(text("UPDATE article_change_counter SET last_seq = last_seq + 1 RETURNING last_seq"))
        session.info[_SEQ] = seq
    return seq


def note(session: Session, article_ids: Iterable[int]) -> None:
    """Mark articles this transaction changed; they get its change value as its last step before commit.

    For writers whose rows are not all locked before they write (parse's inserts, dedupe's
    re-pointing of a cluster): the value is taken only once every write is done.
    """
    session.info.setdefault(_NOTED, set()).update(article_ids)


@event.listens_for(Session, "before_commit")
def _stamp_noted(session: Session) -> None:
    noted = session.info.pop(_NOTED, None)
    if noted:
        session.flush()  # every pending write first: stamping is the last thing before COMMIT
        session.execute(
            update(Article).where(Article.id.in_(sorted(noted))).values(change_seq=current(session))
            .execution_options(synchronize_session=False)
        )


@event.listens_for(Session, "after_transaction_end")
def _forget(session: Session, transaction: object) -> None:
    if getattr(transaction, "parent", None) is None:  # the outermost transaction, not a savepoint
        session.info.pop(_SEQ, None)
        session.info.pop(_NOTED, None)

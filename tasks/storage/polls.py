"""Polls: one row per poll of a feed or per WebSub push, with the fetched body until parse stores it."""

from __future__ import annotations

from sqlalchemy.orm import Session

from schemas.models import POLL_FETCHED, Poll, utcnow


def add_pushed_poll(session: Session, feed_id: int, url: str, body: bytes, content_type: str | None) -> int:
    """A document a WebSub hub pushed, stored as a ``push`` poll ready to parse; its id."""
    now = utcnow()
    poll = Poll(
        feed_id=feed_id,
        kind="push",
        status=POLL_FETCHED,
        requested_at=now,
        started_at=now,
        status_code=200,
        final_url=url,
        body=body,
        size_bytes=len(body),
        content_type=content_type,
    )
    session.add(poll)
    session.flush()
    return poll.id

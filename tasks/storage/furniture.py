"""Paragraph fingerprints: one row per cleaned article, the hashes of its short paragraphs,
from which the clean stage learns each feed's furniture (``tasks.clean.furniture``)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from schemas.models import ParagraphFingerprints


def recent_fingerprints(session: Session, feed_id: int, excluding: Collection[int], limit: int) -> list[list[int]]:
    """The fingerprints of the feed's ``limit`` most recent cleaned articles, ``excluding`` these."""
    return list(
        session.scalars(
            select(ParagraphFingerprints.fingerprints)
            .where(ParagraphFingerprints.feed_id == feed_id, ParagraphFingerprints.article_id.not_in(excluding))
            .order_by(ParagraphFingerprints.article_id.desc())
            .limit(limit)
        )
    )


def replace_fingerprints(session: Session, feed_of: Mapping[int, int], fingerprints: Mapping[int, list[int]]) -> None:
    """The articles of ``feed_of`` (article id: feed id) get these fingerprints; one missing from them has none."""
    session.execute(delete(ParagraphFingerprints).where(ParagraphFingerprints.article_id.in_(feed_of)))
    if fingerprints:
        session.execute(
            insert(ParagraphFingerprints),
            [{"article_id": i, "feed_id": feed_of[i], "fingerprints": fps} for i, fps in fingerprints.items()],
        )

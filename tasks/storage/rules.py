"""The operator's rules (``rules``): tag, drop or keep articles by keyword or regex."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from schemas.models import Feed, Rule


def add_rule(
    session: Session, feed_id: int | None, action: str, tag: str | None, kind: str, pattern: str, fields: list[str]
) -> int:
    rule = Rule(feed_id=feed_id, action=action, tag=tag, kind=kind, pattern=pattern, fields=fields)
    session.add(rule)
    session.flush()
    return rule.id


def all_rules(session: Session) -> list[Rule]:
    """Every rule in id order, the order they are applied in."""
    return list(session.scalars(select(Rule).order_by(Rule.id)))


def rules_with_feed_urls(session: Session, feed_id: int | None = None) -> list[tuple[Rule, str | None]]:
    """Rules in order with their feed's URL; with ``feed_id``, that feed's and the global ones."""
    query = select(Rule, Feed.url).outerjoin(Feed, Feed.id == Rule.feed_id).order_by(Rule.id)
    if feed_id is not None:
        query = query.where((Rule.feed_id == feed_id) | Rule.feed_id.is_(None))
    return [(rule, url) for rule, url in session.execute(query)]


def remove_rules(session: Session, rule_ids: Sequence[int]) -> list[int]:
    """Delete these rules; the ids that existed."""
    return list(session.scalars(delete(Rule).where(Rule.id.in_(list(rule_ids))).returning(Rule.id)))

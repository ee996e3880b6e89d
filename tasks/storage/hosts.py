"""Hosts: per-host politeness shared by every worker process and host, kept in SQL.

At most ``host_max_concurrent`` fetches in flight to one host and at least
``host_min_interval`` seconds between the starts of two of them. The state
is two tables: ``hosts`` (one row per host, locked ``FOR UPDATE`` while a
slot is taken, which serialises competing workers on PostgreSQL; SQLite's
write lock does the same) and ``host_fetches`` (one leased row per fetch in
flight, so a killed worker's slot frees itself when the lease ends, or as soon as
its poll's fetch is delivered again).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from schemas.db import insert_for
from schemas.models import Host, HostFetch, utcnow
from schemas.settings import Settings

#: Extra lease beyond the fetch deadline before a slot is presumed abandoned.
LEASE_MARGIN = 30.0


@dataclass(frozen=True)
class SlotClaim:
    """Either a slot (``slot_id``) or how long to wait before asking again."""

    slot_id: int | None
    wait_seconds: float = 0.0


def claim_host_slot(session: Session, settings: Settings, host: str, poll_id: int | None) -> SlotClaim:
    """Claim a slot inside the caller's transaction, so a fetch can start in the one it reads its poll in.

    The slot only counts for other workers once that transaction commits, which it must do before the request.
    A slot the same poll still holds is freed first: it belongs to an earlier delivery of this fetch
    that died with its worker (the sweeper, the recovery look or the broker sent it again), and
    would otherwise keep the host busy until its lease ends (a minute and a half by default).
    """
    now = utcnow()
    session.execute(insert_for(session, Host.__table__).values(host=host).on_conflict_do_nothing())
    row = session.scalars(select(Host).where(Host.host == host).with_for_update()).one()
    abandoned = HostFetch.lease_until < now
    if poll_id is not None:
        abandoned = or_(abandoned, HostFetch.poll_id == poll_id)
    session.execute(delete(HostFetch).where(HostFetch.host == host, abandoned))
    in_flight = session.scalar(select(func.count()).where(HostFetch.host == host)) or 0
    if in_flight >= settings.host_max_concurrent:
        # Ask again shortly: a slot usually frees long before its lease ends.
        return SlotClaim(None, wait_seconds=max(settings.host_min_interval, 1.0))
    if row.last_started_at is not None:
        ready_at = row.last_started_at + timedelta(seconds=settings.host_min_interval)
        if ready_at > now:
            return SlotClaim(None, wait_seconds=(ready_at - now).total_seconds())
    row.last_started_at = now
    lease = timedelta(seconds=settings.fetch_deadline + LEASE_MARGIN)
    slot = HostFetch(host=host, poll_id=poll_id, lease_until=now + lease)
    session.add(slot)
    session.flush()
    return SlotClaim(slot.id)


def free_host_slot(session: Session, slot_id: int) -> None:
    """Free a slot inside the caller's transaction (a fetch records its outcome in the same one)."""
    session.execute(delete(HostFetch).where(HostFetch.id == slot_id))

"""WebSub (PubSubHubbub): subscribe to a feed's hub so new entries are pushed in seconds.

The subscriber side of the W3C WebSub recommendation: ask the hub to
subscribe (``request_subscription``), answer its intent verification
(``verify_intent``), and accept signed content pushes (``accept_push``),
which become a ``push`` poll row that the usual parse stage takes from there.
The HTTP endpoint around the last two is ``workers/web.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from celery import shared_task
from sqlalchemy import select

from schemas.db import session_scope
from schemas.models import POLL_FETCHED, Feed, Poll, utcnow
from schemas.payloads import PollRef
from schemas.settings import Settings, current_settings
from tasks.base import StageTask, send
from tasks.http import FetchRefused, check_url_allowed, http_client

#: Lease we ask hubs for; they may grant less, and we renew before it ends.
REQUESTED_LEASE_SECONDS = 10 * 86400
#: Renew a subscription this long before it expires.
RENEW_BEFORE = timedelta(days=1)
#: A request the hub never verified is sent again after this long.
VERIFY_TIMEOUT = timedelta(hours=1)
SIGNATURE_ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


def callback_url(settings: Settings, feed_id: int) -> str:
    return f"{settings.websub_callback_url.rstrip('/')}/websub/{feed_id}"


def signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    """Check ``X-Hub-Signature: method=hexdigest`` against the body and our secret."""
    if not header or "=" not in header:
        return False
    method, _, digest = header.partition("=")
    algorithm = SIGNATURE_ALGORITHMS.get(method.strip().lower())
    if algorithm is None:
        return False
    expected = hmac.new(secret.encode(), body, algorithm).hexdigest()
    return hmac.compare_digest(expected, digest.strip().lower())


def feeds_to_subscribe(settings: Settings) -> list[int]:
    """Mark feeds that want WebSub and need a (re)subscription as requested; return their ids."""
    now = utcnow()
    with session_scope(settings) as session:
        feeds = session.scalars(
            select(Feed)
            .where(Feed.websub_wanted.is_(True), Feed.status == "active", Feed.websub_hub.is_not(None))
            .with_for_update(skip_locked=True)
        ).all()
        due = []
        for feed in feeds:
            expiring = feed.websub_state == "active" and (
                feed.websub_expires_at is None or feed.websub_expires_at - RENEW_BEFORE < now
            )
            unanswered = feed.websub_state == "requested" and (
                feed.websub_requested_at is None or feed.websub_requested_at + VERIFY_TIMEOUT < now
            )
            if feed.websub_state in ("none", "failed", "denied") or expiring or unanswered:
                feed.websub_state, feed.websub_requested_at = "requested", now
                feed.websub_secret = feed.websub_secret or secrets.token_hex(32)
                due.append(feed.id)
        return due


def request_subscription(settings: Settings, feed_id: int) -> None:
    """POST the subscription request to the feed's hub; the hub then verifies our intent."""
    with session_scope(settings) as session:
        feed = session.get(Feed, feed_id)
        if feed is None or feed.websub_hub is None or feed.websub_state != "requested":
            return
        hub, topic, secret = feed.websub_hub, feed.websub_topic or feed.url, feed.websub_secret or ""
    error = None
    if not settings.websub_callback_url:
        error = "FEEDMILL_WEBSUB_CALLBACK_URL is not set: hubs cannot reach us"
    else:
        try:
            check_url_allowed(hub, settings.allow_private_networks)
            response = http_client().post(
                hub,
                data={
                    "hub.mode": "subscribe",
                    "hub.topic": topic,
                    "hub.callback": callback_url(settings, feed_id),
                    "hub.secret": secret,
                    "hub.lease_seconds": str(REQUESTED_LEASE_SECONDS),
                },
                timeout=settings.fetch_timeout,
            )
            if response.status_code not in (202, 204):
                error = f"hub answered HTTP {response.status_code}"
        except (FetchRefused, OSError) as exc:
            error = f"hub unreachable: {exc}"
        except Exception as exc:  # httpx errors: the hub is an outside server
            error = f"hub request failed: {type(exc).__name__}: {exc}"
    if error is not None:
        with session_scope(settings) as session:
            feed = session.get(Feed, feed_id)
            if feed is not None and feed.websub_state == "requested":
                feed.websub_state, feed.last_error = "failed", f"websub: {error}"


@dataclass(frozen=True)
class Verification:
    status: int
    body: str


def verify_intent(settings: Settings, feed_id: int, params: dict[str, str]) -> Verification:
    """Answer a hub's GET to our callback: echo the challenge only for what we asked."""
    mode, topic = params.get("hub.mode", ""), params.get("hub.topic", "")
    now = utcnow()
    with session_scope(settings) as session:
        feed = session.get(Feed, feed_id, with_for_update=True)
        if feed is None:
            return Verification(404, "unknown subscription")
        ours = topic in (feed.websub_topic, feed.url)
        if mode == "denied":
            feed.websub_state = "denied"
            feed.last_error = f"websub: hub denied the subscription: {params.get('hub.reason', 'no reason given')}"
            return Verification(200, "")
        if mode == "subscribe" and ours and feed.websub_wanted and feed.websub_state in ("requested", "active"):
            lease = int(params.get("hub.lease_seconds") or REQUESTED_LEASE_SECONDS)
            feed.websub_state, feed.websub_expires_at = "active", now + timedelta(seconds=lease)
            return Verification(200, params.get("hub.challenge", ""))
        if mode == "unsubscribe" and ours and not feed.websub_wanted:
            feed.websub_state, feed.websub_expires_at = "none", None
            return Verification(200, params.get("hub.challenge", ""))
    return Verification(404, "no such subscription requested")


def accept_push(settings: Settings, feed_id: int, body: bytes, content_type: str | None, signature: str | None) -> int | None:
    """Store a pushed feed document as a ``push`` poll ready to parse; return its id.

    Pushes with a missing or wrong signature are dropped (the hub is still
    answered 2xx, as WebSub requires, so a forger learns nothing).
    """
    with session_scope(settings) as session:
        feed = session.get(Feed, feed_id)
        if feed is None or not feed.websub_secret or feed.websub_state != "active":
            return None
        if not signature_valid(feed.websub_secret, body, signature):
            return None
        if len(body) > settings.max_body_bytes:
            return None
        now = utcnow()
        poll = Poll(
            feed_id=feed_id,
            kind="push",
            status=POLL_FETCHED,
            requested_at=now,
            started_at=now,
            status_code=200,
            final_url=feed.websub_topic or feed.url,
            body=body,
            size_bytes=len(body),
            content_type=content_type,
        )
        session.add(poll)
        session.flush()
        poll_id = poll.id
    send("parse", PollRef(poll_id).to_message())
    return poll_id


@shared_task(base=StageTask, name="feedmill.websub_subscribe")
def websub_subscribe_task(feed_id: int) -> None:
    request_subscription(current_settings(), feed_id)

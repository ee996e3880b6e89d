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
from datetime import datetime, timedelta

from celery import shared_task

from schemas.db import session_scope
from schemas.models import utcnow
from schemas.payloads import PollRef
from schemas.settings import Settings, current_settings
from tasks.base import StageTask, send
from tasks.http import FetchRefused, check_url_allowed, http_client
from tasks.storage import feeds, polls

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


def subscription_due(state: str, expires_at: datetime | None, requested_at: datetime | None, now: datetime) -> bool:
    """A feed that wants WebSub needs a (re)subscription: never asked, refused, expiring, or unanswered."""
    if state in ("none", "failed", "denied"):
        return True
    if state == "active":
        return expires_at is None or expires_at - RENEW_BEFORE < now
    if state == "requested":
        return requested_at is None or requested_at + VERIFY_TIMEOUT < now
    return False


def feeds_to_subscribe(settings: Settings) -> list[int]:
    """Mark feeds that want WebSub and need a (re)subscription as requested; return their ids."""
    with session_scope(settings) as session:
        return feeds.request_websub_subscriptions(session, subscription_due, utcnow(), lambda: secrets.token_hex(32))


def request_subscription(settings: Settings, feed_id: int) -> None:
    """POST the subscription request to the feed's hub; the hub then verifies our intent."""
    with session_scope(settings) as session:
        request = feeds.websub_request(session, feed_id)
    if request is None:
        return
    error = subscribe_at_hub(settings, feed_id, request)
    if error is not None:
        with session_scope(settings) as session:
            feeds.websub_request_failed(session, feed_id, f"websub: {error}")


def subscribe_at_hub(settings: Settings, feed_id: int, request: feeds.WebSubRequest) -> str | None:
    """The subscription request to the hub; None when the hub accepted it, else why not."""
    if not settings.websub_callback_url:
        return "FEEDMILL_WEBSUB_CALLBACK_URL is not set: hubs cannot reach us"
    try:
        check_url_allowed(request.hub, settings.allow_private_networks)
        response = http_client().post(
            request.hub,
            data={
                "hub.mode": "subscribe",
                "hub.topic": request.topic,
                "hub.callback": callback_url(settings, feed_id),
                "hub.secret": request.secret,
                "hub.lease_seconds": str(REQUESTED_LEASE_SECONDS),
            },
            timeout=settings.fetch_timeout,
        )
    except (FetchRefused, OSError) as exc:
        return f"hub unreachable: {exc}"
    except Exception as exc:  # httpx errors: the hub is an outside server
        return f"hub request failed: {type(exc).__name__}: {exc}"
    if response.status_code not in (202, 204):
        return f"hub answered HTTP {response.status_code}"
    return None


@dataclass(frozen=True)
class Verification:
    status: int
    body: str


@dataclass(frozen=True)
class VerificationDecision:
    """The answer to a hub's verification, and the subscription state it leaves (None: unchanged)."""

    answer: Verification
    state: str | None = None
    expires_at: datetime | None = None
    error: str | None = None


def decide_verification(subscription: feeds.WebSubSubscription, params: dict[str, str], now: datetime) -> VerificationDecision:
    """Echo the challenge only for what we asked: a subscription we requested, an unsubscription we wanted."""
    mode, topic = params.get("hub.mode", ""), params.get("hub.topic", "")
    ours = topic in (subscription.topic, subscription.url)
    if mode == "denied":
        reason = params.get("hub.reason", "no reason given")
        return VerificationDecision(Verification(200, ""), "denied", error=f"websub: hub denied the subscription: {reason}")
    if mode == "subscribe" and ours and subscription.wanted and subscription.state in ("requested", "active"):
        lease = int(params.get("hub.lease_seconds") or REQUESTED_LEASE_SECONDS)
        return VerificationDecision(Verification(200, params.get("hub.challenge", "")), "active", now + timedelta(seconds=lease))
    if mode == "unsubscribe" and ours and not subscription.wanted:
        return VerificationDecision(Verification(200, params.get("hub.challenge", "")), "none")
    return VerificationDecision(Verification(404, "no such subscription requested"))


def verify_intent(settings: Settings, feed_id: int, params: dict[str, str]) -> Verification:
    """Answer a hub's GET to our callback."""
    with session_scope(settings) as session:
        subscription = feeds.websub_subscription(session, feed_id, lock=True)
        if subscription is None:
            return Verification(404, "unknown subscription")
        decision = decide_verification(subscription, params, utcnow())
        if decision.state is not None:
            feeds.set_websub_state(session, feed_id, decision.state, decision.expires_at, decision.error)
        return decision.answer


def accept_push(settings: Settings, feed_id: int, body: bytes, content_type: str | None, signature: str | None) -> int | None:
    """Store a pushed feed document as a ``push`` poll ready to parse; return its id.

    Pushes with a missing or wrong signature are dropped (the hub is still
    answered 2xx, as WebSub requires, so a forger learns nothing).
    """
    with session_scope(settings) as session:
        subscription = feeds.websub_subscription(session, feed_id)
        if subscription is None or not subscription.secret or subscription.state != "active":
            return None
        if not signature_valid(subscription.secret, body, signature) or len(body) > settings.max_body_bytes:
            return None
        poll_id = polls.add_pushed_poll(session, feed_id, subscription.topic or subscription.url, body, content_type)
    send("parse", PollRef(poll_id).to_message())
    return poll_id


@shared_task(base=StageTask, name="feedmill.websub_subscribe")
def websub_subscribe_task(feed_id: int) -> None:
    request_subscription(current_settings(), feed_id)

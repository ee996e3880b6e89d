"""``feedmill subscriptions``: where processed articles are pushed (webhooks, Redis streams)."""

from __future__ import annotations

import json
import re
from typing import Any

import click
import httpx

from schemas.db import session_scope
from schemas.models import Subscription, utcnow
from tasks.deliver import new_secret, stream_redis, stream_redis_url, webhook_headers
from tasks.storage import deliveries as stored
from tasks.storage.feeds import feed_by_url
from workers.cli.common import iso, migrated_settings

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@click.group()
def subscriptions() -> None:
    """Push new and changed articles to webhooks or Redis streams, as they finish."""


def _named(session: Any, name: str) -> Subscription:
    subscription = stored.subscription_named(session, name)
    if subscription is None:
        raise click.ClickException(f"no subscription {name} (see: feedmill subscriptions list)")
    return subscription


def _record(subscription: Subscription, feed_urls: dict[int, str], counts: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "name": subscription.name, "kind": subscription.kind, "target": subscription.target,
        "status": subscription.status, "topics": subscription.topics or [],
        "feeds": [feed_urls.get(i, str(i)) for i in subscription.feed_ids or []],
        "tags": subscription.tags or [], "query": subscription.query, "created_at": iso(subscription.created_at),
        **({"deliveries": {k: counts[k] for k in ("delivered", "pending", "retrying", "dead", "oldest_pending_seconds")}}
           if counts else {}),
    }


@subscriptions.command("add")
@click.argument("name")
@click.option("--webhook", "webhook_url", help="POST each event to this URL (Standard Webhooks).")
@click.option("--secret", help="The webhook's signing secret, whsec_ + base64 (default: a new one, printed once).")
@click.option("--redis-stream", "stream_key", help="XADD each event to this Redis stream.")
@click.option("--topic", "topics", multiple=True, help="Only articles with this topic; repeat for any of several.")
@click.option("--feed", "feed_urls", multiple=True, help="Only articles of this feed; repeat for any of several.")
@click.option("--tag", "tags", multiple=True, help="Only articles with this tag; repeat for any of several.")
@click.option("--query", help="Only articles whose title or text contains every one of these words.")
def subscriptions_add(name: str, webhook_url: str | None, secret: str | None, stream_key: str | None,
                      topics: tuple[str, ...], feed_urls: tuple[str, ...], tags: tuple[str, ...],
                      query: str | None) -> None:
    """Add subscription NAME: --webhook URL [--secret S] or --redis-stream KEY, with optional filters.

    Articles that finish from now on are delivered; earlier ones are not sent again.
    """
    if not NAME.match(name):
        raise click.ClickException(f"bad name {name!r}: letters, digits, '.', '_' and '-', at most 64")
    if (webhook_url is None) == (stream_key is None):
        raise click.ClickException("give exactly one of --webhook URL or --redis-stream KEY")
    settings = migrated_settings()
    if webhook_url is not None:
        if not webhook_url.startswith(("http://", "https://")):
            raise click.ClickException(f"--webhook needs an http(s) URL, not {webhook_url}")
        generated = secret is None
        secret = secret or new_secret()
        if not secret.startswith("whsec_"):
            raise click.ClickException("--secret must be a Standard Webhooks secret: whsec_ and a base64 key")
        try:
            webhook_headers(secret, "msg_check", "{}", utcnow())
        except Exception as exc:  # noqa: BLE001 - the library's own complaint, in one line
            raise click.ClickException(f"--secret is not a usable secret: {exc}") from exc
    elif stream_redis_url(settings) is None:
        raise click.ClickException("a stream subscription needs Redis: set FEEDMILL_STREAM_REDIS_URL "
                                   "(or use a Redis broker)")
    with session_scope(settings) as session:
        if stored.subscription_named(session, name) is not None:
            raise click.ClickException(f"subscription {name} exists (feedmill subscriptions show {name})")
        feed_ids = []
        for url in feed_urls:
            feed = feed_by_url(session, url)
            if feed is None:
                raise click.ClickException(f"no feed {url} (see: feedmill feeds list)")
            feed_ids.append(feed.id)
        stored.add_subscription(
            session, name=name, kind=stored.WEBHOOK if webhook_url else stored.REDIS_STREAM,
            target=webhook_url or stream_key, secret=secret if webhook_url else None,
            topics=list(topics) or None, feed_ids=feed_ids or None, tags=list(tags) or None, query=query,
            status=stored.ACTIVE,
        )
    click.echo(f"added subscription {name}: {'webhook ' + webhook_url if webhook_url else 'Redis stream ' + stream_key}")
    if webhook_url and generated:
        click.echo(f"secret (shown once; the receiver verifies signatures with it): {secret}")


def _all(settings: Any) -> list[dict[str, Any]]:
    with session_scope(settings, read_only=True) as session:
        counts = {row["name"]: row for row in stored.delivery_counts(session, utcnow())}
        found = stored.all_subscriptions(session)
        urls = stored.feed_urls(session, {i for s in found for i in s.feed_ids or []})
        return [_record(s, urls, counts.get(s.name)) for s in found]


@subscriptions.command("list")
@click.option("--json", "as_json", is_flag=True)
def subscriptions_list(as_json: bool) -> None:
    """Every subscription with its deliveries: delivered, pending, retrying, dead, and the lag."""
    records = _all(migrated_settings())
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo("no subscriptions (add one: feedmill subscriptions add NAME --webhook URL)")
    for r in records:
        d = r["deliveries"]
        lag = f", oldest pending {d['oldest_pending_seconds']:.0f} s" if d["oldest_pending_seconds"] is not None else ""
        click.echo(f"{r['name']}  {r['status']}  {r['kind']} {r['target']}: {d['delivered']} delivered, "
                   f"{d['pending']} pending, {d['retrying']} retrying, {d['dead']} dead{lag}")


@subscriptions.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def subscriptions_show(name: str, as_json: bool) -> None:
    """One subscription: target, filters and deliveries."""
    records = [r for r in _all(migrated_settings()) if r["name"] == name]
    if not records:
        raise click.ClickException(f"no subscription {name} (see: feedmill subscriptions list)")
    if as_json:
        click.echo(json.dumps(records[0], indent=2))
        return
    for key, value in records[0].items():
        click.echo(f"{key}: {value}")


def _set_status(name: str, status: str) -> None:
    with session_scope(migrated_settings()) as session:
        _named(session, name).status = status
    click.echo(f"{name}: {status}" + ("; its events wait and are sent on resume" if status == stored.PAUSED else ""))


@subscriptions.command("pause")
@click.argument("name")
def subscriptions_pause(name: str) -> None:
    """Stop sending; new events keep being recorded and wait."""
    _set_status(name, stored.PAUSED)


@subscriptions.command("resume")
@click.argument("name")
def subscriptions_resume(name: str) -> None:
    """Send again, the waiting events first."""
    _set_status(name, stored.ACTIVE)


@subscriptions.command("remove")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask first.")
def subscriptions_remove(name: str, yes: bool) -> None:
    """Delete a subscription and its undelivered events."""
    settings = migrated_settings()
    if not yes:
        click.confirm(f"delete subscription {name} and its events?", abort=True, err=True)
    with session_scope(settings) as session:
        stored.remove_subscription(session, _named(session, name).id)
    click.echo(f"removed subscription {name}")


@subscriptions.command("test")
@click.argument("name")
def subscriptions_test(name: str) -> None:
    """Send one signed `subscription.test` event now and say how it was answered (exit 1 if not 2xx)."""
    settings = migrated_settings()
    with session_scope(settings, read_only=True) as session:
        subscription = _named(session, name)
        kind, target, secret = subscription.kind, subscription.target, subscription.secret
    now = utcnow()
    body = json.dumps({"type": "subscription.test", "timestamp": iso(now), "data": {"subscription": name}})
    event_id = f"msg_test_{int(now.timestamp())}"
    try:
        if kind == stored.REDIS_STREAM:
            entry = stream_redis(settings).xadd(target, {"id": event_id, "event": body})
            click.echo(f"{name}: added entry {entry.decode()} to stream {target}")
            return
        response = httpx.post(target, content=body.encode(), headers=webhook_headers(secret or "", event_id, body, now),
                              timeout=settings.webhook_timeout)
    except Exception as exc:  # noqa: BLE001 - reported in one line
        raise click.ClickException(f"{name}: {type(exc).__name__}: {exc}") from exc
    if not 200 <= response.status_code < 300:
        raise click.ClickException(f"{name}: {target} answered HTTP {response.status_code}")
    click.echo(f"{name}: {target} answered HTTP {response.status_code}")

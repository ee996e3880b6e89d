"""``feedmill feeds``: add, import, export and list feeds."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlsplit

import click
from sqlalchemy import select

from schemas.db import insert_for, session_scope
from schemas.models import Feed
from schemas.settings import Settings
from workers.cli.common import iso, migrated_settings


@click.group()
def feeds() -> None:
    """Add, import, export and list feeds."""


def _check_feed_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.ClickException(f"not an http(s) feed URL: {url!r}")
    return url.strip()


def _add_feeds(settings: Settings, urls: list[str]) -> int:
    """Insert feeds not yet known; return how many were new."""
    if not urls:
        return 0
    with session_scope(settings) as session:
        insert = insert_for(session, Feed.__table__)
        rows = [{"url": url, "status": "active", "consecutive_errors": 0} for url in dict.fromkeys(urls)]
        added = session.scalars(
            insert.values(rows).on_conflict_do_nothing(index_elements=["url"]).returning(Feed.id)
        ).all()
    return len(added)


@feeds.command("add")
@click.argument("urls", nargs=-1, required=True)
def feeds_add(urls: tuple[str, ...]) -> None:
    """Add feeds by URL (already known ones are left as they are)."""
    checked = [_check_feed_url(url) for url in urls]
    added = _add_feeds(migrated_settings(), checked)
    click.echo(f"added {added} feed(s); {len(set(checked)) - added} already present")


@feeds.command("import")
@click.argument("opml_file", type=click.File("rb"))
def feeds_import(opml_file: Any) -> None:
    """Import the feeds of an OPML file."""
    try:
        root = ET.parse(opml_file).getroot()
    except ET.ParseError as exc:
        raise click.ClickException(f"{opml_file.name} is not valid OPML: {exc}") from exc
    urls = [o.get("xmlUrl", "").strip() for o in root.iter("outline") if o.get("xmlUrl")]
    good = [url for url in urls if urlsplit(url).scheme in ("http", "https")]
    for bad in sorted(set(urls) - set(good)):
        click.echo(f"skipped (not an http(s) URL): {bad}", err=True)
    added = _add_feeds(migrated_settings(), good)
    click.echo(f"imported {added} new feed(s) of {len(set(good))} in {opml_file.name}")


@feeds.command("export")
def feeds_export() -> None:
    """Write all feeds as OPML to stdout."""
    with session_scope(migrated_settings()) as session:
        rows = session.execute(select(Feed.url, Feed.title, Feed.site_url).order_by(Feed.id)).all()
    opml = ET.Element("opml", version="2.0")
    ET.SubElement(ET.SubElement(opml, "head"), "title").text = "feedmill feeds"
    body = ET.SubElement(opml, "body")
    for url, title, site_url in rows:
        attrs = {"type": "rss", "text": title or url, "xmlUrl": url}
        if site_url:
            attrs["htmlUrl"] = site_url
        ET.SubElement(body, "outline", attrs)
    ET.indent(opml)
    click.echo('<?xml version="1.0" encoding="utf-8"?>')
    click.echo(ET.tostring(opml, encoding="unicode"))


def _feed_record(feed: Feed) -> dict[str, Any]:
    return {
        "id": feed.id,
        "url": feed.url,
        "title": feed.title,
        "status": feed.status,
        "last_polled_at": iso(feed.last_polled_at),
        "last_status_code": feed.last_status_code,
        "last_error": feed.last_error,
        "consecutive_errors": feed.consecutive_errors,
        "next_poll_at": iso(feed.next_poll_at),
        "etag": feed.etag,
        "last_modified": feed.last_modified,
    }


@feeds.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def feeds_list(as_json: bool) -> None:
    """List feeds with their last poll and next poll."""
    with session_scope(migrated_settings()) as session:
        records = [_feed_record(feed) for feed in session.scalars(select(Feed).order_by(Feed.id))]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo("no feeds; add one with: feedmill feeds add URL")
        return
    for r in records:
        last = f"{r['last_status_code'] or '-'} at {r['last_polled_at']}" if r["last_polled_at"] else "never polled"
        trouble = f"  errors: {r['consecutive_errors']} ({r['last_error']})" if r["consecutive_errors"] else ""
        click.echo(f"{r['id']:>5}  {r['status']:<7} {r['url']}\n       last: {last}; next: {r['next_poll_at']}{trouble}")

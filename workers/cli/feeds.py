"""``feedmill feeds``: add, import, export, list, show, set, poll, pause, resume and remove feeds."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import click
from sqlalchemy.orm import Session

from schemas.db import session_scope
from schemas.models import RETAIN_FOREVER, Poll, utcnow
from schemas.settings import Settings, duration_seconds, duration_text, retention_seconds
from tasks.base import announce_changed
from tasks.discover import Probe, probe
from tasks.fulltext import FULL_TEXT_MODES
from tasks.links import BadFeedUrl, feed_url_key, safe_link
from tasks.storage.retention import delete_articles, delete_in_batches, feed_article_ids
from tasks.storage.failures import FailureFilter, open_failures
from tasks.storage.feeds import (
    add_feeds,
    delete_feeds,
    feeds_for_opml,
    feeds_left_out,
    polls_and_rules_of,
    present_feeds,
    recent_polls,
)
from tasks.storage.reading import feed_record, feed_records
from workers.cli.common import find_feed, iso, migrated_settings
from workers.scheduler import claim_feeds, enqueue_fetches


#: URLs fetched at once by `feeds add` and `feeds import` to find their feeds.
PROBE_CONCURRENCY = 8


@click.group()
def feeds() -> None:
    """Add, import, export and list feeds."""


def _normal_url(url: str) -> str:
    try:
        return feed_url_key(url)
    except BadFeedUrl as exc:
        raise click.ClickException(str(exc)) from None


@dataclass(frozen=True)
class NewFeed:
    url: str
    #: The OPML folders it sits in, outermost first.
    tags: tuple[str, ...] = ()


def _add_feeds(settings: Settings, wanted: list[NewFeed], websub: bool = False) -> list[str]:
    """Insert the feeds not yet present (by their normal URL); return the URLs added."""
    tags_by_url = {feed_url_key(feed.url): feed.tags for feed in wanted}
    if not tags_by_url:
        return []
    with session_scope(settings) as session:
        return add_feeds(session, tags_by_url, websub)


def _probe_all(settings: Settings, urls: list[str], every: bool) -> list[Probe]:
    """Fetch each URL (a few at a time) to find its feed."""
    with ThreadPoolExecutor(max_workers=PROBE_CONCURRENCY) as pool:
        return list(pool.map(lambda url: probe(url, settings, every=every), urls))


@dataclass
class Intake:
    """What ``feeds add`` or ``feeds import`` decided per URL, told as it goes."""

    check: bool
    wanted: list[NewFeed] = field(default_factory=list)
    refused: int = 0

    def take(self, probed: Probe, tags: tuple[str, ...] = ()) -> None:
        if probed.feeds:
            for url in probed.feeds:
                if probed.found_by:
                    click.echo(f"{probed.url}: found the feed {url} ({probed.found_by})", err=True)
                self.wanted.append(NewFeed(url, tags))
            for reason in probed.skipped:
                click.echo(f"{probed.url}: skipped {reason}", err=True)
        elif probed.page or self.check:
            click.echo(f"feedmill: error: {probed.url}: {probed.problem}", err=True)
            self.refused += 1
        else:
            click.echo(f"warning: {probed.url} gave no feed now ({probed.problem}); added anyway, "
                       "polled on its schedule (--check refuses it instead)", err=True)
            self.wanted.append(NewFeed(probed.url, tags))


@feeds.command("add")
@click.argument("urls", nargs=-1, required=True)
@click.option("--websub", is_flag=True, help="Subscribe through the hub the feed advertises (needs `feedmill web`).")
@click.option("--all", "every", is_flag=True, help="Add every feed a page links, not only the first.")
@click.option("--check", is_flag=True, help="Refuse a URL that does not answer with a feed now, with the reason.")
def feeds_add(urls: tuple[str, ...], websub: bool, every: bool, check: bool) -> None:
    """Add feeds by URL: a feed, or a page that links its feeds (already present ones are left as they are).

    Each URL is fetched once: a feed is added; an HTML page's <link rel="alternate"> feeds
    (else its /feed, /rss.xml, /atom.xml, /index.xml or /feed.json) are found and the first is
    added. A URL that cannot be fetched, or answers with something else, is added with a warning
    (it may be passing); --check refuses it. Exit 1 when a URL was refused: an HTML page without
    feeds, or with --check any URL that gave no feed.
    """
    given = {_normal_url(url): url.strip() for url in reversed(urls)}  # the first spelling of each
    normal = list(dict.fromkeys(_normal_url(url) for url in urls))
    settings = migrated_settings()
    with session_scope(settings) as session:
        present = present_feeds(session, normal)
    intake = Intake(check)
    for url in normal:
        if url in present:
            click.echo(f"{given[url]}: already present as {present[url]}", err=True)
    for probed in _probe_all(settings, [url for url in normal if url not in present], every):
        intake.take(probed)
    with session_scope(settings) as session:  # a page's feed, or where a URL redirects, may be present
        found_present = present_feeds(session, [feed.url for feed in intake.wanted]) if intake.wanted else {}
    for key, stored in found_present.items():
        click.echo(f"{key}: already present as {stored}", err=True)
    added = _add_feeds(settings, intake.wanted + [NewFeed(url) for url in present.values()], websub)
    for url in added:
        click.echo(f"added {url}")
    already = len(present) + len(found_present)
    click.echo(f"added {len(added)} feed(s); {already} already present")
    if websub:
        click.echo("WebSub: subscribing once a poll has found the feed's hub")
    if intake.refused:
        raise SystemExit(1)


def _opml_feeds(root: ET.Element) -> list[tuple[str, tuple[str, ...]]]:
    """Each outline's xmlUrl with the folders (outlines without one) around it, outermost first."""
    found: list[tuple[str, tuple[str, ...]]] = []

    def walk(element: ET.Element, folders: tuple[str, ...]) -> None:
        for outline in element.findall("outline"):
            if outline.get("xmlUrl"):
                found.append((outline.get("xmlUrl", "").strip(), folders))
            else:
                name = (outline.get("text") or outline.get("title") or "").strip()
                walk(outline, folders + (name,) if name else folders)

    for body in root.iter("body"):
        walk(body, ())
    return found


@feeds.command("import")
@click.argument("opml_file", type=click.File("rb"))
@click.option("--check", is_flag=True, help="Refuse a feed that does not answer with a feed now, with the reason.")
def feeds_import(opml_file: Any, check: bool) -> None:
    """Import the feeds of an OPML file; its folders become the feeds' tags.

    Each URL is fetched once, as by `feeds add`: a site's page is replaced by the feed it links.
    """
    try:
        root = ET.parse(opml_file).getroot()
    except ET.ParseError as exc:
        raise click.ClickException(f"{opml_file.name} is not valid OPML: {exc}") from exc
    listed: dict[str, tuple[str, ...]] = {}
    for url, folders in _opml_feeds(root):
        try:
            listed.setdefault(feed_url_key(url), folders)
        except BadFeedUrl:
            click.echo(f"skipped (not an http(s) URL): {url}", err=True)
    settings = migrated_settings()
    with session_scope(settings) as session:
        present = present_feeds(session, list(listed))
    intake = Intake(check)
    probed = _probe_all(settings, [url for url in listed if url not in present], every=False)
    for result in probed:
        intake.take(result, listed[result.url])
    added = _add_feeds(settings, intake.wanted)
    click.echo(f"imported {len(added)} new feed(s) of {len(listed)} in {opml_file.name}")
    if intake.refused:
        raise SystemExit(1)


@feeds.command("export")
def feeds_export() -> None:
    """Write all feeds as OPML to stdout, in their folders (their tags)."""
    with session_scope(migrated_settings()) as session:
        rows = feeds_for_opml(session)
    opml = ET.Element("opml", version="2.0")
    ET.SubElement(ET.SubElement(opml, "head"), "title").text = "feedmill feeds"
    folders: dict[tuple[str, ...], ET.Element] = {(): ET.SubElement(opml, "body")}

    def folder(path: tuple[str, ...]) -> ET.Element:
        if path not in folders:
            folders[path] = ET.SubElement(folder(path[:-1]), "outline", {"text": path[-1], "title": path[-1]})
        return folders[path]

    for url, title, site_url, tags in rows:
        attrs = {"type": "rss", "text": title or url, "xmlUrl": url}
        if site_url := safe_link(site_url):
            attrs["htmlUrl"] = site_url
        ET.SubElement(folder(tuple(tags or ())), "outline", attrs)
    ET.indent(opml)
    click.echo('<?xml version="1.0" encoding="utf-8"?>')
    click.echo(ET.tostring(opml, encoding="unicode"))


def _poll_record(poll: Poll) -> dict[str, Any]:
    return {
        "id": poll.id,
        "kind": poll.kind,
        "requested_at": iso(poll.requested_at),
        "finished_at": iso(poll.finished_at),
        "status": poll.status,
        "status_code": poll.status_code,
        "duration_ms": poll.duration_ms,
        "bytes": poll.size_bytes,
        "new_entries": poll.new_entries,
        "updated_entries": poll.updated_entries,
        "error": poll.error,
    }


def _describe(r: dict[str, Any]) -> str:
    if r["last_polled_at"]:
        last = f"{r['last_result'] or '-'} (HTTP {r['last_status_code'] or '-'}) at {r['last_polled_at']}"
    else:
        last = "never polled"
    lines = [f"{r['id']:>5}  {r['status']:<7} {r['url']}", f"       last poll: {last}"]
    if r["consecutive_errors"]:
        lines.append(f"       errors in a row: {r['consecutive_errors']}, last: {r['last_error']}")
    if r["status"] == "active":
        lines.append(f"       next poll: {r['next_poll_at']}, because: {r['next_poll_reason'] or 'new feed, poll now'}")
    else:
        lines.append(f"       not polled: {r['status_reason'] or r['status']}")
    return "\n".join(lines)


@feeds.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def feeds_list(as_json: bool) -> None:
    """List feeds: last poll and its result, next poll and why."""
    with session_scope(migrated_settings()) as session:
        records = feed_records(session)
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo("no feeds; add one with: feedmill feeds add URL")
        return
    for record in records:
        click.echo(_describe(record))


@feeds.command("show")
@click.argument("url")
@click.option("--history", default=10, show_default=True, help="How many recent polls to show.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def feeds_show(url: str, history: int, as_json: bool) -> None:
    """Explain one feed's schedule, with its recent poll history."""
    with session_scope(migrated_settings()) as session:
        feed = find_feed(session, url)
        polls = recent_polls(session, feed.id, history)
        last_poll = next((poll for poll in polls if poll.kind == "poll"), None)
        record = feed_record(feed, last_poll) | {"history": [_poll_record(poll) for poll in polls]}
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    click.echo(_describe(record))
    if record["interval_override"]:
        click.echo(f"       interval override: {record['interval_override']} s")
    if record["schedule_hints"]:
        click.echo(f"       publisher hints: {json.dumps(record['schedule_hints'])}")
    if record["full_text"]:
        click.echo(f"       full text: {record['full_text']}")
    if record["retention"] is not None:
        click.echo(f"       articles kept: {describe_retention(record['retention'])}")
    if record["websub"]["wanted"] or record["websub"]["hub"]:
        w = record["websub"]
        click.echo(f"       websub: {w['state']} (hub {w['hub'] or 'none advertised'}, expires {w['expires_at'] or '-'})")
    click.echo("       history (newest first):")
    for poll in record["history"]:
        outcome = f"{poll['status']:<12} HTTP {poll['status_code'] or '-':<4} {poll['duration_ms'] or 0:>6} ms"
        counts = f"{poll['bytes'] or 0:>9} B  +{poll['new_entries']} new ~{poll['updated_entries']} updated"
        error = f"  {poll['error']}" if poll["error"] else ""
        click.echo(f"         {poll['requested_at']}  {poll['kind']:<4} {outcome} {counts}{error}")


def parse_interval(text: str, floor: int) -> int | None:
    """``15m``, ``2h``, ``1d``, ``300`` (seconds), or ``auto`` (None: adaptive again); at least ``floor`` seconds."""
    if text.strip().lower() == "auto":
        return None
    try:
        seconds = duration_seconds(text)
    except ValueError:
        raise click.ClickException(f"not an interval: {text!r} (use e.g. 15m, 2h, 1d, or auto)") from None
    if seconds < floor:
        raise click.ClickException(
            f"interval {text.strip()} is shorter than the floor of {floor} s (FEEDMILL_MIN_INTERVAL sets it)")
    return seconds


def parse_retention(text: str) -> int | None:
    """``30d``, ``12h``, ``4w``: seconds; ``forever``: RETAIN_FOREVER; ``default``: None (FEEDMILL_RETENTION)."""
    if text.strip().lower() == "default":
        return None
    try:
        seconds = retention_seconds(text)
    except ValueError:
        raise click.ClickException(f"not a retention: {text!r} (use e.g. 30d, 12h, 4w, forever or default)") from None
    return RETAIN_FOREVER if seconds is None else seconds


def describe_retention(seconds: int | None) -> str:
    """A feed's ``retention`` in words."""
    if seconds is None:
        return "FEEDMILL_RETENTION"
    if seconds == RETAIN_FOREVER:
        return "forever"
    return duration_text(seconds)


@feeds.command("set")
@click.argument("url")
@click.option("--interval", help="Fixed poll interval (15m, 2h, 1d) or 'auto' for adaptive.")
@click.option(
    "--full-text",
    type=click.Choice(FULL_TEXT_MODES),
    help="Fetch each entry's linked page for its full text: on, off, or auto (short entries only).",
)
@click.option("--retention", help="Keep its articles this long (30d, 12h, 4w), 'forever', or 'default' (FEEDMILL_RETENTION).")
def feeds_set(url: str, interval: str | None, full_text: str | None, retention: str | None) -> None:
    """Override one feed's poll interval, full-text mode or retention."""
    if interval is None and full_text is None and retention is None:
        raise click.UsageError("give --interval, --full-text or --retention")
    settings = migrated_settings()
    seconds = parse_interval(interval, settings.min_interval) if interval is not None else None
    kept = parse_retention(retention) if retention is not None else None
    with session_scope(settings) as session:
        feed = find_feed(session, url)
        if interval is not None:
            feed.interval_override = seconds
        if full_text is not None:
            feed.full_text = full_text
        if retention is not None:
            feed.retention = kept
    if interval is not None:
        click.echo(f"{url}: " + (f"polled every {seconds} s from its next poll on" if seconds else "adaptive interval again"))
    if full_text is not None:
        click.echo(f"{url}: full text {full_text} for entries cleaned from now on")
    if retention is not None:
        click.echo(f"{url}: articles kept {describe_retention(kept)} (from the next prune on)")


@feeds.command("pause")
@click.argument("urls", nargs=-1, required=True)
@click.option("--reason", default="paused by an operator", show_default=True)
def feeds_pause(urls: tuple[str, ...], reason: str) -> None:
    """Stop polling feeds until resumed."""
    with session_scope(migrated_settings()) as session:
        for url in urls:
            feed = find_feed(session, url)
            feed.status, feed.status_reason = "paused", reason
    click.echo(f"paused {len(urls)} feed(s)")


@feeds.command("resume")
@click.argument("urls", nargs=-1, required=True)
def feeds_resume(urls: tuple[str, ...]) -> None:
    """Poll paused or retired feeds again, starting now."""
    with session_scope(migrated_settings()) as session:
        for url in urls:
            feed = find_feed(session, url)
            feed.status, feed.status_reason = "active", f"resumed after: {feed.status_reason or feed.status}"
            feed.next_poll_at, feed.next_poll_reason = utcnow(), "resumed by an operator"
            feed.consecutive_errors = 0
    click.echo(f"resumed {len(urls)} feed(s); they are polled at the next dispatch")


def _feed_ids(session: Session, urls: tuple[str, ...]) -> dict[str, int]:
    """The ids of these feed URLs, in order; an unknown URL is an error."""
    return {url: find_feed(session, url).id for url in dict.fromkeys(url.strip() for url in urls)}


@feeds.command("poll")
@click.argument("urls", nargs=-1, required=True)
def feeds_poll(urls: tuple[str, ...]) -> None:
    """Poll feeds now, whatever their schedule (paused, retired and already-fetching feeds are skipped)."""
    settings = migrated_settings()
    with session_scope(settings) as session:
        ids = _feed_ids(session, urls)
    click.echo(f"polling {len(ids)} feed(s) now")
    poll_ids = claim_feeds(settings, due_only=False, feed_ids=list(ids.values()))
    enqueue_fetches(poll_ids)
    with session_scope(settings) as session:
        skipped = feeds_left_out(session, list(ids.values()), poll_ids)
    for url, status in skipped:
        reason = status if status != "active" else "being fetched already"
        click.echo(f"  skipped {url}: {reason}")
    click.echo(f"enqueued {len(poll_ids)} fetch(es); running workers fetch them (see: feedmill feeds show URL)")


@feeds.command("remove")
@click.argument("urls", nargs=-1, required=True)
@click.option("--yes", "-y", is_flag=True, help="Do not ask first.")
def feeds_remove(urls: tuple[str, ...], yes: bool) -> None:
    """Delete feeds with their articles, polls, rules and open failures.

    Articles go as a prune deletes them (``tasks/storage/retention.delete_articles``), a batch
    at a time: articles of other feeds in a story that loses its canonical article stay, and the
    story is named by its earliest published copy left, which the others point at.
    """
    settings = migrated_settings()
    with session_scope(settings) as session:
        ids = list(_feed_ids(session, urls).values())
        articles = feed_article_ids(session, ids)
        polls, rules = polls_and_rules_of(session, ids)
        failures = {f.id for feed_id in ids for f in open_failures(session, FailureFilter(feed_id=feed_id))}
    click.echo(f"removing {len(ids)} feed(s) with {len(articles)} article(s), {polls} poll(s), {rules} feed rule(s) "
               f"and {len(failures)} open failure(s)")
    if not yes:
        click.confirm(f"delete {len(ids)} feed(s) and everything stored from them?", abort=True, err=True)
    _, changed = delete_in_batches(settings, articles, utcnow(), tombstones=False)
    with session_scope(settings) as session:
        # Articles stored since the count above go with the feed: the same deletion, in this transaction.
        _, late = delete_articles(session, feed_article_ids(session, ids), utcnow(), tombstones=False)
        delete_feeds(session, ids, failures)
    changed += late
    announce_changed(changed)
    repointed = len(changed)
    click.echo(f"removed {len(ids)} feed(s), {len(articles)} article(s) and {polls} poll(s)"
               + (f"; {repointed} article(s) in other feeds re-pointed to their story's earliest published copy left"
                  if repointed else ""))

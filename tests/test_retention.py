"""Retention: the policy, pruning with its derived rows and tombstones, `feedmill prune`, the
service's periodic prune, and `feeds remove` sharing the same deletion."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from sqlalchemy import func, select

from schemas.db import session_scope
from schemas.models import OK, RETAIN_FOREVER, Article, ArticleTombstone, Failure, Feed, ParagraphFingerprints, Poll, utcnow
from schemas.settings import Settings, duration_seconds, duration_text, retention_seconds
from tasks.dedupe import run_dedupe
from tasks.retention import Policy, age_from, expired, feed_policy, run_periodic_prune, run_prune
from tasks.storage.retention import item_fingerprint
from tests.conftest import Publisher, add_feed, export, feedmill, feedmill_env, ok, rss
from tests.test_dedupe import add_article, band_rows, edited, rows, signature_rows, story

DAY = 86400
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


# ------------------------------------------------------------------ pure functions


def test_ages_read_as_seconds_and_forever_keeps_everything() -> None:
    assert duration_seconds("90d") == 90 * DAY and duration_seconds(" 12h ") == 12 * 3600
    assert duration_seconds("4w") == 28 * DAY and duration_seconds("300") == 300 and duration_seconds("15M") == 900
    assert retention_seconds("forever") is None and retention_seconds("30d") == 30 * DAY
    for bad in ("", "0d", "-3d", "3 days", "1y", "d"):
        with pytest.raises(ValueError):
            duration_seconds(bad)
    assert [duration_text(s) for s in (30 * DAY, 12 * 3600, 90, 61)] == ["30d", "12h", "90s", "61s"]


def test_the_retention_settings_are_read_from_the_environment(monkeypatch) -> None:
    assert (Settings.from_env().retention, Settings.from_env().retention_keep) == (90 * DAY, 20)
    monkeypatch.setenv("FEEDMILL_RETENTION", "forever")
    monkeypatch.setenv("FEEDMILL_TOMBSTONE_GRACE", "2w")
    assert (Settings.from_env().retention, Settings.from_env().tombstone_grace) == (None, 14 * DAY)
    monkeypatch.setenv("FEEDMILL_POLL_HISTORY", "soon")
    with pytest.raises(ValueError, match="^FEEDMILL_POLL_HISTORY: not a duration: 'soon'"):
        Settings.from_env()


def test_age_runs_from_publication_else_first_seen_and_a_future_date_counts_as_first_seen() -> None:
    seen = NOW - timedelta(days=3)
    assert age_from(NOW - timedelta(days=400), seen, NOW) == NOW - timedelta(days=400)
    assert age_from(None, seen, NOW) == seen
    assert age_from(NOW + timedelta(days=365), seen, NOW) == seen


def test_the_policy_is_the_feed_override_else_the_setting_and_older_than_drops_the_floor() -> None:
    settings = replace(Settings(), retention=30 * DAY, retention_keep=5)
    assert feed_policy(settings, None) == Policy(30 * DAY, 5)
    assert feed_policy(settings, 7 * DAY) == Policy(7 * DAY, 5)
    assert feed_policy(settings, RETAIN_FOREVER) is None
    assert feed_policy(replace(settings, retention=None), None) is None
    assert feed_policy(settings, RETAIN_FOREVER, older_than=DAY) == Policy(DAY, 0)


def test_the_floor_keeps_the_newest_of_a_feed_whatever_their_age() -> None:
    cutoff = NOW - timedelta(days=30)
    old = [(i, NOW - timedelta(days=100 + i), NOW) for i in range(1, 6)]  # id 1 is the newest of them
    future = [(9, NOW + timedelta(days=3), NOW - timedelta(days=40))]  # first seen 40 days ago: old, the newest old
    young = [(7, NOW - timedelta(days=29), NOW - timedelta(days=200))]  # first seen long ago, published lately
    aging = old + future + young
    # 10 stored, 6 of them old: the floor spares the newest old ones beyond the 4 young.
    assert expired(aging, 10, cutoff, 5, NOW) == ([1, 2, 3, 4, 5], 1)
    assert expired(aging, 10, cutoff, 7, NOW) == ([3, 4, 5], 3)
    assert expired(aging, 10, cutoff, 4, NOW) == expired(aging, 10, cutoff, 0, NOW) == ([1, 2, 3, 4, 5, 9], 0)
    assert expired(aging, 10, cutoff, 20, NOW) == ([], 6)
    # Of equal ages, the higher id is the newer.
    same = [(i, NOW - timedelta(days=50), NOW) for i in (4, 2, 3)]
    assert expired(same, 3, cutoff, 1, NOW) == ([2, 3], 1)


# ------------------------------------------------------------------ helpers


def _pubdate(when: datetime) -> str:
    return format_datetime(when, usegmt=True)


def _item(guid: str, when: datetime) -> dict[str, str]:
    return {"title": f"Item {guid}", "guid": f"urn:test:{guid}", "link": f"https://example.org/{guid}", "pubDate": _pubdate(when),
            "description": story(120, seed=hash(guid) % 1000)}


def _stored(settings: Settings) -> list[str]:
    return sorted(article["guid"].removeprefix("urn:test:") for article in export(settings))


def _tombstones(settings: Settings) -> dict[str, tuple[datetime, datetime]]:
    with session_scope(settings) as session:
        return {key.removeprefix("guid:urn:test:"): (pruned, listed) for key, pruned, listed in session.execute(
            select(ArticleTombstone.entry_key, ArticleTombstone.pruned_at, ArticleTombstone.last_listed_at))}


def _done_article(settings: Settings, feed_id: int, key: str, published: datetime | None, created: datetime,
                  text: str = "text") -> int:
    with session_scope(settings) as session:
        article = Article(feed_id=feed_id, entry_key=key, link=f"https://example.org/{key}", raw_title=key,
                          raw_hash="-", text=text, published_at=published, created_at=created, updated_at=created,
                          stage="done", status=OK)
        session.add(article)
        session.flush()
        return article.id


def _finish(settings: Settings, *ids: int) -> None:
    with session_scope(settings) as session:
        for article_id in ids:
            article = session.get(Article, article_id)
            article.stage, article.status = "done", OK


# ------------------------------------------------------------------ the scenario


def test_pruned_articles_go_and_stay_gone_while_their_feed_still_lists_them(
    settings: Settings, publisher: Publisher
) -> None:
    yesterday = utcnow() - timedelta(days=1)
    old = [_item("old-1", datetime(2020, 3, 1, 9, tzinfo=UTC)), _item("old-2", datetime(2020, 3, 2, 9, tzinfo=UTC))]
    recent = [_item("new-1", yesterday), _item("new-2", yesterday - timedelta(hours=2))]
    url = publisher.add("/feed.xml", rss(recent + old))
    ok(feedmill(settings, "feeds", "add", url))
    ok(feedmill(settings, "run", "--once"))
    assert _stored(settings) == ["new-1", "new-2", "old-1", "old-2"]

    dry = ok(feedmill(settings, "prune", "--older-than", "30d", "--dry-run"))
    assert f"{url}: would remove 2 article(s) older than 30d" in dry and "would remove 2 article(s) of 1 feed(s)" in dry
    assert _stored(settings) == ["new-1", "new-2", "old-1", "old-2"] and _tombstones(settings) == {}

    report = json.loads(ok(feedmill(settings, "prune", "--older-than", "30d", "--json")))
    assert report["removed"] == 2 and report["feeds"][0]["url"] == url and report["feeds"][0]["removed"] == 2
    assert _stored(settings) == ["new-1", "new-2"]
    assert set(_tombstones(settings)) == {"old-1", "old-2"}
    pruned_at = _tombstones(settings)["old-1"][0]

    fifth = _item("new-3", utcnow() - timedelta(hours=1))
    publisher.add("/feed.xml", rss([fifth, *recent, *old]))
    ok(feedmill(settings, "run", "--once"))
    assert _stored(settings) == ["new-1", "new-2", "new-3"]
    # The feed still lists the pruned items: their tombstones last.
    assert all(listed > pruned_at for _, listed in _tombstones(settings).values())

    unknown = feedmill(settings, "prune", "--feed", "https://nowhere.example/feed")
    assert unknown.returncode == 1 and unknown.stderr.strip().splitlines() == [
        "feedmill: error: no feed https://nowhere.example/feed (see: feedmill feeds list; add one with: feedmill feeds add URL)"
    ]


def test_the_standing_policy_keeps_each_feeds_newest_and_follows_feed_overrides(settings: Settings) -> None:
    settings = replace(settings, retention=30 * DAY, retention_keep=3)
    busy, quiet, kept = (add_feed(settings, f"https://{name}.example/feed") for name in ("busy", "quiet", "kept"))
    busy_ids = [_done_article(settings, busy, f"b{i}", NOW - timedelta(days=40 + i), NOW - timedelta(days=40 + i))
                for i in range(6)]
    recent = _done_article(settings, busy, "b-recent", NOW - timedelta(days=2), NOW - timedelta(days=2))
    # Claims to be published next year, but was first seen 50 days ago: old.
    future = _done_article(settings, busy, "b-future", NOW + timedelta(days=300), NOW - timedelta(days=50))
    quiet_ids = [_done_article(settings, quiet, f"q{i}", NOW - timedelta(days=400), NOW - timedelta(days=400))
                 for i in range(2)]
    kept_ids = [_done_article(settings, kept, f"k{i}", NOW - timedelta(days=400), NOW - timedelta(days=400))
                for i in range(5)]
    with session_scope(settings) as session:
        session.get(Feed, kept).retention = RETAIN_FOREVER

    dry = run_prune(settings, now=NOW, dry_run=True)
    assert [(f.feed_id, f.removed, f.kept_by_floor) for f in dry.feeds] == [(busy, 5, 2), (quiet, 0, 2), (kept, 0, 0)]

    report = run_prune(settings, now=NOW)
    assert report.removed == 5
    with session_scope(settings) as session:
        left = set(session.scalars(select(Article.id)))
    # busy: the recent one and the two newest old ones (b0, b1) make its 3.
    assert left == {recent, busy_ids[0], busy_ids[1], *quiet_ids, *kept_ids}
    assert future not in left

    # A feed's own retention replaces the setting; the floor still holds.
    with session_scope(settings) as session:
        session.get(Feed, kept).retention = 100 * DAY
    assert run_prune(settings, now=NOW).removed == 2  # the floor keeps three of five


def test_feeds_set_retention_and_show_it(sqlite_settings: Settings) -> None:
    url = "https://example.org/feed"
    add_feed(sqlite_settings, url)

    def stored() -> int | None:
        with session_scope(sqlite_settings) as session:
            return session.scalar(select(Feed.retention))

    assert "articles kept 30d" in ok(feedmill(sqlite_settings, "feeds", "set", url, "--retention", "30d"))
    assert stored() == 30 * DAY
    assert "articles kept: 30d" in ok(feedmill(sqlite_settings, "feeds", "show", url))
    assert json.loads(ok(feedmill(sqlite_settings, "feeds", "show", url, "--json")))["retention"] == 30 * DAY
    ok(feedmill(sqlite_settings, "feeds", "set", url, "--retention", "forever"))
    assert stored() == RETAIN_FOREVER
    ok(feedmill(sqlite_settings, "feeds", "set", url, "--retention", "default"))
    assert stored() is None
    bad = feedmill(sqlite_settings, "feeds", "set", url, "--retention", "soon")
    assert bad.returncode == 1 and "not a retention: 'soon'" in bad.stderr


# ------------------------------------------------------------------ derived rows and clusters


def _cluster_of_three(settings: Settings) -> tuple[int, int, int, int]:
    """A story published first by feed ``gone`` (its canonical), then copied by two other feeds:
    ``late`` has the lower id but was published after ``early``. Returns (gone feed, canonical, late, early)."""
    gone, one, two = (add_feed(settings, f"https://{name}.example/feed") for name in ("gone", "one", "two"))
    text = story(300)
    canonical = add_article(settings, gone, text, published=NOW - timedelta(days=60))
    late = add_article(settings, one, edited(text, seed=1), published=NOW - timedelta(days=1))
    early = add_article(settings, two, edited(text, seed=2), published=NOW - timedelta(days=2))
    other = add_article(settings, gone, story(300), published=NOW - timedelta(days=60))
    run_dedupe(settings, [canonical, late, early, other])
    assert rows(settings, late, early) == [(canonical, canonical, "near"), (canonical, canonical, "near")]
    _finish(settings, canonical, late, early, other)
    with session_scope(settings) as session:
        session.add(ParagraphFingerprints(article_id=canonical, feed_id=gone, fingerprints=[1, 2]))
        session.add(Failure(task="feedmill.classify", stage="classify", subject=f"article {canonical}", error="x"))
    return gone, canonical, late, early


def test_pruning_a_storys_canonical_names_its_earliest_published_survivor(settings: Settings) -> None:
    gone, canonical, late, early = _cluster_of_three(settings)
    report = run_prune(settings, older_than=30 * DAY, feed_ids=[gone], now=NOW)
    assert report.removed == 2 and report.repointed == 2
    assert rows(settings, early, late) == [(None, early, None), (early, early, "near")]
    assert set(band_rows(settings)) == set(signature_rows(settings)) == {late, early}
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(ParagraphFingerprints)) == 0
        assert session.scalar(select(func.count()).select_from(Failure)) == 0


def test_removing_a_feed_renames_its_stories_by_the_earliest_published_survivor(settings: Settings) -> None:
    gone, canonical, late, early = _cluster_of_three(settings)
    removed = ok(feedmill(settings, "feeds", "remove", "https://gone.example/feed", "--yes"))
    assert "removed 1 feed(s), 2 article(s)" in removed and "2 article(s) in other feeds re-pointed" in removed
    assert rows(settings, early, late) == [(None, early, None), (early, early, "near")]
    assert set(band_rows(settings)) == {late, early}
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(Failure)) == 0


def test_a_new_guid_on_a_pruned_item_does_not_bring_it_back(sqlite_settings: Settings) -> None:
    from tasks.parse import parse_document, store_entries

    feed = add_feed(sqlite_settings, "https://example.org/feed")
    item = {"title": "Same item", "link": "https://example.org/same", "guid": "g-1", "description": "x"}
    with session_scope(sqlite_settings) as session:
        (stored,), _ = store_entries(session, feed, None, parse_document(rss([item]).encode(), None, None).entries)
    _finish(sqlite_settings, stored)
    assert run_prune(sqlite_settings, older_than=1, now=utcnow() + timedelta(seconds=5)).removed == 1
    with session_scope(sqlite_settings) as session:
        assert session.scalar(select(ArticleTombstone.item_fingerprint)) == item_fingerprint(item["link"], item["title"])
    again = [{**item, "guid": "g-2"}, {**item, "guid": "g-3", "title": "Another item"}]
    with session_scope(sqlite_settings) as session:
        new, changed = store_entries(session, feed, None, parse_document(rss(again).encode(), None, None).entries)
    assert len(new) == 1 and changed == []
    with session_scope(sqlite_settings) as session:
        assert session.scalar(select(Article.raw_title)) == "Another item"


def test_periodic_prune_expires_tombstones_and_purges_history_and_dead_letters(settings: Settings) -> None:
    settings = replace(settings, retention=30 * DAY, retention_keep=0, tombstone_grace=30 * DAY, poll_history=30 * DAY)
    feed = add_feed(settings, "https://example.org/feed")
    with session_scope(settings) as session:
        session.add_all([
            ArticleTombstone(feed_id=feed, entry_key="gone-long", pruned_at=NOW - timedelta(days=90),
                             last_listed_at=NOW - timedelta(days=31)),
            ArticleTombstone(feed_id=feed, entry_key="still-listed", pruned_at=NOW - timedelta(days=90),
                             last_listed_at=NOW - timedelta(days=1)),
        ])
        session.add(Poll(feed_id=feed, status="queued", requested_at=NOW - timedelta(days=45)))  # unfinished: kept
        session.flush()
        for days in (60, 50, 40):  # all old; the latest stays as the feed's last result
            session.add(Poll(feed_id=feed, status="parsed", requested_at=NOW - timedelta(days=days)))
            session.flush()
        session.add_all([
            Failure(task="feedmill.fetch", stage="fetch", subject="poll 1", error="x", last_seen=NOW,
                    requeued_at=NOW - timedelta(days=1)),
            Failure(task="feedmill.fetch", stage="fetch", subject="poll 2", error="x", last_seen=NOW - timedelta(days=31)),
            Failure(task="feedmill.fetch", stage="fetch", subject="poll 3", error="x", last_seen=NOW - timedelta(days=2)),
        ])
    report = run_periodic_prune(settings, now=NOW)
    assert (report.tombstones_expired, report.polls_deleted, report.failures_deleted) == (1, 2, 2)
    with session_scope(settings) as session:
        assert session.scalars(select(ArticleTombstone.entry_key)).all() == ["still-listed"]
        assert sorted(session.scalars(select(Poll.status))) == ["parsed", "queued"]
        assert session.scalars(select(Failure.subject)).all() == ["poll 3"]


def test_a_new_embedded_database_gives_pruned_space_back(sqlite_settings: Settings) -> None:
    feed = add_feed(sqlite_settings, "https://example.org/feed")
    for i in range(300):
        _done_article(sqlite_settings, feed, f"k{i}", NOW - timedelta(days=400), NOW - timedelta(days=400),
                      text=story(800, seed=i))
    path = sqlite_settings.database_url.removeprefix("sqlite:///")

    def pragma(name: str) -> int:
        with sqlite3.connect(path) as connection:
            return connection.execute(f"PRAGMA {name}").fetchone()[0]

    assert pragma("auto_vacuum") == 2  # incremental
    pages = pragma("page_count")
    assert run_periodic_prune(replace(sqlite_settings, retention_keep=0), now=NOW).removed == 300
    assert pragma("freelist_count") == 0 and pragma("page_count") < pages / 2


# ------------------------------------------------------------------ the running service


def test_the_service_prunes_on_its_own_schedule(settings: Settings, publisher: Publisher) -> None:
    """`feedmill run` with the default retention (90 days), a floor of 2 and a prune every 2 s."""
    yesterday = utcnow() - timedelta(days=1)
    items = [_item("new-1", yesterday), _item("new-2", yesterday - timedelta(hours=1)),
             _item("old-1", datetime(2020, 1, 1, tzinfo=UTC)), _item("old-2", datetime(2020, 1, 2, tzinfo=UTC))]
    url = publisher.add("/feed.xml", rss(items))
    ok(feedmill(settings, "feeds", "add", url))
    env = feedmill_env(settings) | {"FEEDMILL_PRUNE_EVERY": "2", "FEEDMILL_RETENTION_KEEP": "2"}
    service = subprocess.Popen([sys.executable, "-m", "workers", "run", "--concurrency", "1"], env=env,
                               cwd=settings.home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while set(_tombstones(settings)) != {"old-1", "old-2"}:
            assert service.poll() is None, service.stdout.read().decode()
            assert time.monotonic() < deadline, "the service did not prune"
            time.sleep(1)
        assert _stored(settings) == ["new-1", "new-2"]
    finally:
        service.send_signal(signal.SIGTERM)
        output = service.communicate(timeout=60)[0].decode()
    assert service.returncode == 0, output
    assert "feedmill.prune" in output and "pruned 2 article(s) of 1 feed(s)" in output

"""The command line as scripts see it: feeds add/import/export/list, one-line errors."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.conftest import feedmill, make_settings

OPML = """<?xml version="1.0"?>
<opml version="2.0"><head><title>mine</title></head><body>
  <outline text="News"><outline text="A" type="rss" xmlUrl="https://a.example.org/feed"/>
  <outline text="B" type="rss" xmlUrl="https://b.example.org/rss.xml"/></outline>
  <outline text="bad" type="rss" xmlUrl="ftp://c.example.org/feed"/>
</body></opml>"""


def test_feeds_import_export_roundtrip(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    opml_file = tmp_path / "mine.opml"
    opml_file.write_text(OPML)
    result = feedmill(settings, "feeds", "import", str(opml_file))
    assert result.returncode == 0, result.stderr
    assert "imported 2 new feed(s) of 2" in result.stdout
    assert "skipped (not an http(s) URL): ftp://c.example.org/feed" in result.stderr
    again = feedmill(settings, "feeds", "import", str(opml_file))
    assert "imported 0 new feed(s) of 2" in again.stdout

    exported = feedmill(settings, "feeds", "export")
    body = ET.fromstring(exported.stdout.split("\n", 1)[1]).find("body")
    assert body is not None
    (folder,) = body.findall("outline")  # the folder round-trips as the feeds' tag
    assert folder.get("text") == "News" and folder.get("xmlUrl") is None
    urls = [o.get("xmlUrl") for o in folder.findall("outline")]
    assert urls == ["https://a.example.org/feed", "https://b.example.org/rss.xml"]
    assert all(o.get("htmlUrl") is None for o in folder)  # no site link known: none written
    assert "warning: https://a.example.org/feed gave no feed now (cannot resolve a.example.org" in result.stderr

    listed = json.loads(feedmill(settings, "feeds", "list", "--json").stdout)
    assert [f["url"] for f in listed] == urls and [f["tags"] for f in listed] == [["News"], ["News"]]
    assert set(listed[0]) >= {
        "url", "status", "last_polled_at", "last_status_code", "consecutive_errors",
        "next_poll_at", "etag", "last_modified",
    }
    assert listed[0]["status"] == "active" and listed[0]["last_polled_at"] is None


def test_feeds_add_is_idempotent_and_rejects_non_http(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    first = feedmill(settings, "feeds", "add", "https://a.example.org/feed", "https://a.example.org/feed")
    assert "added 1 feed(s); 0 already present" in first.stdout
    second = feedmill(settings, "feeds", "add", "https://a.example.org/feed")
    assert "added 0 feed(s); 1 already present" in second.stdout
    bad = feedmill(settings, "feeds", "add", "javascript:alert(1)")
    assert bad.returncode == 1
    assert bad.stderr == "feedmill: error: not an http(s) feed URL: 'javascript:alert(1)'\n"
    spelled = feedmill(settings, "feeds", "add", "HTTPS://A.Example.ORG:443/feed#top")
    assert "added 0 feed(s); 1 already present" in spelled.stdout
    assert "HTTPS://A.Example.ORG:443/feed#top: already present as https://a.example.org/feed" in spelled.stderr
    unresolvable = feedmill(settings, "feeds", "add", "--check", "https://b.example.org/feed")
    assert unresolvable.returncode == 1 and "added 0 feed(s)" in unresolvable.stdout
    assert "feedmill: error: https://b.example.org/feed: cannot resolve b.example.org" in unresolvable.stderr


def test_bad_values_are_refused_in_one_line(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    feedmill(settings, "feeds", "add", "https://a.example.org/feed")
    cases = {
        ("feeds", "set", "https://a.example.org/feed", "--interval", "1s"):
            "interval 1s is shorter than the floor of 300 s (FEEDMILL_MIN_INTERVAL sets it)",
        ("run", "--once", "--timeout", "-5"): "Invalid value for '--timeout': -5.0 is not in the range x>0.",
        ("requeue", "article", "99999", "--from-stage", "clean"): "no article 99999 (see: feedmill export)",
        ("feeds", "show", "https://nowhere.example.org/"): "no feed https://nowhere.example.org/",
    }
    for args, message in cases.items():
        result = feedmill(settings, *args)
        assert result.returncode != 0, args
        assert result.stderr.startswith(f"feedmill: error: {message}") and result.stderr.count("\n") == 1, result.stderr
    shown = json.loads(feedmill(settings, "feeds", "show", "HTTPS://a.example.org/feed#x", "--json").stdout)
    assert shown["url"] == "https://a.example.org/feed"  # any spelling finds the feed


def test_errors_are_one_line(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    broken = tmp_path / "broken.opml"
    broken.write_text("<opml><body>")
    result = feedmill(settings, "feeds", "import", str(broken))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("feedmill: error: ")
    assert "is not valid OPML" in result.stderr


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url="postgresql://nobody@127.0.0.1:1/none")
    result = feedmill(settings, "feeds", "list")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "feedmill: error: OperationalError" in result.stderr

"""Operators' rules: matching, tag/drop/keep, per feed and global, unsafe regexes refused."""

from __future__ import annotations

import json

import pytest
import regex

from tasks.rules import (
    MAX_SCAN_CHARS,
    CompiledRule,
    RuleError,
    RuleTimeout,
    apply_rules,
    check_rule,
    compile_pattern,
    rule_matches,
)
from tests.conftest import feedmill

FEED_A, FEED_B = 1, 2


def rule(rule_id, action, pattern, *, kind="keyword", fields=("title", "text"), tag=None, feed_id=None):
    return CompiledRule(rule_id, feed_id, action, tag, kind, pattern, tuple(fields), compile_pattern(kind, pattern))


def fields(title="", text="", author="", url=""):
    return {"title": title, "text": text, "author": author, "url": url}


# --- matching -------------------------------------------------------------------


def test_keyword_is_a_case_insensitive_whole_word_phrase():
    sponsored = rule(1, "drop", "sponsored  content")
    assert rule_matches(sponsored, fields(title="SPONSORED content: buy now"))
    assert rule_matches(sponsored, fields(text="This is sponsored\ncontent."))
    assert not rule_matches(sponsored, fields(title="Unsponsored content"))
    assert not rule_matches(sponsored, fields(title="sponsored contents"))
    assert not rule_matches(sponsored, fields(author="sponsored content"))  # not a field of this rule


def test_regex_is_as_written_on_the_chosen_fields():
    live = rule(1, "drop", r"/live/\d+", kind="regex", fields=("url",))
    assert rule_matches(live, fields(url="https://example.org/live/123"))
    assert not rule_matches(live, fields(title="/live/123"))
    assert not rule_matches(rule(2, "drop", "Breaking", kind="regex"), fields(title="breaking news"))
    assert rule_matches(rule(3, "drop", "(?i)breaking", kind="regex"), fields(title="breaking news"))


def test_text_beyond_the_scan_limit_is_not_searched():
    needle = rule(1, "drop", "needle")
    assert rule_matches(needle, fields(text="x " * 10 + "needle"))
    assert not rule_matches(needle, fields(text="x" * MAX_SCAN_CHARS + " needle"))


def test_a_slow_regex_times_out_instead_of_hanging():
    slow = CompiledRule(7, None, "drop", None, "regex", "(a+)+$", ("text",), regex.compile("(a+)+$"))
    with pytest.raises(RuleTimeout, match="rule 7 took over"):
        rule_matches(slow, fields(text="a" * 5000 + "!"))


# --- actions --------------------------------------------------------------------


def test_tag_rules_add_tags_after_the_feeds_own():
    rules = [rule(1, "tag", "election", tag="vote"), rule(2, "tag", "Politics", kind="regex", fields=("tags",), tag="pol")]
    outcome = apply_rules(rules, FEED_A, fields(title="Election day"), ["Politics", "UK"])
    assert outcome.tags == ("Politics", "UK", "vote", "pol") and outcome.dropped_by is None
    assert outcome.matched == (1, 2)


def test_drop_and_keep():
    rules = [rule(1, "drop", "sponsored"), rule(2, "keep", "partner", feed_id=FEED_A)]
    assert apply_rules(rules, FEED_B, fields(title="Sponsored: our partner"), []).dropped_by == 1
    assert apply_rules(rules, FEED_A, fields(title="Sponsored: our partner"), []).dropped_by is None  # keep wins
    assert apply_rules(rules, FEED_A, fields(title="Sponsored offer"), []).dropped_by == 1
    assert apply_rules(rules, FEED_A, fields(title="News"), []).matched == ()


def test_drop_rules_see_tags_that_rules_added():
    rules = [rule(1, "tag", "casino|betting", kind="regex", tag="gambling"), rule(2, "drop", "gambling", fields=("tags",))]
    outcome = apply_rules(rules, FEED_A, fields(text="New betting odds"), [])
    assert outcome.tags == ("gambling",) and outcome.dropped_by == 2


def test_feed_rules_apply_only_to_their_feed():
    rules = [rule(1, "tag", "goal", tag="sport", feed_id=FEED_B)]
    assert apply_rules(rules, FEED_A, fields(title="A late goal"), []).tags == ()
    assert apply_rules(rules, FEED_B, fields(title="A late goal"), []).tags == ("sport",)


# --- validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "kind", "pattern", "fields_", "tag", "message"),
    [
        ("drop", "regex", "(unclosed", ("title",), None, "invalid regex"),
        ("drop", "regex", "(a+)+$", ("title",), None, "backtracks catastrophically"),
        ("drop", "regex", r"(x+x+)+y", ("text",), None, "backtracks catastrophically"),
        ("drop", "regex", "a" * 1001, ("title",), None, "longer than"),
        ("drop", "keyword", "   ", ("title",), None, "empty keyword"),
        ("tag", "keyword", "gaza", ("title",), None, "needs --tag"),
        ("drop", "keyword", "gaza", ("title",), "x", "only a tag rule"),
        ("drop", "keyword", "gaza", ("body",), None, "fields must be"),
        ("hide", "keyword", "gaza", ("title",), None, "unknown action"),
    ],
)
def test_unsafe_or_malformed_rules_are_refused(action, kind, pattern, fields_, tag, message):
    with pytest.raises(RuleError, match=message):
        check_rule(action, kind, pattern, fields_, tag)


def test_rules_cli_add_list_remove(sqlite_settings):
    assert feedmill(sqlite_settings, "feeds", "add", "https://a.example.org/feed").returncode == 0
    added = feedmill(sqlite_settings, "rules", "add", "drop", "--keyword", "sponsored")
    assert added.returncode == 0 and "added rule 1" in added.stdout
    feed_rule = feedmill(sqlite_settings, "rules", "add", "tag", "--tag", "live", "--regex", r"/live/\d+",
                         "--field", "url", "--feed", "https://a.example.org/feed")
    assert feed_rule.returncode == 0, feed_rule.stderr

    listed = json.loads(feedmill(sqlite_settings, "rules", "list", "--json").stdout)
    assert [(r["id"], r["action"], r["kind"], r["fields"], r["feed_url"]) for r in listed] == [
        (1, "drop", "keyword", ["title", "text"], None),
        (2, "tag", "regex", ["url"], "https://a.example.org/feed"),
    ]
    assert "tag 'live'" in feedmill(sqlite_settings, "rules", "list").stdout

    bad = feedmill(sqlite_settings, "rules", "add", "drop", "--regex", "(a+)+$")
    assert bad.returncode == 1 and bad.stderr.startswith("feedmill: error: regex '(a+)+$' backtracks")
    assert len(bad.stderr.strip().splitlines()) == 1
    unknown_feed = feedmill(sqlite_settings, "rules", "add", "drop", "--keyword", "x", "--feed", "https://nope.example/")
    assert unknown_feed.returncode == 1 and "no feed https://nope.example/" in unknown_feed.stderr
    both = feedmill(sqlite_settings, "rules", "add", "drop", "--keyword", "x", "--regex", "x")
    assert both.returncode == 1 and "exactly one of --keyword and --regex" in both.stderr

    assert "removed 1 rule(s)" in feedmill(sqlite_settings, "rules", "remove", "1").stdout
    assert [r["id"] for r in json.loads(feedmill(sqlite_settings, "rules", "list", "--json").stdout)] == [2]
    gone = feedmill(sqlite_settings, "rules", "remove", "1")
    assert gone.returncode == 1 and "no rule 1" in gone.stderr


def test_parse_keeps_feed_categories_for_rules():
    from tasks.parse import parse_document
    from tests.conftest import rss

    items = [{"title": "Cup final", "guid": "a", "category": " Sport "}, {"title": "Plain", "guid": "b"}]
    tagged, plain = parse_document(rss(items).encode(), "application/rss+xml", "https://example.org/feed").entries
    assert tagged.tags == ("Sport",) and plain.tags == ()
    recategorised = parse_document(rss([{**items[0], "category": "Football"}]).encode(), "application/rss+xml",
                                   "https://example.org/feed").entries[0]
    assert recategorised.raw_hash != tagged.raw_hash  # a changed category is an update

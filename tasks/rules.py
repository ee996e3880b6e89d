"""Operators' rules: a keyword or regex on some article fields; tag, drop or keep.

Rules are rows in the ``rules`` table (``feedmill rules add``), global or for
one feed, evaluated by the classify stage:

1. every ``tag`` rule that matches adds its tag (matching on the feed's own
   categories in ``tags``);
2. an article is dropped when a ``drop`` rule matches and no ``keep`` rule
   does; these two see the tags step 1 added, so "tag it, then drop what is
   tagged" works. ``keep`` is the exception to a ``drop``, whichever is global.

Regexes come from operators and run on text from the internet, so they are
checked when added (they must compile, be at most ``MAX_PATTERN_CHARS``
long and pass a backtracking probe) and guarded when run: the ``regex``
module's timeout stops one search after ``MATCH_TIMEOUT`` seconds, on at
most ``MAX_SCAN_CHARS`` of each field. A rule that times out fails the
article (its error names the rule) rather than silently letting it through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import regex

from schemas.models import Rule

FIELDS = ("title", "text", "author", "url", "tags")
ACTIONS = ("tag", "drop", "keep")
KINDS = ("keyword", "regex")
DEFAULT_FIELDS = ("title", "text")

MAX_PATTERN_CHARS = 1000
MAX_SCAN_CHARS = 100_000
MATCH_TIMEOUT = 0.05
# Long runs of one character that make a backtracking-prone regex blow up;
# each is followed by a character nothing usually expects there.
PROBE_LENGTH = 3000
PROBE_TIMEOUT = 0.2


class RuleError(ValueError):
    """A rule that may not be added, with the reason."""


class RuleTimeout(RuntimeError):
    """A rule's regex took too long on one article."""


@dataclass(frozen=True)
class CompiledRule:
    id: int
    feed_id: int | None
    action: str
    tag: str | None
    kind: str
    pattern: str
    fields: tuple[str, ...]
    compiled: regex.Pattern

    def describe(self) -> str:
        """One line for people: what it matches, where, and what it does."""
        what = f"tag {self.tag!r}" if self.action == "tag" else self.action
        return f"{what} on {self.kind} {self.pattern!r} in {','.join(self.fields)}"


@dataclass(frozen=True)
class RuleOutcome:
    """What the rules did to one article."""

    tags: tuple[str, ...]
    dropped_by: int | None
    #: Ids of every rule that matched, in evaluation order.
    matched: tuple[int, ...]


def compile_pattern(kind: str, pattern: str) -> regex.Pattern:
    """The compiled search: a keyword is a case-insensitive phrase on word boundaries."""
    if kind == "keyword":
        words = pattern.split()
        if not words:
            raise RuleError("empty keyword")
        phrase = r"\s+".join(regex.escape(word) for word in words)
        return regex.compile(rf"(?<!\w){phrase}(?!\w)", regex.IGNORECASE)
    if kind != "regex":
        raise RuleError(f"unknown rule kind {kind!r}; known: {', '.join(KINDS)}")
    if not pattern:
        raise RuleError("empty regex")
    try:
        return regex.compile(pattern)
    except (regex.error, ValueError, OverflowError) as exc:
        raise RuleError(f"invalid regex {pattern!r}: {exc}") from exc


def check_rule(action: str, kind: str, pattern: str, fields: Sequence[str], tag: str | None) -> regex.Pattern:
    """Validate a new rule; return its compiled pattern or raise ``RuleError``."""
    if action not in ACTIONS:
        raise RuleError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
    if (action == "tag") != bool(tag and tag.strip()):
        raise RuleError("a tag rule needs --tag NAME, and only a tag rule takes one")
    unknown = set(fields) - set(FIELDS)
    if not fields or unknown:
        raise RuleError(f"fields must be some of {', '.join(FIELDS)}")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RuleError(f"pattern longer than {MAX_PATTERN_CHARS} characters")
    compiled = compile_pattern(kind, pattern)
    for probe in _backtracking_probes(pattern):
        try:
            compiled.search(probe, timeout=PROBE_TIMEOUT)
        except TimeoutError as exc:
            raise RuleError(
                f"regex {pattern!r} backtracks catastrophically (over {PROBE_TIMEOUT} s on a "
                f"{len(probe)}-character probe); avoid nested repeats like (a+)+"
            ) from exc
    return compiled


def _backtracking_probes(pattern: str) -> list[str]:
    """Runs of each letter, digit or space the pattern names, ending in a mismatch."""
    chars = {c for c in pattern if c.isalnum()} | {"a", " "}
    return [c * PROBE_LENGTH + "\x00" for c in sorted(chars)]


def compile_rules(rules: Sequence[Rule]) -> tuple[CompiledRule, ...]:
    """Stored rules, compiled, in their order (loaded once per classify batch)."""
    return tuple(
        CompiledRule(
            id=rule.id,
            feed_id=rule.feed_id,
            action=rule.action,
            tag=rule.tag,
            kind=rule.kind,
            pattern=rule.pattern,
            fields=tuple(rule.fields),
            compiled=compile_pattern(rule.kind, rule.pattern),
        )
        for rule in rules
    )


def rule_matches(rule: CompiledRule, values: Mapping[str, str]) -> bool:
    """Whether the rule's pattern occurs in any of its fields; ``RuleTimeout`` if it takes too long."""
    for field in rule.fields:
        value = values.get(field) or ""
        try:
            if rule.compiled.search(value[:MAX_SCAN_CHARS], timeout=MATCH_TIMEOUT):
                return True
        except TimeoutError as exc:
            raise RuleTimeout(
                f"rule {rule.id} took over {MATCH_TIMEOUT} s on the {field}; "
                f"simplify its pattern, then: feedmill reprocess --stage classify"
            ) from exc
    return False


def apply_rules(
    rules: Sequence[CompiledRule], feed_id: int, values: Mapping[str, str], feed_tags: Sequence[str]
) -> RuleOutcome:
    """Evaluate the global rules and the feed's own on one article's fields."""
    mine = [rule for rule in rules if rule.feed_id in (None, feed_id)]
    tags = list(dict.fromkeys(feed_tags))
    matched: list[int] = []
    raw_values = {**values, "tags": "\n".join(tags)}
    for rule in mine:
        if rule.action == "tag" and rule_matches(rule, raw_values):
            matched.append(rule.id)
            if rule.tag not in tags:
                tags.append(rule.tag)  # type: ignore[arg-type]
    tagged_values = {**values, "tags": "\n".join(tags)}
    drops, keeps = [], []
    for rule in mine:
        if rule.action != "tag" and rule_matches(rule, tagged_values):
            matched.append(rule.id)
            (drops if rule.action == "drop" else keeps).append(rule.id)
    dropped_by = drops[0] if drops and not keeps else None
    return RuleOutcome(tags=tuple(tags), dropped_by=dropped_by, matched=tuple(matched))

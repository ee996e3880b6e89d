"""When to poll a feed next, and why: a pure decision from the poll's outcome.

``decide_next_poll`` takes everything it needs as values (the outcome, the
feed's publishing rate, the publisher's HTTP and feed hints, the operator's
override) and returns the time with a sentence saying which rule set it, so
``feedmill feeds show`` can explain every schedule. Order of rules:

1. operator override, else the adaptive interval from entries per week,
   clamped to [min, max] (the default interval while the rate is unknown);
2. after an error: exponential backoff from the interval, capped; never
   given up;
3. raised, never lowered, to honour the publisher: Retry-After,
   Cache-Control max-age, Expires, RSS <ttl>, sy:updatePeriod (each honoured
   up to ``MAX_HINT``);
4. jitter added (never subtracted), then moved out of skipHours/skipDays.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from schemas.settings import Settings

WEEK = 7 * 86400
#: Publisher hints are honoured up to this long; a year-long Expires is a mistake, not a wish.
MAX_HINT = 7 * 86400
#: Known entries in the rate window needed before the adaptive interval replaces the default.
MIN_ENTRIES_FOR_RATE = 2
UPDATE_PERIOD_SECONDS = {"hourly": 3600, "daily": 86400, "weekly": WEEK, "monthly": 30 * 86400, "yearly": 365 * 86400}
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True)
class SchedulePolicy:
    default_interval: int
    min_interval: int
    max_interval: int
    error_backoff_cap: int
    jitter: float

    @classmethod
    def from_settings(cls, settings: Settings) -> SchedulePolicy:
        return cls(
            default_interval=settings.poll_interval,
            min_interval=settings.min_interval,
            max_interval=settings.max_interval,
            error_backoff_cap=settings.error_backoff_cap,
            jitter=settings.schedule_jitter,
        )


@dataclass(frozen=True)
class HttpHints:
    """What the response's headers asked of us, in seconds from now."""

    max_age: int | None = None
    expires_in: int | None = None
    retry_after: int | None = None


@dataclass(frozen=True)
class FeedHints:
    """What the feed document asked of us."""

    ttl_minutes: int | None = None
    update_period_seconds: int | None = None
    skip_hours: frozenset[int] = field(default_factory=frozenset)
    skip_days: frozenset[str] = field(default_factory=frozenset)

    def to_dict(self) -> dict[str, object]:
        return {
            "ttl_minutes": self.ttl_minutes,
            "update_period_seconds": self.update_period_seconds,
            "skip_hours": sorted(self.skip_hours),
            "skip_days": sorted(self.skip_days, key=DAY_NAMES.index),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object] | None) -> FeedHints:
        if not data:
            return cls()
        return cls(
            ttl_minutes=data.get("ttl_minutes"),  # type: ignore[arg-type]
            update_period_seconds=data.get("update_period_seconds"),  # type: ignore[arg-type]
            skip_hours=frozenset(data.get("skip_hours") or ()),  # type: ignore[arg-type]
            skip_days=frozenset(data.get("skip_days") or ()),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class PollOutcome:
    """One finished poll, as the scheduler sees it."""

    #: ok | error | deferred (429/503 with Retry-After)
    kind: str
    consecutive_errors: int = 0
    entries_per_week: float | None = None
    override_seconds: int | None = None
    http: HttpHints = HttpHints()
    feed: FeedHints = FeedHints()


@dataclass(frozen=True)
class PollDecision:
    next_poll_at: datetime
    reason: str


def decide_next_poll(
    outcome: PollOutcome, policy: SchedulePolicy, now: datetime, rng: random.Random | None = None
) -> PollDecision:
    seconds, reason = _base_interval(outcome, policy)
    if outcome.kind == "error" and outcome.consecutive_errors > 0:
        backoff = min(seconds * 2 ** (outcome.consecutive_errors - 1), policy.error_backoff_cap)
        if backoff > seconds:
            seconds = backoff
            reason = f"error backoff: {outcome.consecutive_errors} error(s) in a row, {_human(seconds)}"
        else:
            reason = f"{reason}; {outcome.consecutive_errors} error(s) in a row"
    for hint_seconds, hint_reason in _publisher_hints(outcome):
        hint_seconds = min(hint_seconds, MAX_HINT)
        if hint_seconds > seconds:
            seconds, reason = hint_seconds, f"{hint_reason} ({_human(hint_seconds)})"
    jitter = (rng or random).uniform(0, policy.jitter) * seconds if policy.jitter > 0 else 0.0
    when = now + timedelta(seconds=seconds + jitter)
    moved = _out_of_skipped_times(when, outcome.feed)
    if moved != when:
        reason = f"{reason}; moved out of skipHours/skipDays"
    return PollDecision(moved, reason)


def _base_interval(outcome: PollOutcome, policy: SchedulePolicy) -> tuple[int, str]:
    if outcome.override_seconds:
        return outcome.override_seconds, f"operator override: every {_human(outcome.override_seconds)}"
    rate = outcome.entries_per_week
    if rate is None:
        return policy.default_interval, f"default interval {_human(policy.default_interval)} (publishing rate unknown yet)"
    if rate <= 0:
        return policy.max_interval, f"no entries in the rate window: maximum interval {_human(policy.max_interval)}"
    # Poll about twice per expected new entry.
    adaptive = int(WEEK / rate / 2)
    clamped = max(policy.min_interval, min(policy.max_interval, adaptive))
    note = " (clamped to minimum)" if clamped > adaptive else " (clamped to maximum)" if clamped < adaptive else ""
    return clamped, f"adaptive: {rate:.1f} entries/week, every {_human(clamped)}{note}"


def _publisher_hints(outcome: PollOutcome) -> list[tuple[int, str]]:
    hints = []
    if outcome.http.retry_after is not None:
        hints.append((outcome.http.retry_after, "Retry-After"))
    if outcome.http.max_age:
        hints.append((outcome.http.max_age, "Cache-Control max-age"))
    if outcome.http.expires_in:
        hints.append((outcome.http.expires_in, "Expires header"))
    if outcome.feed.ttl_minutes:
        hints.append((outcome.feed.ttl_minutes * 60, "RSS ttl"))
    if outcome.feed.update_period_seconds:
        hints.append((outcome.feed.update_period_seconds, "sy:updatePeriod"))
    return hints


def _out_of_skipped_times(when: datetime, hints: FeedHints) -> datetime:
    """Move ``when`` to the next hour that is neither a skipHour nor on a skipDay (UTC)."""
    if not hints.skip_hours and not hints.skip_days:
        return when
    if len(hints.skip_hours) >= 24 or len(hints.skip_days) >= 7:
        return when  # a feed that skips everything cannot be honoured
    candidate = when
    for _ in range(24 * 8):
        if candidate.hour not in hints.skip_hours and DAY_NAMES[candidate.weekday()] not in hints.skip_days:
            return candidate
        candidate = candidate.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return when


def _human(seconds: float) -> str:
    seconds = int(seconds)
    if seconds % 86400 == 0 and seconds >= 86400:
        return f"{seconds // 86400} d"
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600} h"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"


# ----------------------------------------------------------------- reading hints


def http_hints(headers: dict[str, str], now: datetime) -> HttpHints:
    """Cache-Control max-age, Expires and Retry-After of a response, as seconds from now."""
    max_age = None
    match = re.search(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", headers.get("cache-control", ""), re.I)
    if match:
        max_age = int(match.group(1))
    expires_in = None
    if "expires" in headers:
        expires_at = _http_date(headers["expires"])
        if expires_at is not None and expires_at > now:
            expires_in = int((expires_at - now).total_seconds())
    return HttpHints(max_age=max_age, expires_in=expires_in, retry_after=retry_after_seconds(headers.get("retry-after"), now))


def retry_after_seconds(value: str | None, now: datetime) -> int | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)
    when = _http_date(value)
    if when is None:
        return None
    return max(0, int((when - now).total_seconds()))


def _http_date(value: str) -> datetime | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_SKIP_HOURS = re.compile(rb"<skipHours>(.*?)</skipHours>", re.S | re.I)
_SKIP_DAYS = re.compile(rb"<skipDays>(.*?)</skipDays>", re.S | re.I)
_HOUR = re.compile(rb"<hour>\s*(\d{1,2})\s*</hour>", re.I)
_DAY = re.compile(rb"<day>\s*([A-Za-z]+)\s*</day>", re.I)
#: skipHours and skipDays live in the channel head; feedparser keeps only their last value.
HEAD_BYTES = 65536


def feed_hints(feed_meta: dict[str, object], body: bytes) -> FeedHints:
    """The feed's ttl and sy:updatePeriod (from feedparser) and skipHours/skipDays (from the body)."""
    ttl = _positive_int(feed_meta.get("ttl"))
    period = UPDATE_PERIOD_SECONDS.get(str(feed_meta.get("sy_updateperiod") or "").strip().lower())
    update_period = None
    if period:
        frequency = _positive_int(feed_meta.get("sy_updatefrequency")) or 1
        update_period = max(1, period // frequency)
    head = body[:HEAD_BYTES]
    skip_hours: set[int] = set()
    skip_days: set[str] = set()
    if (block := _SKIP_HOURS.search(head)) is not None:
        skip_hours = {int(h) % 24 for h in _HOUR.findall(block.group(1))}
    if (block := _SKIP_DAYS.search(head)) is not None:
        names = {d.decode().capitalize() for d in _DAY.findall(block.group(1))}
        skip_days = names & set(DAY_NAMES)
    return FeedHints(ttl, update_period, frozenset(skip_hours), frozenset(skip_days))


def _positive_int(value: object) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None

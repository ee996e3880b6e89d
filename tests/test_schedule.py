"""The scheduling decision as a pure function: every rule and its reason."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from tasks.schedule import (
    FeedHints,
    HttpHints,
    PollOutcome,
    SchedulePolicy,
    decide_next_poll,
    feed_hints,
    http_hints,
    retry_after_seconds,
)

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # a Tuesday
POLICY = SchedulePolicy(default_interval=1800, min_interval=300, max_interval=86400, error_backoff_cap=86400, jitter=0.0)


def after(outcome: PollOutcome, policy: SchedulePolicy = POLICY) -> tuple[float, str]:
    decision = decide_next_poll(outcome, policy, NOW)
    return (decision.next_poll_at - NOW).total_seconds(), decision.reason


def test_unknown_rate_uses_the_default_interval() -> None:
    seconds, reason = after(PollOutcome("ok"))
    assert seconds == 1800 and reason.startswith("default interval 30 min")


@pytest.mark.parametrize(
    "rate, expected, note",
    [
        (14.0, 6 * 3600, "adaptive: 14.0 entries/week, every 6 h"),
        (5000.0, 300, "(clamped to minimum)"),
        (0.1, 86400, "(clamped to maximum)"),
        (0.0, 86400, "no entries in the rate window"),
    ],
)
def test_adaptive_interval_from_publishing_rate(rate: float, expected: int, note: str) -> None:
    seconds, reason = after(PollOutcome("ok", entries_per_week=rate))
    assert seconds == expected
    assert note in reason


def test_operator_override_wins_over_rate() -> None:
    seconds, reason = after(PollOutcome("ok", entries_per_week=5000.0, override_seconds=7200))
    assert seconds == 7200 and reason == "operator override: every 2 h"


def test_errors_back_off_exponentially_up_to_the_cap_and_never_stop() -> None:
    waits = [after(PollOutcome("error", consecutive_errors=n))[0] for n in range(1, 12)]
    assert waits[:4] == [1800, 3600, 7200, 14400]
    assert waits[-1] == 86400 and max(waits) == 86400
    assert all(b >= a for a, b in zip(waits, waits[1:], strict=False))
    assert after(PollOutcome("error", consecutive_errors=3))[1] == "error backoff: 3 error(s) in a row, 2 h"


@pytest.mark.parametrize(
    "outcome, expected, reason",
    [
        (PollOutcome("deferred", http=HttpHints(retry_after=7200)), 7200, "Retry-After (2 h)"),
        (PollOutcome("ok", http=HttpHints(max_age=3600)), 3600, "Cache-Control max-age (1 h)"),
        (PollOutcome("ok", http=HttpHints(expires_in=5400)), 5400, "Expires header (1.5 h)"),
        (PollOutcome("ok", feed=FeedHints(ttl_minutes=120)), 7200, "RSS ttl (2 h)"),
        (PollOutcome("ok", feed=FeedHints(update_period_seconds=43200)), 43200, "sy:updatePeriod (12 h)"),
        (PollOutcome("ok", http=HttpHints(expires_in=90 * 86400)), 7 * 86400, "Expires header (7 d)"),
    ],
)
def test_publisher_hints_raise_the_interval(outcome: PollOutcome, expected: int, reason: str) -> None:
    assert after(outcome) == (expected, reason)


def test_hints_never_lower_the_interval() -> None:
    seconds, reason = after(PollOutcome("ok", entries_per_week=1.0, http=HttpHints(max_age=60)))
    assert seconds == 86400 and reason.startswith("adaptive")


def test_skip_hours_and_days_move_the_poll() -> None:
    hours = FeedHints(ttl_minutes=60, skip_hours=frozenset({11, 12}))
    decision = decide_next_poll(PollOutcome("ok", feed=hours), POLICY, NOW)
    assert decision.next_poll_at == datetime(2026, 11, 24, 13, 0, tzinfo=UTC)
    assert decision.reason.endswith("moved out of skipHours/skipDays")
    days = FeedHints(skip_days=frozenset({"Tuesday", "Wednesday"}))
    assert decide_next_poll(PollOutcome("ok", feed=days), POLICY, NOW).next_poll_at == datetime(
        2026, 11, 26, 0, 0, tzinfo=UTC
    )


def test_jitter_only_ever_adds_up_to_its_fraction() -> None:
    jittery = SchedulePolicy(1800, 300, 86400, 86400, jitter=0.1)
    rng = random.Random(7)
    waits = [(decide_next_poll(PollOutcome("ok"), jittery, NOW, rng).next_poll_at - NOW).total_seconds() for _ in range(200)]
    assert min(waits) >= 1800 and max(waits) <= 1980
    assert len(set(waits)) > 100


def test_http_hints_are_read_from_headers() -> None:
    hints = http_hints(
        {
            "cache-control": "public, max-age=600",
            "expires": "Tue, 24 Nov 2026 11:00:00 GMT",
            "retry-after": "Tue, 24 Nov 2026 10:02:00 GMT",
        },
        NOW,
    )
    assert hints == HttpHints(max_age=600, expires_in=3600, retry_after=120)
    assert retry_after_seconds("90", NOW) == 90
    assert retry_after_seconds("soon", NOW) is None
    assert http_hints({"expires": "0"}, NOW) == HttpHints()


def test_feed_hints_are_read_from_the_document() -> None:
    body = (
        b"<rss><channel><ttl>45</ttl><skipHours><hour>0</hour><hour>23</hour></skipHours>"
        b"<skipDays><day>Sunday</day><day>Funday</day></skipDays><item/></channel></rss>"
    )
    hints = feed_hints({"ttl": "45", "sy_updateperiod": "daily", "sy_updatefrequency": "4"}, body)
    assert hints == FeedHints(45, 21600, frozenset({0, 23}), frozenset({"Sunday"}))
    assert FeedHints.from_dict(hints.to_dict()) == hints

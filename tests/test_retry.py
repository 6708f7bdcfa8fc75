from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from dispatcher.retry import (
    JITTER,
    MIN_PENALTY_S,
    Verdict,
    backoff_s,
    next_delay_s,
    parse_retry_after,
    verdict,
)

BASE_S = 5.0
CAP_S = 3600.0


def delays(
    attempt: int, n: int = 200, *, retry_after_s: float | None = None, status: int | None = None
) -> list[float]:
    rng = random.Random(attempt)
    return [
        next_delay_s(
            attempt, base_s=BASE_S, cap_s=CAP_S, retry_after_s=retry_after_s, status=status, rng=rng
        )
        for _ in range(n)
    ]


# --- verdict ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    """Any 2xx answer delivers the job, even on the last attempt."""
    assert verdict(status, attempt=8, max_attempts=8) is Verdict.DELIVERED


def test_410_disables_the_webhook() -> None:
    """410 Gone disables the webhook (and dead-letters the job) on any attempt."""
    assert verdict(410, attempt=1, max_attempts=8) is Verdict.DISABLE
    assert verdict(410, attempt=8, max_attempts=8) is Verdict.DISABLE


@pytest.mark.parametrize("status", [None, 199, 300, 301, 400, 404, 429, 500, 503])
def test_failures_retry_until_max_attempts(status: int | None) -> None:
    """Non-2xx answers and no answer retry before max_attempts and go dead at it."""
    assert verdict(status, attempt=1, max_attempts=3) is Verdict.RETRY
    assert verdict(status, attempt=2, max_attempts=3) is Verdict.RETRY
    assert verdict(status, attempt=3, max_attempts=3) is Verdict.DEAD
    assert verdict(status, attempt=4, max_attempts=3) is Verdict.DEAD


def test_single_attempt_goes_dead_at_once() -> None:
    """With max_attempts = 1 the first failure is final."""
    assert verdict(500, attempt=1, max_attempts=1) is Verdict.DEAD


def test_verdicts_are_strings() -> None:
    """Verdicts are a StrEnum, so they log and serialize as plain words."""
    assert [str(v) for v in Verdict] == ["delivered", "retry", "dead", "disable"]


# --- backoff ----------------------------------------------------------------------------------


def test_backoff_doubles_from_base_until_the_cap() -> None:
    """Without jitter attempt n waits base * 2^(n-1), capped."""
    assert [backoff_s(n, base_s=BASE_S, cap_s=CAP_S) for n in range(1, 11)] == [
        5.0,
        10.0,
        20.0,
        40.0,
        80.0,
        160.0,
        320.0,
        640.0,
        1280.0,
        2560.0,
    ]
    assert backoff_s(11, base_s=BASE_S, cap_s=CAP_S) == CAP_S


@pytest.mark.parametrize("attempt", range(1, 10))
def test_delay_is_within_jitter_of_the_backoff(attempt: int) -> None:
    """Each delay stays within +-20% of base * 2^(n-1) while below the cap."""
    expected = BASE_S * 2 ** (attempt - 1)
    for delay in delays(attempt):
        assert expected * (1 - JITTER) <= delay <= min(expected * (1 + JITTER), CAP_S)


def test_delays_escalate() -> None:
    """The shortest wait after attempt n+1 exceeds the longest after attempt n-1 (waits grow)."""
    for attempt in range(2, 10):
        assert min(delays(attempt + 1)) > max(delays(attempt - 1))
    means = [sum(delays(n)) / 200 for n in range(1, 10)]
    assert means == sorted(means)


def test_jitter_spreads_delays() -> None:
    """Jitter makes delays differ, so jobs that failed together do not retry together."""
    assert len(set(delays(3))) > 100


def test_delay_never_exceeds_the_cap() -> None:
    """Past the cap delays stay at most cap_s and at least 80% of it."""
    for delay in delays(20):
        assert CAP_S * (1 - JITTER) <= delay <= CAP_S


@pytest.mark.parametrize("attempt", [11, 12, 20])
def test_jitter_spreads_delays_at_the_cap(attempt: int) -> None:
    """Jobs that failed together at the cap still retry at different times, not all at cap_s."""
    spread = delays(attempt, n=1000)
    assert sum(delay == CAP_S for delay in spread) == 0
    assert len(set(spread)) == 1000
    # spread over the whole band [0.8 cap, cap]: each fifth of it gets its share
    fifths = [0] * 5
    for delay in spread:
        fifths[min(4, int((delay - CAP_S * (1 - JITTER)) / (CAP_S * JITTER) * 5))] += 1
    assert min(fifths) > 120


def test_penalty_is_spread_too() -> None:
    """Timed-out attempts with a tiny base wait at least the penalty, but not all the same time."""
    rng = random.Random(7)
    waits = [next_delay_s(1, base_s=0.01, cap_s=CAP_S, timed_out=True, rng=rng) for _ in range(200)]
    assert all(MIN_PENALTY_S <= w <= MIN_PENALTY_S * (1 + JITTER) for w in waits)
    assert len(set(waits)) == 200


@pytest.mark.parametrize("attempt", [10_000, 10**9, 10**30])
def test_huge_attempt_does_not_overflow(attempt: int) -> None:
    """A huge attempt number gives a capped delay instead of OverflowError."""
    assert backoff_s(attempt, base_s=BASE_S, cap_s=CAP_S) == CAP_S
    delay = next_delay_s(attempt, base_s=BASE_S, cap_s=CAP_S, rng=random.Random(1))
    assert CAP_S * (1 - JITTER) <= delay <= CAP_S


@pytest.mark.parametrize("attempt", [0, -3])
def test_attempt_below_one_counts_as_the_first(attempt: int) -> None:
    """An attempt number below 1 waits like the first attempt, never less."""
    assert backoff_s(attempt, base_s=BASE_S, cap_s=CAP_S) == BASE_S


def test_default_rng_is_used_when_none_is_given() -> None:
    """Without an rng the delay still lies within the jitter band."""
    delay = next_delay_s(2, base_s=BASE_S, cap_s=CAP_S)
    assert 8.0 <= delay <= 12.0


# --- Retry-After and penalties ----------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_a_floor_on_429_and_503(status: int) -> None:
    """On 429 and 503 the delay is at least Retry-After."""
    for delay in delays(1, retry_after_s=120.0, status=status):
        assert delay >= 120.0


def test_retry_after_is_capped() -> None:
    """A Retry-After longer than the cap waits exactly the cap."""
    assert set(delays(1, retry_after_s=86_400.0, status=503)) == {CAP_S}
    assert set(delays(1, retry_after_s=float("inf"), status=429)) == {CAP_S}


def test_short_retry_after_does_not_shorten_the_backoff() -> None:
    """A Retry-After shorter than the backoff leaves the backoff in place."""
    for delay in delays(5, retry_after_s=1.0, status=503):
        assert delay >= 80.0 * (1 - JITTER)


@pytest.mark.parametrize("status", [500, 502, None])
def test_retry_after_is_ignored_on_other_statuses(status: int | None) -> None:
    """Retry-After is honoured only on 429 and 503."""
    for delay in delays(1, retry_after_s=600.0, status=status):
        assert delay <= BASE_S * (1 + JITTER)


def test_nan_retry_after_is_ignored() -> None:
    """A NaN Retry-After neither poisons nor shortens the delay."""
    for delay in delays(1, retry_after_s=float("nan"), status=429):
        assert BASE_S * (1 - JITTER) <= delay <= BASE_S * (1 + JITTER)


@pytest.mark.parametrize(("status", "timed_out"), [(429, False), (None, True), (500, True)])
def test_minimum_penalty_after_429_or_timeout(status: int | None, timed_out: bool) -> None:
    """After a 429 or a timeout the wait is at least MIN_PENALTY_S, even with a tiny base."""
    delay = next_delay_s(
        1, base_s=0.01, cap_s=CAP_S, status=status, timed_out=timed_out, rng=random.Random(0)
    )
    assert MIN_PENALTY_S <= delay <= MIN_PENALTY_S * (1 + JITTER)


def test_no_penalty_for_plain_failures() -> None:
    """A 500 without timeout keeps the tiny base delay: the penalty is for 429 and timeouts."""
    delay = next_delay_s(1, base_s=0.01, cap_s=CAP_S, status=500, rng=random.Random(0))
    assert delay < 0.02


def test_penalty_never_exceeds_the_cap() -> None:
    """With a cap below the minimum penalty, the cap wins."""
    delay = next_delay_s(1, base_s=0.01, cap_s=0.5, status=429, rng=random.Random(0))
    assert delay == 0.5


def test_delay_is_never_negative() -> None:
    """A negative Retry-After cannot make the delay negative."""
    delay = next_delay_s(
        1, base_s=0.01, cap_s=1.0, retry_after_s=-50.0, status=503, rng=random.Random(0)
    )
    assert delay >= 0.0


# --- parse_retry_after ------------------------------------------------------------------------


def test_parse_retry_after_seconds() -> None:
    """Retry-After as delay-seconds is read as a number of seconds."""
    assert parse_retry_after("120", now_s=0.0) == 120.0
    assert parse_retry_after(" 0 ", now_s=0.0) == 0.0


def test_parse_retry_after_http_date() -> None:
    """Retry-After as an HTTP date is the time left until that date, never negative."""
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(datetime(2024, 1, 1, 12, 1, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(later, now_s=now.timestamp()) == 90.0
    assert parse_retry_after(later, now_s=now.timestamp() + 1000) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "\uff11\uff12"])
def test_parse_retry_after_rejects_garbage(value: str | None) -> None:
    """An unusable Retry-After yields None, so the plain backoff applies."""
    assert parse_retry_after(value, now_s=0.0) is None

"""The retry policy: what an attempt's outcome means, and how long to wait before the next one.

Pure functions, no IO: `delivery` asks `verdict()` what to do and `next_delay_s()` when.

- 2xx: delivered. 410 Gone: disable the webhook and dead-letter the job. Anything else (other
  statuses, timeouts, connection errors, ``status=None``): retry until ``max_attempts``.
- After failed attempt n (1-based) the job waits ``d = min(cap, base * 2**(n-1))`` spread
  uniformly over ``[0.8 d, min(cap, 1.2 d)]``: waits still grow while uncapped, and retries of
  jobs that failed together spread out, at the cap too (there the band is ``[0.8 cap, cap]``;
  jittering first and capping after would pile half of them on exactly ``cap``).
- ``Retry-After`` on a 429 or 503 is a floor: the wait is at least that long.
- After a 429 or a timeout the wait is at least `MIN_PENALTY_S` (1 s, itself spread over
  [1 s, 1.2 s]), so a target that is overloaded is not hit again at once even with a tiny
  ``backoff_base_s``, nor by all of its failed jobs in the same instant.
- Every wait is capped at ``cap_s``, penalties and Retry-After included, and never negative.
"""

from __future__ import annotations

import math
import random
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Final

JITTER: Final = 0.2  # +-20%
MIN_PENALTY_S: Final = 1.0  # the least wait after a 429 or a timeout (itself capped at cap_s)
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
GONE: Final = 410
TOO_MANY_REQUESTS: Final = 429

_RNG: Final = random.Random()  # jitter, not security


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    DISABLE = "disable"  # disable the webhook and dead-letter the job


def verdict(status: int | None, attempt: int, max_attempts: int) -> Verdict:
    """What to do after ``attempt`` (1-based) answered ``status`` (None: no HTTP answer)."""
    if status is not None and 200 <= status < 300:  # noqa: PLR2004
        return Verdict.DELIVERED
    if status == GONE:
        return Verdict.DISABLE
    if attempt >= max_attempts:
        return Verdict.DEAD
    return Verdict.RETRY


def backoff_s(attempt: int, *, base_s: float, cap_s: float) -> float:
    """``min(cap_s, base_s * 2**(attempt-1))`` without jitter; safe for any ``attempt``."""
    exponent = max(attempt - 1, 0)
    try:
        return min(cap_s, math.ldexp(base_s, exponent))
    except OverflowError:  # 2**exponent beyond a float: far past any cap
        return cap_s


def next_delay_s(
    attempt: int,
    *,
    base_s: float,
    cap_s: float,
    retry_after_s: float | None = None,
    status: int | None = None,
    timed_out: bool = False,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after failed ``attempt`` (1-based) before the next one."""
    rng = rng or _RNG
    backoff = backoff_s(attempt, base_s=base_s, cap_s=cap_s)
    delay = rng.uniform(backoff * (1 - JITTER), min(cap_s, backoff * (1 + JITTER)))
    if timed_out or status == TOO_MANY_REQUESTS:
        delay = max(delay, MIN_PENALTY_S * rng.uniform(1, 1 + JITTER))
    if (
        retry_after_s is not None
        and status in RETRY_AFTER_STATUSES
        and not math.isnan(retry_after_s)
    ):
        delay = max(delay, retry_after_s)
    return max(0.0, min(delay, cap_s))


def parse_retry_after(value: str | None, *, now_s: float) -> float | None:
    """A ``Retry-After`` value as seconds to wait from ``now_s`` (unix time), or None.

    Accepts delay-seconds (``"120"``, ``"1.5"``; a negative number means now) and HTTP dates
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``, a date in the past means now, so 0). None for no
    value, garbage, ``nan``, ``inf`` and text that is not ASCII (a header decoded as latin-1
    holds no other digits), so the plain backoff applies.
    """
    if value is None:
        return None
    text = value.strip()
    if not text.isascii():
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # HTTP dates are GMT
    return max(when.timestamp() - now_s, 0.0)

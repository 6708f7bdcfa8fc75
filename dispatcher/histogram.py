"""A compact histogram of durations in ms: log-linear buckets, sparse, percentiles with a bound.

A duration ``v`` (ms; values under 1 ms count as 1 ms) falls in bucket
``b = ceil(log(v) / log(GAMMA))``, which holds ``(GAMMA**(b-1), GAMMA**b]``, with
``GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)``. A bucket stands for the value
``2 * GAMMA**b / (GAMMA + 1)``, within ``RELATIVE_ERROR`` of every value in it (the mapping of
DDSketch, Masson et al., VLDB 2019). A histogram is a dict bucket -> count holding only the
buckets that were hit: 1 ms to 60 s spans about 110 buckets, a typical endpoint's attempts a
few dozen.

The percentile ``q`` of n values is the nearest-rank one: the ``ceil(q * n)``-th smallest. The
buckets keep the values' order, so the bucket holding that value is found from the counts
alone, and the answer is within ``RELATIVE_ERROR`` (5%) of the exact nearest-rank percentile,
or within 1 ms of it for values under 1 ms, plus the 0.05 ms of rounding answers to 0.1 ms
(``tests/test_stats.py`` checks it as a property). Pure: no I/O, so any layer may import it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

#: The bound on a percentile's relative error (for values of at least 1 ms).
RELATIVE_ERROR = 0.05
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
_PER_LOG = 1 / math.log(GAMMA)
#: The largest bucket: about 10^17 ms; longer durations (none are) count in it.
MAX_BUCKET = 400
#: The percentiles the API answers.
QUANTILES = (0.5, 0.95, 0.99)


def bucket_of(ms: float) -> int:
    """The bucket of a duration in ms (0 for anything up to 1 ms); tally.py has it inline."""
    if ms <= 1.0:
        return 0
    return min(math.ceil(math.log(ms) * _PER_LOG), MAX_BUCKET)


def value_of(bucket: int) -> float:
    """The value a bucket stands for: within RELATIVE_ERROR of every duration in it."""
    return 2 * GAMMA**bucket / (GAMMA + 1)


def merge(into: dict[int, int], other: Mapping[int, int]) -> None:
    """Add ``other``'s counts to ``into``."""
    for bucket, count in other.items():
        into[bucket] = into.get(bucket, 0) + count


def percentiles(
    counts: Mapping[int, int], quantiles: Iterable[float] = QUANTILES
) -> list[float | None]:
    """The nearest-rank percentiles of the histogram, in ms rounded to 0.1 (None when empty)."""
    total = sum(counts.values())
    wanted = list(quantiles)
    if total <= 0:
        return [None for _ in wanted]
    ordered = sorted(counts.items())
    answers: list[float | None] = []
    for q in wanted:
        rank = rank_of(q, total)
        seen = 0
        for bucket, count in ordered:
            seen += count
            if seen >= rank:
                answers.append(round(value_of(bucket), 1))
                break
    return answers


def rank_of(q: float, total: int) -> int:
    """The 1-based rank of the nearest-rank percentile ``q`` of ``total`` values."""
    # q * total in floating point can land a hair above a whole number (0.95 * 100)
    return min(total, max(1, math.ceil(q * total - 1e-9)))

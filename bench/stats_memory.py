"""Stats memory: the Redis bytes one webhook's delivery stats hold at steady state.

    python -m bench.stats_memory                     # a fresh redis-server, 10 attempts/s
    python -m bench.stats_memory --per-second 100 --redis-url redis://127.0.0.1:6379/0
    python -m bench.stats_memory --spread            # the worst case: every bucket each minute

A week of one busy webhook is written as the workers write it: each minute's counts
(``tally.Tally``: ``--per-second`` attempts, 1% failing, durations log-normal around 120 ms,
lag a little more; with ``--spread`` durations log-uniform from 1 ms to 30 s and lags from 1 ms
to 7 days, so a minute fills nearly every bucket) added by ``queue.stats.add`` and rolled by
``queue.stats.rollup`` into its hour, with the clock moved by hand. Then the minute hashes
older than their TTL are deleted (Redis would have expired them), and the sum of ``MEMORY USAGE
<key> SAMPLES 0`` over the webhook's keys is printed: 120 minutes (2 h) and 168 hours (7 days)
at steady state, and the bytes a day of hours adds, and how long ``Client.webhook_stats`` takes
for each window (one script call reading up to 288 hashes). The pending zset is shared by the
shard's webhooks and holds only the last two minutes of each: it is left out.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
import uuid

from dispatcher import Client
from dispatcher.queue import stats
from dispatcher.tally import Tally
from tests.helpers import redis_at

WEEK_MINUTES = 7 * 24 * 60
#: --spread: the logs of the longest duration (30 s) and lag (7 days), in ms
LOG_SLOWEST = math.log(30_000)
LOG_LATEST = math.log(7 * 86_400_000)


def _minute(
    rng: random.Random, webhook_id: str, minute: int, per_second: int, *, spread: bool
) -> Tally:
    tally = Tally()
    for _ in range(per_second * 60):
        failed = rng.random() < 0.01  # 1% of attempts fail
        if spread:
            duration_ms = math.exp(rng.uniform(0, LOG_SLOWEST))
            lag_ms = None if failed else math.exp(rng.uniform(0, LOG_LATEST))
        else:
            duration_ms = rng.lognormvariate(4.8, 0.5)  # median 120 ms
            lag_ms = None if failed else duration_ms + rng.expovariate(1 / 30)
        tally.attempt(webhook_id, minute, duration_ms, lag_ms)
    return tally


async def measure(redis_url: str, per_second: int, *, spread: bool = False) -> dict[str, float]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    rng = random.Random(7)
    async with Client.from_url(redis_url, prefix=prefix) as client:
        store = client.store
        hook = (await client.create_webhook("acme", "https://hooks.example.com/x"))["id"]
        now_minute = store.clock.now_ms() // 60_000
        first = now_minute - WEEK_MINUTES + 1
        for minute in range(first, now_minute + 1):
            now_ms = minute * 60_000 + 59_000
            await stats.add(
                store, _minute(rng, hook, minute, per_second, spread=spread).take(), now_ms
            )
            await stats.rollup(store, now_ms)
        redis = store.redis
        kept_from = now_minute - stats.MINUTE_TTL_S // 60 + 1
        expired = [store.keys.hook_minute(hook, m) for m in range(first, kept_from)]
        await redis.delete(*expired)
        kept = [store.keys.hook_minute(hook, m) for m in range(kept_from, now_minute + 1)]
        minute_bytes = sum([await redis.memory_usage(k, samples=0) or 0 for k in kept])
        hours = [store.keys.hook_hour(hook, h) for h in range(first // 60, now_minute // 60 + 1)]
        hour_sizes = [await redis.memory_usage(k, samples=0) or 0 for k in hours]
        hour_bytes = sum(hour_sizes[-168:])
        read_ms = {}
        for window in stats.WINDOWS:
            started = time.perf_counter()
            await client.webhook_stats(hook, window)
            read_ms[f"read_{window}_ms"] = round((time.perf_counter() - started) * 1000, 1)
        keys = [k async for k in redis.scan_iter(f"{prefix}:*")]
        await redis.delete(*keys)
    return {
        "minutes_kept": len(kept),
        "minute_bytes": minute_bytes,
        "hours_kept": min(168, len(hours)),
        "hour_bytes": hour_bytes,
        "day_of_hours_bytes": round(hour_bytes / 7),
        "total_bytes": minute_bytes + hour_bytes,
        **read_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", help="an existing Redis (default: start redis-server)")
    parser.add_argument("--per-second", type=int, default=10, help="attempts per second")
    parser.add_argument(
        "--spread", action="store_true", help="durations and lags over every bucket (worst case)"
    )
    args = parser.parse_args()
    with redis_at(args.redis_url) as url:
        result = asyncio.run(measure(url, args.per_second, spread=args.spread))
    for name, value in result.items():
        print(f"{name:>20}: {value:,}")


if __name__ == "__main__":
    main()

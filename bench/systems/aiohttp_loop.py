"""The ceiling: dispatcher's own HTTP sender POSTing N payloads with no queue at all.

    python -m bench.systems.aiohttp_loop --targets URL --n N --concurrency C --payload-bytes B

Same session settings as the daemon (it is the daemon's ``Sender``), same target and payload,
so the ratio dispatcher / this loop is the cost of everything that is not HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time

import orjson
import uvloop

from bench.systems.common import payload
from dispatcher.sender import Sender
from dispatcher.ssrf import AddressPolicy


async def run(urls: list[str], n: int, concurrency: int, size: int) -> None:
    sender = Sender(timeout_s=15, concurrency=concurrency,
                    policy=AddressPolicy(allow_private=True), user_agent="bench")
    await sender.start()
    bodies = [orjson.dumps(payload(i, size)) for i in range(n)]
    headers = {"content-type": "application/json"}
    started = time.perf_counter()
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            await sender.attempt(urls[i % len(urls)], bodies[i], headers)

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    await sender.close()
    print(orjson.dumps({"sent": n, "seconds": seconds,
                        "cpu_s": usage.ru_utime + usage.ru_stime}).decode(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--payload-bytes", type=int, default=300)
    args = parser.parse_args()
    uvloop.run(run(args.targets.split(","), args.n, args.concurrency, args.payload_bytes))


if __name__ == "__main__":
    main()

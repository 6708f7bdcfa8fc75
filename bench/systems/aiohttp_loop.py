"""The ceilings: N POSTs with no queue at all, through aiohttp or through dispatcher's sender.

    python -m bench.systems.aiohttp_loop --client aiohttp --targets URL --n N --concurrency C
    python -m bench.systems.aiohttp_loop --client sender  --targets URL --n N --concurrency C
    python -m bench.systems.aiohttp_loop --client sender-aiohttp ...

``aiohttp`` is one ``ClientSession`` with the settings a webhook sender needs (pool of
``concurrency`` connections, no cookies, no env proxies, no redirects, total timeout, capped
read); ``sender`` is the daemon's own HTTP client, ``sender-aiohttp`` the daemon's aiohttp one
(``delivery.http_client = "aiohttp"``). Same target and payloads as the systems, so
dispatcher / loop is the cost of everything that is not HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import uvloop

from bench.systems.common import payload
from dispatcher.sender import Sender
from dispatcher.sender_aiohttp import AiohttpSender
from dispatcher.ssrf import AddressPolicy

HEADERS = {"content-type": "application/json"}


async def _aiohttp(concurrency: int) -> tuple[Callable[[str, bytes], Awaitable[object]], Callable[[], Awaitable[None]]]:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency),
        timeout=aiohttp.ClientTimeout(total=15),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=False,
        headers={"accept-encoding": "identity", "user-agent": "bench"},
    )

    async def post(url: str, body: bytes) -> object:
        async with session.post(url, data=body, headers=HEADERS, allow_redirects=False) as resp:
            return await resp.content.read(65536)

    return post, session.close


async def _sender(
    concurrency: int, kind: type[Sender | AiohttpSender] = Sender
) -> tuple[Callable[[str, bytes], Awaitable[object]], Callable[[], Awaitable[None]]]:
    sender = kind(timeout_s=15, concurrency=concurrency,
                    policy=AddressPolicy(allow_private=True), user_agent="bench")
    await sender.start()

    async def post(url: str, body: bytes) -> object:
        return await sender.attempt(url, body, HEADERS)

    return post, sender.close


async def run(client: str, urls: list[str], n: int, concurrency: int, size: int) -> None:
    if client == "aiohttp":
        post, close = await _aiohttp(concurrency)
    else:
        kind = AiohttpSender if client == "sender-aiohttp" else Sender
        post, close = await _sender(concurrency, kind)
    bodies = [orjson.dumps(payload(i, size)) for i in range(n)]
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            await post(urls[i % len(urls)], bodies[i])

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    await close()
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(orjson.dumps({"sent": n, "seconds": seconds, "cpu_s": cpu_s}).decode(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--client", choices=("aiohttp", "sender", "sender-aiohttp"), default="aiohttp"
    )
    parser.add_argument("--targets", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--payload-bytes", type=int, default=300)
    args = parser.parse_args()
    uvloop.run(run(args.client, args.targets.split(","), args.n, args.concurrency, args.payload_bytes))


if __name__ == "__main__":
    main()

"""Publishing speed: events/s through ``Client.publish``, ``POST /v1/events`` and
``publish_many``, with the CPU each side spends.

    python -m bench.publish [--n 20000] [--in-flight 100] [--batch 100] [--hooks 1,3]

Each variant gets a fresh redis-server (persistence off) and one tenant with ``--hooks``
webhooks subscribed to the event (so an event makes that many jobs). Their queue is paused, so
nothing is delivered while we publish. Then, one after the other:

- ``client``: N events through ``Client.publish``, ``--in-flight`` coroutines at a time;
- ``http``: N events as ``POST /v1/events`` to a real ``dispatcher run`` (its admin API on a
  free port), ``--in-flight`` requests at a time over keep-alive connections (aiohttp);
- ``many``: N events through ``Client.publish_many`` in batches of ``--batch``, one batch at a
  time.

Printed per variant and way: events/s, and CPU seconds per 1,000 events of this process (the
publisher: the Client, or the HTTP client), of the daemon (only ``http`` uses it) and of
redis-server (the publish script's share, on the line after). The
payload is the one of ``bench/run.py`` (~300 bytes). Compare two trees by running this with
PYTHONPATH pointing at each, alternating, in the same minutes. ``--dedup-window-s`` turns
deduplication on (the Client's window, and the daemon's ``events.dedup_window_s``): every event
is distinct, so this is its cost on the accepted path. ``--filter`` gives every webhook that
payload filter (one that matches every event measures its evaluation; the jobs are the same).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp
import orjson

from bench.run import Redis, cpu_seconds, free_port
from bench.systems.common import payload
from dispatcher import Client
from dispatcher.sender import Sender
from dispatcher.ssrf import AddressPolicy

TOKEN = "bench-token-0123456789"  # noqa: S105 - a throwaway token for a local daemon
PREFIX = "bench"
TENANT = "t0"


async def _in_flight(n: int, width: int, one: Any) -> None:
    """Call ``one(i)`` for i in range(n), ``width`` at a time."""
    counter = iter(range(n))

    async def lane() -> None:
        for i in counter:
            await one(i)

    await asyncio.gather(*(lane() for _ in range(width)))


def _timed(
    label: str, n: int, started: float, cpu: float, daemon_cpu: float | None
) -> dict[str, Any]:
    seconds = time.perf_counter() - started
    row = {
        "way": label,
        "events_per_s": round(n / seconds),
        "publisher_cpu_s_per_1k": round((time.process_time() - cpu) / n * 1000, 4),
        "daemon_cpu_s_per_1k": round(daemon_cpu / n * 1000, 4) if daemon_cpu is not None else None,
    }
    print(orjson.dumps(row).decode(), flush=True)
    return row


async def _via_client(client: Client, n: int, width: int) -> dict[str, Any]:
    async def one(i: int) -> None:
        answer = await client.publish(TENANT, "bench.event", payload(i, 300))
        if not answer["jobs"]:
            raise RuntimeError("an event matched no webhook")

    started, cpu = time.perf_counter(), time.process_time()
    await _in_flight(n, width, one)
    return _timed("client", n, started, cpu, None)


async def _via_many(client: Client, n: int, batch: int) -> dict[str, Any]:
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, n, batch):
        answers = await client.publish_many(
            {"tenant_id": TENANT, "event_type": "bench.event", "payload": payload(i, 300)}
            for i in range(start, min(n, start + batch))
        )
        if not all(isinstance(a, dict) for a in answers):
            raise RuntimeError(f"not accepted: {answers}")
    return _timed("many", n, started, cpu, None)


def _daemon(redis_url: str, port: int, dedup_window_s: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    if dedup_window_s:
        env["DISPATCHER_EVENTS_DEDUP_WINDOW_S"] = str(dedup_window_s)
    env.update(
        {
            "DISPATCHER_REDIS_URL": redis_url,
            "DISPATCHER_REDIS_PREFIX": PREFIX,
            "DISPATCHER_ADMIN_LISTEN": f"127.0.0.1:{port}",
            "DISPATCHER_ADMIN_TOKEN": TOKEN,
            "DISPATCHER_SECURITY_ALLOW_PRIVATE_TARGETS": "true",
            "DISPATCHER_LOG_LEVEL": "warning",
        }
    )
    return subprocess.Popen([sys.executable, "-m", "dispatcher", "run"], env=env)


def _post_with(sender: Sender, url: str, headers: dict[str, str]) -> Any:
    """The same POST as the aiohttp client's, through ``sender``, its answer's status checked."""

    async def one(i: int) -> None:
        body = orjson.dumps(
            {"tenant_id": TENANT, "event_type": "bench.event", "payload": payload(i, 300)}
        )
        outcome = await sender.attempt(url, body, headers)
        if outcome.status != 202:
            raise RuntimeError(f"POST /v1/events answered {outcome}")

    return one


async def _via_http(
    redis_url: str, n: int, width: int, client: str, dedup_window_s: int
) -> dict[str, Any]:
    port = free_port()
    daemon = _daemon(redis_url, port, dedup_window_s)
    base = f"http://127.0.0.1:{port}"
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    try:
        connector = aiohttp.TCPConnector(limit=width)
        async with aiohttp.ClientSession(base, connector=connector, headers=headers) as session:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with session.get("/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError("dispatcher run did not serve /healthz")
                await asyncio.sleep(0.1)

            async def one(i: int) -> None:
                body = orjson.dumps(
                    {"tenant_id": TENANT, "event_type": "bench.event", "payload": payload(i, 300)}
                )
                async with session.post("/v1/events", data=body) as response:
                    await response.read()
                    if response.status != 202:
                        raise RuntimeError(f"POST /v1/events answered {response.status}")

            sender = None
            if client == "sender":  # dispatcher's own HTTP client: about 5x less CPU per POST
                sender = Sender(
                    timeout_s=30,
                    concurrency=width,
                    policy=AddressPolicy(allow_private=True, allowed_cidrs=()),
                    user_agent="bench",
                )
                await sender.start()
                one = _post_with(sender, f"{base}/v1/events", headers)
            try:
                await _in_flight(min(n, 200), width, one)  # warm up: connections, the script
                started, cpu = time.perf_counter(), time.process_time()
                daemon_cpu = cpu_seconds(daemon.pid)
                await _in_flight(n, width, one)
                label = "http" if client == "aiohttp" else f"http ({client} client)"
                return _timed(label, n, started, cpu, cpu_seconds(daemon.pid) - daemon_cpu)
            finally:
                if sender is not None:
                    await sender.close()
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


async def variant(hooks: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    print(
        f"# {hooks} webhook(s) per tenant, {args.n} events, {args.in_flight} in flight", flush=True
    )
    redis = Redis()
    rows = []
    try:
        window = args.dedup_window_s
        async with Client.from_url(redis.url, prefix=PREFIX, dedup_window_s=window) as client:
            extra = {"filter": args.filter} if args.filter is not None else {}
            for _ in range(hooks):
                await client.create_webhook(TENANT, "http://127.0.0.1:9/hook", **extra)
            await client.pause("default")  # measure publishing alone: nothing is delivered
            await _in_flight(
                min(args.n, 200),
                args.in_flight,
                lambda i: client.publish(TENANT, "bench.event", payload(i, 300)),
            )
            for way in args.ways:
                redis_cpu = cpu_seconds(redis.proc.pid)
                if way == "client":
                    rows.append(await _via_client(client, args.n, args.in_flight))
                elif way == "many":
                    rows.append(await _via_many(client, args.n, args.batch))
                else:
                    http = await _via_http(
                        redis.url, args.n, args.in_flight, args.http_client, window
                    )
                    rows.append(http)
                # the publish script's share (filters are evaluated there)
                per_1k = (cpu_seconds(redis.proc.pid) - redis_cpu) / args.n * 1000
                rows[-1]["redis_cpu_s_per_1k"] = round(per_1k, 4)
                print(f"  redis-server: {per_1k:.4f} CPU s per 1,000 events", flush=True)
    finally:
        redis.stop()
    for row in rows:
        row["hooks"] = hooks
    return rows


async def main_async(args: argparse.Namespace) -> None:
    for hooks in args.hooks:
        await variant(hooks, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--hooks", type=lambda s: [int(x) for x in s.split(",")], default=[1, 3])
    parser.add_argument("--dedup-window-s", type=int, default=0, help="0: dedup off")
    parser.add_argument(
        "--filter",
        type=orjson.loads,
        default=None,
        help='a payload filter on every webhook, e.g. \'{"seq": {"$gte": 0}}\' (matches all)',
    )
    parser.add_argument("--ways", type=lambda s: s.split(","), default=["client", "http", "many"])
    parser.add_argument(
        "--http-client",
        choices=["aiohttp", "sender"],
        default="aiohttp",
        help="the load generator of POST /v1/events (sender: dispatcher's own, lighter client)",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

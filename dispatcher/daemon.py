"""The daemon's lifecycle: open everything, run the worker, drain on SIGTERM, close.

Signals only set the ``stop`` event. Resources are opened in an ``AsyncExitStack`` and closed
in reverse order after the worker has drained.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import structlog

from dispatcher.client import Client
from dispatcher.delivery import USER_AGENT, Outage, Worker
from dispatcher.embedded import EmbeddedRedis
from dispatcher.errors import ConfigError
from dispatcher.metrics import Metrics
from dispatcher.notify import Notifier
from dispatcher.queue.server import ServerFacts, server_facts
from dispatcher.queue.store import Store
from dispatcher.sender import Sender
from dispatcher.ssrf import AddressPolicy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from dispatcher.config import Config

log = structlog.get_logger()

MIN_REDIS = (7, 0)  # XAUTOCLAIM that reports deleted entries; scripts with shebang flags
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


async def run(cfg: Config) -> int:
    # What exists now (modules, config) lives as long as the process: keep it out of every
    # collection, and collect the young generation less often. Deliveries make few cycles.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await _serve(cfg, stop)
    except ConfigError as exc:
        for problem in exc.problems:
            # Each problem is the operator's to fix, and a traceback would only bury it.
            log.error("daemon.start_failed", problem=problem)  # noqa: TRY400
        return EXIT_CONFIG
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _serve(cfg: Config, stop: asyncio.Event) -> int:
    async with AsyncExitStack() as stack:
        embedded: EmbeddedRedis | None = None
        url = cfg.redis.url
        if url is None:
            embedded = EmbeddedRedis(cfg.state_dir)
            stack.push_async_callback(embedded.stop)
            url = await embedded.start()
        store = Store.open(
            url, prefix=cfg.redis.prefix, max_connections=max(16, cfg.delivery.concurrency // 4)
        )
        stack.push_async_callback(store.close)
        code = await _check_server(store, stop, embedded)
        if code is not None:
            return code
        metrics = Metrics()
        policy = AddressPolicy(cfg.security.allow_private_targets, cfg.security.allowed_cidrs)
        sender = Sender(
            timeout_s=cfg.delivery.timeout_s,
            concurrency=cfg.delivery.concurrency,
            policy=policy,
            user_agent=USER_AGENT,
        )
        await sender.start()
        stack.push_async_callback(sender.close)
        worker = Worker(store, sender, cfg.delivery, cfg.jobs, metrics, queues=cfg.delivery.queues)
        stop_admin = await _start_admin(cfg, url, metrics, stack)
        log.info(
            "daemon.started",
            consumer=worker.consumer,
            queues=list(worker.queues),
            concurrency=cfg.delivery.concurrency,
            embedded_redis=embedded is not None,
        )
        return await _run_worker(worker, stop, embedded, stop_admin)
    return EXIT_OK  # pragma: no cover - the stack always returns above


async def _start_admin(
    cfg: Config, url: str, metrics: Metrics, stack: AsyncExitStack
) -> Callable[[], Awaitable[None]]:
    """Serve the admin API when ``admin.listen`` is set; returns its (idempotent) stop."""
    if cfg.admin.listen is None:
        return _nothing
    from dispatcher.admin.app import Deps, create_app, serve  # noqa: PLC0415 - aiohttp.web

    # Its own small pool, so admin calls never wait behind the worker's blocking reads.
    admin_store = Store.open(url, prefix=cfg.redis.prefix, max_connections=16)
    stack.push_async_callback(admin_store.close)
    client = Client(
        admin_store,
        max_payload_bytes=cfg.delivery.max_payload_bytes,
        dlq_retention_s=cfg.dlq.retention_s,
    )
    if cfg.admin.token is None:
        log.warning(
            "admin.no_token",
            hint="set admin.token or admin.token_file; until then every /v1 call answers 401",
        )
    runner = await serve(create_app(Deps(client, metrics, cfg.admin.token)), cfg.admin.listen)
    addresses: list[Any] = list(runner.addresses)
    log.info("admin.listening", address=_address(addresses[0]) if addresses else cfg.admin.listen)
    stopped = False

    async def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            await runner.cleanup()
            log.info("admin.stopped")

    stack.push_async_callback(stop)
    return stop


def _address(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


async def _nothing() -> None:
    return None


async def _run_worker(
    worker: Worker,
    stop: asyncio.Event,
    embedded: EmbeddedRedis | None,
    stop_admin: Callable[[], Awaitable[None]] = _nothing,
) -> int:
    notifier = Notifier()

    async def relay_stop() -> None:
        await stop.wait()
        notifier.stopping()
        await stop_admin()  # first: no admin call runs while the worker drains
        worker.stop.set()

    code = EXIT_OK
    async with asyncio.TaskGroup() as group:
        group.create_task(relay_stop())
        run = group.create_task(worker.run())
        notifier.ready(_status(worker))
        watchdog = group.create_task(_watchdog(notifier, worker, stop))
        if embedded is not None:
            child = group.create_task(embedded.wait())
            await asyncio.wait({run, child}, return_when=asyncio.FIRST_COMPLETED)
            if child.done():
                log.error("redis.embedded_exited", code=child.result())
                code = EXIT_FAILED
                stop.set()
            else:
                child.cancel()
        await run
        stop.set()
        watchdog.cancel()
    return code


def _status(worker: Worker) -> str:
    return f"delivering from {', '.join(worker.queues)}; {worker.in_flight} in flight"


async def _watchdog(notifier: Notifier, worker: Worker, stop: asyncio.Event) -> None:
    """Pet systemd's watchdog while the event loop runs and the worker's control loop, which
    talks to Redis and backs off when it is down, keeps turning: a wedged daemon gets restarted,
    one riding out a Redis outage does not."""
    interval_s = notifier.watchdog_interval_s
    if interval_s is None:
        return
    while not stop.is_set():
        if time.monotonic() - worker.alive_at < max(2 * interval_s, 10.0):
            notifier.watchdog()
            notifier.status(_status(worker))
        await asyncio.sleep(interval_s)


async def _check_server(
    store: Store, stop: asyncio.Event, embedded: EmbeddedRedis | None = None
) -> int | None:
    """Wait for Redis, then refuse servers that could lose or evict accepted work.

    Returns None to go on, else the exit code: stopped while waiting, or the embedded Redis
    died (waiting for it would be forever).
    """
    outage = Outage("startup", Metrics())
    while not stop.is_set():
        if embedded is not None and embedded.exited():
            log.error("redis.embedded_exited", during="startup")
            return EXIT_FAILED
        try:
            facts = await server_facts(store)
        except Exception as exc:
            await outage.failed(exc, stop)
            continue
        outage.ok()
        _judge(facts)
        return None
    return EXIT_OK


def _judge(facts: ServerFacts) -> None:
    if facts.version < MIN_REDIS:
        raise ConfigError(
            [f"redis.url: Redis {facts.version_text} is too old; dispatcher needs 7.0 or newer"]
        )
    if facts.maxmemory_policy != "noeviction":
        raise ConfigError(
            [
                (
                    f"redis.url: maxmemory-policy is {facts.maxmemory_policy}; dispatcher needs "
                    "noeviction, since any other policy may evict queued jobs"
                )
            ]
        )
    if not facts.appendonly:
        log.warning(
            "redis.persistence_off", hint="appendonly no: a Redis restart loses every queued job"
        )
    if facts.maxmemory == 0:
        log.warning(
            "redis.maxmemory_unset",
            hint="maxmemory 0: Redis may grow until the host runs out of memory",
        )
    log.info("redis.connected", version=facts.version_text, role=facts.role)

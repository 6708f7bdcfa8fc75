"""The daemon's lifecycle: open everything, run the worker, drain on SIGTERM, close.

Signals only set events: SIGTERM/SIGINT ``stop``, SIGHUP a reload of the configuration.
Resources are opened in an ``AsyncExitStack`` and closed in reverse order after the worker has
drained. Beside the worker run the systemd watchdog, the backlog alerts and the reloader, and
with ``[regions]`` the registry replicator and the outbox relay (docs/regions.md).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import structlog

from dispatcher import loops
from dispatcher.alerts import Alerts
from dispatcher.client import Client
from dispatcher.config import changed_keys, with_keys
from dispatcher.config_values import redact_url
from dispatcher.crypto import Keyring
from dispatcher.delivery import USER_AGENT, Worker
from dispatcher.embedded import EmbeddedRedis
from dispatcher.errors import ConfigError
from dispatcher.logs import set_level
from dispatcher.metrics import Metrics
from dispatcher.notify import Notifier
from dispatcher.oauth import AuthorizingSender
from dispatcher.queue import encryption
from dispatcher.queue.backlog import measure
from dispatcher.queue.regions import Regions
from dispatcher.queue.server import ServerFacts, server_facts
from dispatcher.queue.store import RegionMismatchError, Store
from dispatcher.relay import Relay
from dispatcher.replicator import Replicator
from dispatcher.sender import Sender
from dispatcher.sender_aiohttp import AiohttpSender
from dispatcher.ssrf import AddressPolicy
from dispatcher.taskrunner import TaskRunner
from dispatcher.tasks import load_modules

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Sequence

    from dispatcher.config import Config, DeliveryConfig
    from dispatcher.liveness import Liveness
    from dispatcher.queue.store import Layout
    from dispatcher.sender import HttpSender
    from dispatcher.tasks import Task

log = structlog.get_logger()

MIN_REDIS = (7, 0)  # XAUTOCLAIM that reports deleted entries; scripts with shebang flags
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
ALERT_INTERVAL_S = 5.0
LIVENESS_CHECK_S = 1.0  # how often stalled loops are looked for when systemd has no watchdog
#: What a reload applies to the running daemon: the worker reads ``delivery.*`` from the config
#: object it is handed at each use, alerts and the log level live outside it. Every other key
#: (listeners, Redis, pools, queues, retention, ...) is built into something at start.
LIVE_KEYS: Final = frozenset(
    {
        "log.level",
        "delivery.max_attempts",
        "delivery.backoff_base_s",
        "delivery.backoff_cap_s",
        "delivery.breaker_open_s",
        "delivery.disable_after_s",
        "alerts.queued_max",
        "alerts.oldest_ready_age_s",
        "alerts.dlq_growth",
        "alerts.dlq_window_s",
    }
)


async def run(cfg: Config, reload: Callable[[], Config] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; on SIGHUP call ``reload`` for the new config (the CLI reads
    the same file and environment again) and apply what can change live."""
    # What exists now (modules, config) lives as long as the process: keep it out of every
    # collection, and collect the young generation less often. Deliveries make few cycles.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    stop = asyncio.Event()
    reload_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    try:
        return await _serve(cfg, stop, _Reload(reload or (lambda: cfg), reload_requested))
    except ConfigError as exc:
        for problem in exc.problems:
            # Each problem is the operator's to fix, and a traceback would only bury it.
            log.error("daemon.start_failed", problem=problem)  # noqa: TRY400
        return EXIT_CONFIG
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


@dataclass(frozen=True, slots=True)
class _Reload:
    load: Callable[[], Config]
    requested: asyncio.Event


async def _serve(cfg: Config, stop: asyncio.Event, reload: _Reload) -> int:
    registry = load_modules(cfg.tasks.modules)  # a module that fails to import: exit 2
    async with AsyncExitStack() as stack:
        embedded: EmbeddedRedis | None = None
        url = cfg.redis.url
        if url is None:
            embedded = EmbeddedRedis(cfg.state_dir, maxmemory=cfg.redis.embedded_maxmemory)
            stack.push_async_callback(embedded.stop)
            url = await embedded.start()
        store = Store.open(
            url,
            prefix=cfg.redis.prefix,
            max_connections=max(16, cfg.delivery.concurrency // 4),
            keyring=Keyring.of(cfg.security.encryption_keys),
        )
        stack.push_async_callback(store.close)
        code = await _check_server(store, stop, embedded, shards=cfg.redis.shards)
        if code is None and cfg.region is not None:
            code = await _adopt_region(store, stop, cfg.region, tuple(cfg.regions))
        elif code is None and embedded is None:  # an embedded Redis is never a region's
            code = await _refuse_regional_redis(store, stop)
        if code is not None:
            return code
        await _check_encryption(store)
        metrics = Metrics()
        policy = AddressPolicy(cfg.security.allow_private_targets, cfg.security.allowed_cidrs)
        # OAuth2 bearer tokens for webhooks with auth (oauth.py), fetched through the sender
        sender = AuthorizingSender(
            _sender(cfg.delivery, policy, metrics),
            timeout_s=cfg.delivery.timeout_s,
            metrics=metrics,
        )
        await sender.start()
        stack.push_async_callback(sender.close)
        worker = Worker(store, sender, cfg.delivery, cfg.jobs, metrics, queues=cfg.delivery.queues)
        alerts = Alerts(cfg.alerts)
        stop_admin = await _start_admin(
            cfg, url, metrics, alerts, stack, liveness=worker.liveness, sender=sender
        )
        log.info(
            "daemon.started",
            consumer=worker.consumer,
            queues=list(worker.queues),
            concurrency=cfg.delivery.concurrency,
            http_client=cfg.delivery.http_client,
            proxy=redact_url(cfg.delivery.proxy_url) if cfg.delivery.proxy_url else None,
            embedded_redis=embedded is not None,
            **({"region": cfg.region, "regions": list(cfg.regions)} if cfg.region else {}),
        )
        reloader = _Reloader(cfg, reload.load, worker, alerts)
        runner = _task_runner(cfg, store, registry, metrics, stop, worker)
        side_tasks = [
            lambda _: _alert_loop(alerts, store, metrics, stop),
            lambda notifier: _reload_loop(reloader, reload.requested, stop, notifier),
        ]
        if cfg.region is not None:  # docs/regions.md: other regions' webhook writes; outboxes
            regions = Regions(store, cfg.region, cfg.regions)  # opens the others' on first use
            stack.push_async_callback(regions.close)
            replicator = Replicator(regions, metrics, consumer=worker.consumer)
            relay = Relay(regions, metrics, consumer=worker.consumer)
            side_tasks += [lambda _: replicator.run(stop), lambda _: relay.run(stop)]
            names = tuple(cfg.regions)
            side_tasks += [lambda _: _keep_region(store, stop, cfg.region or "", names)]
        return await _run_worker(
            worker, stop, embedded, stop_admin, side_tasks, finishing=[runner.run]
        )
    return EXIT_OK  # pragma: no cover - the stack always returns above


async def _start_admin(
    cfg: Config,
    url: str,
    metrics: Metrics,
    alerts: Alerts,
    stack: AsyncExitStack,
    *,
    liveness: Liveness | None = None,
    sender: HttpSender | None = None,
) -> Callable[[], Awaitable[None]]:
    """Serve the admin API when ``admin.listen`` is set; returns its (idempotent) stop."""
    if cfg.admin.listen is None:
        return _nothing
    from dispatcher.admin.app import Deps, create_app, serve  # noqa: PLC0415 - aiohttp.web

    # Its own small pool, so admin calls never wait behind the worker's blocking reads.
    admin_store = Store.open(
        url,
        prefix=cfg.redis.prefix,
        max_connections=16,
        keyring=Keyring.of(cfg.security.encryption_keys),
    )
    stack.push_async_callback(admin_store.close)
    client = Client(
        admin_store,
        max_payload_bytes=cfg.delivery.max_payload_bytes,
        dlq_retention_s=cfg.dlq.retention_s,
        payload_retention_s=min(cfg.jobs.payload_retention_s, cfg.jobs.retention_s),
        queues=cfg.delivery.queues,  # known to pause/resume even before a worker serves them
        dedup_window_s=cfg.events.dedup_window_s,  # POST /v1/events' default
        sender=sender,  # test sends: the worker's sender, its security.* policy and deadline
        security=cfg.security,
        timeout_s=cfg.delivery.timeout_s,
        # with [regions]: views and operations reach every region (docs/regions.md)
        region=cfg.region,
        regions=cfg.regions,
    )
    stack.push_async_callback(client.regions.close)  # its pools of the other regions' Redis
    if cfg.admin.token is None:
        log.warning(
            "admin.no_token",
            hint="set admin.token or admin.token_file (or DISPATCHER_ADMIN_TOKEN); until then "
            "every /v1 call answers 401",
        )
    try:
        runner = await serve(
            create_app(Deps(client, metrics, cfg.admin.token, alerts, liveness)), cfg.admin.listen
        )
    except OSError as exc:
        # Most often another daemon (or make run) already has the port: one line, not a trace.
        problem = (
            f"admin.listen: cannot listen on {cfg.admin.listen}: {exc.strerror or exc}; choose "
            "a free host:port (admin.listen, DISPATCHER_ADMIN_LISTEN) or stop what holds it"
        )
        raise ConfigError([problem]) from None
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


def _task_runner(  # noqa: PLR0917 - what the daemon hands over
    cfg: Config,
    store: Store,
    registry: dict[str, Task],
    metrics: Metrics,
    stop: asyncio.Event,
    worker: Worker,
) -> TaskRunner:
    """The task lanes (taskrunner.py), beside the worker: the same consumer name, the worker's
    live ``delivery.*`` (retries, timeouts), their own ``tasks.concurrency`` lanes."""
    client = Client(
        store, max_payload_bytes=cfg.delivery.max_payload_bytes, dlq_retention_s=cfg.dlq.retention_s
    )
    return TaskRunner(
        store,
        client,
        cfg,
        registry,
        metrics=metrics,
        stop=stop,
        consumer=worker.consumer,
        delivery=lambda: worker.cfg,
    )


def _sender(cfg: DeliveryConfig, policy: AddressPolicy, metrics: Metrics) -> HttpSender:
    """The HTTP client ``delivery.http_client`` names."""
    kind = AiohttpSender if cfg.http_client == "aiohttp" else Sender
    return kind(
        timeout_s=cfg.timeout_s,
        concurrency=cfg.concurrency,
        policy=policy,
        user_agent=USER_AGENT,
        metrics=metrics,
        proxy_url=cfg.proxy_url,  # delivery.proxy_url: every delivery through it (proxy.py)
    )


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
    side_tasks: Sequence[Callable[[Notifier], Coroutine[Any, Any, None]]] = (),
    *,
    finishing: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
) -> int:
    """Run the worker and, beside it, the watchdog and ``side_tasks`` (cancelled at the end),
    and ``finishing`` (the task runner), which end on ``stop`` by themselves, draining."""
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
        helpers = [group.create_task(_watchdog(notifier, worker, stop))]
        helpers += [group.create_task(task(notifier)) for task in side_tasks]
        finishers = [group.create_task(task()) for task in finishing]
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
        await asyncio.gather(*finishers)
        for helper in helpers:
            helper.cancel()
    return code


def _status(worker: Worker) -> str:
    return f"delivering from {', '.join(worker.queues)}; {worker.in_flight} in flight"


async def _watchdog(notifier: Notifier, worker: Worker, stop: asyncio.Event) -> None:
    """Pet systemd's watchdog only while every essential loop of the worker (the readers, the
    settler, the promoter, reclaim and control) has shown progress recently (liveness.py): a
    wedged loop gets the daemon restarted, one riding out a Redis outage does not. A stalled
    loop is logged once per episode, with or without systemd."""
    interval_s = notifier.watchdog_interval_s
    reported: frozenset[str] = frozenset()
    while not stop.is_set():
        stalled = worker.liveness.stalled()
        if stalled and frozenset(stalled) != reported:
            log.error("daemon.loop_stalled", loops=stalled, hint="no progress; see earlier errors")
        elif not stalled and reported:
            log.info("daemon.loops_recovered", loops=sorted(reported))
        reported = frozenset(stalled)
        if interval_s is not None:
            if stalled:
                notifier.status(f"stalled: {', '.join(sorted(stalled))}")
            else:
                notifier.watchdog()
                notifier.status(_status(worker))
        await loops.sleep_until_stop(stop, interval_s or LIVENESS_CHECK_S)


async def _alert_loop(alerts: Alerts, store: Store, metrics: Metrics, stop: asyncio.Event) -> None:
    """Measure the backlog every few seconds and judge it; ride out Redis outages like every
    other loop (the alerts keep their last state meanwhile)."""
    outage = loops.Outage("alerts", metrics)
    while not stop.is_set():
        backlog = await loops.attempt(lambda: measure(store), outage, stop)
        if backlog is loops.FAILED:
            continue
        alerts.observe(backlog)
        alerts.export(metrics)
        await loops.sleep_until_stop(stop, ALERT_INTERVAL_S)


class _Reloader:
    """SIGHUP: load the config again, apply the keys that can change live, name the rest."""

    def __init__(
        self, running: Config, load: Callable[[], Config], worker: Worker, alerts: Alerts
    ) -> None:
        self.running = running  # the config in effect: the start one, plus live changes
        self.load = load
        self.worker = worker
        self.alerts = alerts

    def reload(self, notifier: Notifier) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", "STATUS=reloading")
        try:
            new = self.load()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config.reload_refused", problem=problem)  # noqa: TRY400 - as at start
            log.warning("config.unchanged", hint="the daemon goes on with the config it had")
            notifier.ready(f"{_status(self.worker)}; config reload refused, see the log")
            return
        changed = changed_keys(self.running, new)
        live = [key for key in changed if key in LIVE_KEYS]
        self.running = with_keys(self.running, new, live)
        set_level(self.running.log.level)
        self.worker.cfg = self.running.delivery  # the worker reads it at each use
        self.alerts.cfg = self.running.alerts
        log.info("config.reloaded", applied=live)
        restart = [key for key in changed if key not in LIVE_KEYS]
        if restart:
            log.warning(
                "config.reload_needs_restart",
                keys=restart,
                hint="these keys keep their old values until the daemon restarts",
            )
        notifier.ready(_status(self.worker))


async def _reload_loop(
    reloader: _Reloader, requested: asyncio.Event, stop: asyncio.Event, notifier: Notifier
) -> None:
    while not stop.is_set():
        await requested.wait()
        requested.clear()
        if stop.is_set():
            return
        try:
            reloader.reload(notifier)
        except Exception:  # a bug here must not take the delivering daemon down with it
            log.exception("config.reload_failed")
            notifier.ready(_status(reloader.worker))


async def _check_server(
    store: Store, stop: asyncio.Event, embedded: EmbeddedRedis | None = None, *, shards: int = 1
) -> int | None:
    """Wait for Redis, refuse servers that could lose or evict accepted work, then record
    ``redis.shards`` (the layout every process and client reads).

    Returns None to go on, else the exit code: stopped while waiting, or the embedded Redis
    died (waiting for it would be forever).
    """

    async def survey() -> tuple[list[ServerFacts], list[str], tuple[Layout, int] | None]:
        facts = await server_facts(store)
        problems = [problem for server in facts for problem in _judge(server)]
        if problems:
            return facts, problems, None
        # record the layout only on a server we will run on
        return facts, problems, await store.adopt_layout(shards)

    outage = loops.Outage("startup", Metrics())
    while not stop.is_set():
        if embedded is not None and embedded.exited():
            log.error("redis.embedded_exited", during="startup")
            return EXIT_FAILED
        found = await loops.attempt(survey, outage, stop)
        if found is loops.FAILED:
            continue
        facts, problems, adopted = found
        if adopted is None:
            raise ConfigError(problems)
        layout, previous = adopted
        if previous != shards:
            log.warning("redis.shards_changed", before=previous, now=shards, served=layout.served)
        log.info(
            "redis.connected",
            version=facts[0].version_text,
            role=facts[0].role,
            mode=store.mode,
            shards=layout.shards,
            served_shards=layout.served,
            **({"nodes": [f.node for f in facts]} if store.cluster is not None else {}),
        )
        return None
    return EXIT_OK


async def _adopt_region(
    store: Store, stop: asyncio.Event, region: str, names: tuple[str, ...]
) -> int | None:
    """Record this Redis as ``region``'s (``layout.region``, docs/regions.md), riding out an
    outage like the server check. Another region's Redis (two regions' settings naming one
    Redis) is refused: exit 2, before the daemon serves anything. Returns None to go on."""

    async def adopt() -> Layout | RegionMismatchError:
        try:
            return await store.adopt_region(region, names)
        except RegionMismatchError as exc:
            return exc

    outage = loops.Outage("startup", Metrics())
    while not stop.is_set():
        found = await loops.attempt(adopt, outage, stop)
        if found is loops.FAILED:
            continue
        if isinstance(found, RegionMismatchError):
            log.error(
                "daemon.region_mismatch",
                region=region,
                redis_region=found.stored,
                problem=f"region: {found}",
                hint=f"regions.{region} (or redis.url) must name region {region}'s own Redis",
            )
            return EXIT_CONFIG
        log.info("region.adopted", region=found.region, regions=list(found.regions))
        return None
    return EXIT_OK


#: How often a daemon with regions checks that its Redis still records its region.
REGION_CHECK_S: Final = 5.0


async def _keep_region(
    store: Store, stop: asyncio.Event, region: str, names: tuple[str, ...]
) -> None:
    """Until ``stop``: record the region again in a Redis that lost it (restarted empty under
    this daemon), with a new incarnation, as at start (``_adopt_region``): without it a publish
    there would run as in a deployment without regions, queueing other regions' jobs here."""

    async def check() -> None:
        store.layout.read_at = float("-inf")
        if (await store.read_layout()).region is not None:
            return
        try:
            layout = await store.adopt_region(region, names)
        except RegionMismatchError as exc:  # another region's daemon recorded it first
            mismatch = exc
        else:
            log.warning("region.readopted", region=region, incarnation=layout.incarnation)
            return
        log.error("daemon.region_mismatch", region=region, redis_region=mismatch.stored)

    await loops.run_every(check, loops.Outage("region", Metrics()), stop, REGION_CHECK_S)


async def _refuse_regional_redis(store: Store, stop: asyncio.Event) -> int | None:
    """A daemon without ``[regions]`` refuses a Redis recorded as a region's: its publishes
    still fill outboxes for the other regions, which only a daemon with ``[regions]`` relays,
    and its webhook writes reach no other region. Exit 2; None to go on."""

    async def read() -> Layout:
        store.layout.read_at = float("-inf")  # the region is not cached by adopt_layout
        return await store.read_layout()

    outage = loops.Outage("startup", Metrics())
    while not stop.is_set():
        found = await loops.attempt(read, outage, stop)
        if found is loops.FAILED:
            continue
        if found.region is None:
            return None
        log.error(
            "daemon.region_missing",
            redis_region=found.region,
            problem=f"region: this Redis is region {found.region!r}'s of a deployment with "
            f"regions ({', '.join(found.regions)}), and this process has no [regions]",
            hint="set region and [regions] as the other regions' processes have them "
            "(docs/regions.md)",
        )
        return EXIT_CONFIG
    return EXIT_OK


async def _check_encryption(store: Store) -> None:
    """A wrong or missing ``security.encryption_keys`` stops the start (ConfigError: exit 2,
    one line naming the key id); without keys, a warning says what Redis holds in plain text."""
    problem = await encryption.startup(store)
    if problem is not None:
        raise ConfigError([problem])
    if store.keyring is None:
        log.warning(
            "encryption.off",
            stored_in_plain_text=list(encryption.PLAIN_WITHOUT_KEY),
            hint="set security.encryption_keys (openssl rand -base64 32) to encrypt them",
        )
    else:
        log.info("encryption.on", key_id=store.keyring.current_kid, keys=len(store.keyring.kids))


def _judge(facts: ServerFacts) -> list[str]:
    """The problems that forbid running on this server (a cluster's primaries each in turn);
    logs the warnings."""
    node = {"node": facts.node} if facts.node else {}
    on = f" on {facts.node}" if facts.node else ""
    if facts.version < MIN_REDIS:
        return [
            f"redis.url: Redis {facts.version_text}{on} is too old; dispatcher needs 7.0 or newer"
        ]
    if facts.maxmemory_policy != "noeviction":
        return [
            (
                f"redis.url: maxmemory-policy is {facts.maxmemory_policy}{on}; dispatcher needs "
                "noeviction, since any other policy may evict queued jobs"
            )
        ]
    if not facts.appendonly:
        log.warning(
            "redis.persistence_off",
            hint="appendonly no: a Redis restart loses every queued job",
            **node,
        )
    if facts.maxmemory == 0:
        log.warning(
            "redis.maxmemory_unset",
            hint="maxmemory 0: Redis may grow until the host runs out of memory",
            **node,
        )
    return []

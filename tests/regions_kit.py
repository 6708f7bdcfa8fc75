"""Three regions on loopback for the multi-region tests: a redis-server per region (a, b, c;
b's with an append-only file, so it can be stopped and restarted whole), each behind a
`DelayProxy`, the distance between regions.

A region reaches its own Redis directly and the others' through proxies, as a daemon in one
data center reaches another's: ``env_for("a")`` is a ``dispatcher run`` of region a,
``client_in("a")`` a Client there. Each link (who goes, to which region) has a proxy of its own,
so its byte counters show what that one party sent across: ``carried("b", via="a-client")`` is
what a Client of region a exchanged with b's Redis, its daemons' replication traffic aside.
``partition``/``heal`` cut and restore every link to a region.

The proxies run on an event loop of their own, in a thread, so one kit serves every test of a
module (module-scoped, synchronous) whatever loop each test runs in.

    with Regions3(tmp_path) as kit:
        daemon = Daemon(kit.env_for("b"), tmp_path / "b.log").start()
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Self, TypeVar

from dispatcher import Client
from tests.delay_proxy import DelayProxy
from tests.helpers import RedisServer, daemon_env, free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping
    from pathlib import Path

NAMES = ("a", "b", "c")
DELAY_S = 0.04  # each way: a 80 ms round trip between regions
PREFIX = "regions"

T = TypeVar("T")


class Regions3:
    """Start with ``start()`` (or ``with``), stop with ``stop()``; synchronous."""

    def __init__(self, directory: Path, *, delay_s: float = DELAY_S, prefix: str = PREFIX) -> None:
        self.directory = directory
        self.delay_s = delay_s
        self.prefix = prefix
        self.servers = {
            name: RedisServer(directory / f"redis-{name}", appendonly=name == "b") for name in NAMES
        }
        self.links: dict[tuple[str, str], DelayProxy] = {}  # (who, to region) -> its proxy
        self._cut: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        """Start the three servers and the proxies' loop (stopping what started if one fails)."""
        try:
            for server in self.servers.values():
                server.start()
        except BaseException:
            self.stop()
            raise
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="regions-proxies", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            for proxy in self.links.values():
                self._run(proxy.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
            self._loop = self._thread = None
        for server in self.servers.values():
            server.stop()

    def _run(self, coro: Coroutine[object, object, T]) -> T:
        assert self._loop is not None, "start() first"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    # --- addresses -------------------------------------------------------------------------------

    def url(self, region: str) -> str:
        """``region``'s Redis, directly (as its own daemons and producers reach it)."""
        return self.servers[region].url

    def link(self, region: str, via: str) -> DelayProxy:
        """The proxy through which ``via`` (a region's daemons, or any other name) reaches
        ``region``'s Redis; made on first use."""
        proxy = self.links.get((via, region))
        if proxy is None:
            proxy = self._run(DelayProxy(self.servers[region].port, self.delay_s).start())
            if region in self._cut:
                self._run(_call(proxy.partition))
            self.links[via, region] = proxy
        return proxy

    def remote_url(self, region: str, via: str) -> str:
        """``region``'s Redis as ``via`` reaches it from afar."""
        return self.link(region, via).url

    def urls_from(self, home: str, via: str | None = None) -> dict[str, str]:
        """``[regions]`` as seen from ``home``: its own Redis direct, the others through the
        links of ``via`` (``home`` by default: its daemons')."""
        return {n: self.url(n) if n == home else self.remote_url(n, via or home) for n in NAMES}

    def env_for(
        self, region: str, settings: Mapping[str, str] | None = None, *, metrics: bool = False
    ) -> dict[str, str]:
        """A ``dispatcher run`` environment of ``region`` with ``settings`` (``DISPATCHER_<KEY>``;
        ``DISPATCHER_REGION`` and one ``DISPATCHER_REGIONS_<NAME>`` per region; private targets
        allowed); with ``metrics`` it serves the admin API, /metrics included, on a free port
        (``admin_port(env)``)."""
        env = daemon_env(self.url(region), self.prefix, **(settings or {}))
        env["DISPATCHER_REGION"] = region
        for name, url in self.urls_from(region).items():
            env[f"DISPATCHER_REGIONS_{name.upper()}"] = url
        if metrics:
            env["DISPATCHER_ADMIN_LISTEN"] = f"127.0.0.1:{free_port()}"
        return env

    def client_in(self, region: str, via: str | None = None) -> Client:
        """A Client of ``region``: its own Redis direct, the others' through the links of
        ``via`` (``<region>-client`` by default, links of its own, apart from the daemons')."""
        urls = self.urls_from(region, via or f"{region}-client")
        return Client.from_url(self.url(region), prefix=self.prefix, region=region, regions=urls)

    # --- the links -------------------------------------------------------------------------------

    def carried(self, region: str, via: str | None = None) -> int:
        """Bytes carried so far, both ways, to and from ``region``'s Redis: over ``via``'s link,
        or over every link to it."""
        return sum(
            p.carried for (who, to), p in self.links.items() if to == region and via in {None, who}
        )

    def partition(self, region: str) -> None:
        """Cut every link to ``region``'s Redis (those made later too), until `heal`."""
        self._cut.add(region)
        for (_who, to), proxy in self.links.items():
            if to == region:
                self._run(_call(proxy.partition))

    def heal(self, region: str) -> None:
        self._cut.discard(region)
        for (_who, to), proxy in self.links.items():
            if to == region:
                self._run(_call(proxy.heal))


async def _call(action: Callable[[], None]) -> None:
    """``action`` run on the proxies' loop (their state belongs to that thread)."""
    action()


def admin_port(env: dict[str, str]) -> int:
    """The admin port of a region's environment made with ``metrics=True``."""
    return int(env["DISPATCHER_ADMIN_LISTEN"].rsplit(":", 1)[1])

"""The deployment's regions as one process sees them: its own Redis and the others'.

docs/regions.md says what regions are for and what they promise.

A region is a Redis deployment (standalone, Sentinel or Cluster) with its own daemons. This
process's Redis is its home region, ``layout.region`` (``Store.adopt_region``); the others are
reached through ``[regions]``'s URLs, each opened on first use with a small pool of its own.
Without ``[regions]`` there is one region, unnamed: ``Regions.single(store)``, and every lookup
answers the home store, as before regions.

A job id names its region (``ids.region_of``), a webhook its own (``Webhook.region``); a name
that is None, or the home region's, is the home store. Another region's Redis failing surfaces
as ``RegionUnavailable`` naming it (``reaching``), never as this region's ``redis_unavailable``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import redis.exceptions as rex

from dispatcher.errors import InvalidField, RedisUnavailable, RegionUnavailable
from dispatcher.ids import region_of
from dispatcher.queue.connection import is_unavailable
from dispatcher.queue.store import Store

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

#: Connections in the pool of each other region's Redis (views, operations, the relay).
REMOTE_MAX_CONNECTIONS = 8


class Regions:
    def __init__(
        self,
        home: Store,
        name: str | None = None,
        urls: Mapping[str, str] | None = None,
        *,
        max_connections: int = REMOTE_MAX_CONNECTIONS,
    ) -> None:
        self.home = home
        self._name = name
        self.urls = dict(urls or {})  # every region's URL, the home region's included
        self._max_connections = max_connections
        self._stores: dict[str, Store] = {}

    @classmethod
    def single(cls, store: Store) -> Regions:
        """No ``[regions]`` here: every lookup is ``store`` (its layout may still name a region,
        when a Client opened on one region's Redis: other regions are ``RegionUnavailable``)."""
        return cls(store)

    @property
    def name(self) -> str | None:
        """The home region: as configured, else as the home Redis's layout records it (read by
        ``read_layout``), else None (no regions)."""
        return self._name or self.home.layout.region

    @property
    def configured(self) -> str | None:
        """The home region as given to this process (None: learnt from the layout, if any)."""
        return self._name

    def check(self) -> None:
        """``InvalidField`` (``region``) when the given home region is not the one the home Redis
        records (its layout as last read): two regions' settings naming one Redis, which the
        daemon refuses at start (``RegionMismatchError``); a Client would read and change the
        wrong region's jobs."""
        stored = self.home.layout.region
        if self._name is not None and stored is not None and stored != self._name:
            raise InvalidField(
                "region",
                f"is {self._name!r}, but the Redis at redis_url is region {stored!r}'s (its "
                "layout says so): check region and regions",
            )

    @property
    def enabled(self) -> bool:
        return self.name is not None

    @property
    def names(self) -> tuple[str, ...]:
        """Every region, home first, then the others by name."""
        home = self.name
        if home is None:
            return ()
        known = set(self.urls) | set(self.home.layout.regions)
        return (home, *sorted(known - {home}))

    @property
    def others(self) -> tuple[str, ...]:
        return self.names[1:]

    def is_home(self, region: str | None) -> bool:
        return region is None or region == self.name

    def store(self, region: str | None) -> Store:
        """The store (shard 0) of ``region``'s Redis; None or the home region: the home store.
        ``RegionUnavailable`` when this process knows no URL for it."""
        if self.is_home(region):
            return self.home
        assert region is not None  # noqa: S101 - is_home(None) above
        found = self._stores.get(region)
        if found is None:
            url = self.urls.get(region)
            if url is None:
                raise RegionUnavailable(region, "this process knows no URL for it ([regions])")
            found = Store.open(
                url,
                prefix=self.home.keys.prefix,
                max_connections=self._max_connections,
                keyring=self.home.keyring,
            )
            self._stores[region] = found
        return found

    async def checked(self, region: str) -> Store:
        """``region``'s store once its Redis's layout (read again when stale) records no other
        region: ``RegionUnavailable`` when it is another region's, as when a ``[regions]`` URL
        reaches this region's own Redis (or a third one's) under another address, where the
        relay would queue ``region``'s jobs for the wrong daemons."""
        with reaching(region):
            store = self.store(region)
            recorded = (await store.read_layout()).region
        if recorded is not None and recorded != region:
            raise RegionUnavailable(
                region, f"the Redis at its [regions] URL is region {recorded!r}'s (its layout)"
            )
        return store

    def of_job(self, job_id: str) -> Store:
        """The store of the shard, in the region, that holds the job with this id."""
        return self.store(region_of(job_id)).of_job(job_id)

    def of_webhook(self, webhook_id: str, region: str | None) -> Store:
        """The store of the shard, in ``region`` (the webhook's), that holds its jobs."""
        return self.store(region).of_webhook(webhook_id)

    async def close(self) -> None:
        """Close the other regions' pools (the home store is its opener's to close)."""
        stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            await store.close()


@contextmanager
def reaching(region: str | None) -> Iterator[None]:
    """Around a call to another region's Redis: its failure to answer becomes
    ``RegionUnavailable(region)``; None (the home region) changes nothing."""
    if region is None:
        yield
        return
    try:
        yield
    except RedisUnavailable as exc:
        raise RegionUnavailable(region) from exc
    except (rex.RedisError, OSError) as exc:
        if isinstance(exc, rex.RedisError) and not is_unavailable(exc):
            raise
        raise RegionUnavailable(region) from exc

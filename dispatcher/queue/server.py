"""Facts about the Redis servers that decide whether dispatcher may run on them.

One server, or the master a sentinel names, gives one set of facts. A Redis Cluster gives one
per primary: today every key lives on the primary that owns dispatcher's hash slot, but a slot
can move to any of them (resharding, failover), so every primary must keep accepted work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio.cluster import RedisCluster

if TYPE_CHECKING:
    from dispatcher.queue.store import Store


@dataclass(frozen=True, slots=True)
class ServerFacts:
    version: tuple[int, ...]
    maxmemory_policy: str
    maxmemory: int
    appendonly: bool
    role: str
    node: str | None = None  # host:port of a cluster node; None for a single server

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


async def server_facts(store: Store) -> list[ServerFacts]:
    """The facts of the server, or of every primary of a cluster (dispatcher's own first)."""
    if store.cluster is None:
        info = await store.redis.info()
        policy = info.get("maxmemory_policy")
        if policy is None:  # older servers keep it out of INFO
            policy = (await store.redis.config_get("maxmemory-policy")).get("maxmemory-policy", "")
        return [_facts(info, policy)]
    cluster = store.cluster
    home = (await cluster.home_node()).name
    infos = cast(
        "dict[str, dict[str, Any]]", await cluster.info(target_nodes=RedisCluster.PRIMARIES)
    )
    policies: dict[str, dict[str, str]] = {}
    if any("maxmemory_policy" not in info for info in infos.values()):
        policies = cast(
            "dict[str, dict[str, str]]",
            await cluster.config_get("maxmemory-policy", target_nodes=RedisCluster.PRIMARIES),
        )
    facts = [
        _facts(
            info,
            info.get("maxmemory_policy", policies.get(name, {}).get("maxmemory-policy", "")),
            node=name,
        )
        for name, info in infos.items()
    ]
    return sorted(facts, key=lambda f: (f.node != home, f.node or ""))


def _facts(info: dict[str, Any], policy: object, node: str | None = None) -> ServerFacts:
    version = tuple(int(p) for p in str(info.get("redis_version", "0")).split(".") if p.isdigit())
    return ServerFacts(
        version=version,
        maxmemory_policy=str(policy),
        maxmemory=int(info.get("maxmemory", 0)),
        appendonly=bool(int(info.get("aof_enabled", 0))),
        role=str(info.get("role", "master")),
        node=node,
    )

"""Facts about the Redis server that decide whether dispatcher may run on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dispatcher.queue.store import Store


@dataclass(frozen=True, slots=True)
class ServerFacts:
    version: tuple[int, ...]
    maxmemory_policy: str
    maxmemory: int
    appendonly: bool
    role: str

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


async def server_facts(store: Store) -> ServerFacts:
    info = await store.redis.info()
    policy = info.get("maxmemory_policy")
    if policy is None:  # older servers keep it out of INFO
        policy = (await store.redis.config_get("maxmemory-policy")).get("maxmemory-policy", "")
    version = tuple(int(p) for p in str(info.get("redis_version", "0")).split(".") if p.isdigit())
    return ServerFacts(
        version=version,
        maxmemory_policy=str(policy),
        maxmemory=int(info.get("maxmemory", 0)),
        appendonly=bool(int(info.get("aof_enabled", 0))),
        role=str(info.get("role", "master")),
    )

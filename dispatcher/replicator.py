"""SEAM STUB (issue 22, part E1 replaces it): applies other regions' webhook writes here."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from dispatcher.metrics import Metrics
    from dispatcher.queue.regions import Regions


class Replicator:
    def __init__(self, regions: Regions, metrics: Metrics, *, consumer: str) -> None:
        self.regions, self.metrics, self.consumer = regions, metrics, consumer

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set."""
        await stop.wait()

"""The fault suite's soak runs only under FAULTS_SOAK=1; its table is printed by
tests/faults/summary.py."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

SOAK = os.environ.get("FAULTS_SOAK") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The soak runs only under ``make soak``; elsewhere it is deselected (not skipped)."""
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        (dropped if (item.get_closest_marker("soak") is not None) != SOAK else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


"""Prints the fault suite's table (one row per scenario) at the end of the session.

``make test-faults`` (FAULTS_FULL=1) also writes it to tests/faults/results/latest.{md,json},
the table the README's Reliability section shows.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from tests.faults.harness import FULL
from tests.faults.table import ROWS, figures, table

if TYPE_CHECKING:
    import pytest
    from _pytest.terminal import TerminalReporter

RESULTS = Path(__file__).parent / "results"
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


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if not ROWS:
        return
    text = table(ROWS)
    if figures(ROWS):
        text += "\n" + figures(ROWS)
    terminalreporter.write_sep("=", "fault suite: nothing accepted may be lost")
    terminalreporter.write(text)
    if FULL:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "latest.md").write_text(text)
        rows = [dataclasses.asdict(r) for r in ROWS]
        (RESULTS / "latest.json").write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))

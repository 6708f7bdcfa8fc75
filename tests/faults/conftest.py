"""Prints the fault suite's table (one row per scenario) at the end of the session.

``make test-faults`` (FAULTS_FULL=1) also writes it to tests/faults/results/latest.{md,json},
the table the README's Reliability section shows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from tests.faults.harness import FULL
from tests.faults.table import ROWS, table

if TYPE_CHECKING:
    from _pytest.terminal import TerminalReporter

RESULTS = Path(__file__).parent / "results"


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if not ROWS:
        return
    text = table(ROWS)
    terminalreporter.write_sep("=", "fault suite: nothing accepted may be lost")
    terminalreporter.write(text)
    if FULL:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "latest.md").write_text(text)
        rows = [dataclasses.asdict(r) for r in ROWS]
        (RESULTS / "latest.json").write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))

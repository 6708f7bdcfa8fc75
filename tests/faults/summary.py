"""Prints the fault suite's table (one row per scenario) at the end of the session.

``make test-faults`` (FAULTS_FULL=1) also writes it to tests/faults/results/latest.{md,json},
the table the README's Reliability section shows. Under pytest-xdist (``make test`` runs
``-n 2``) each worker hands its rows to the controller, which prints them all.

Registered by tests/conftest.py (``pytest_plugins``): the controller of an xdist run collects
no tests, so it never loads tests/faults/conftest.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from tests.faults.harness import FULL, Row
from tests.faults.table import ROWS, figures, table

if TYPE_CHECKING:
    from _pytest.terminal import TerminalReporter

RESULTS = Path(__file__).parent / "results"
_WORKER_ROWS = "fault_rows"  # the key of an xdist worker's output that carries its rows


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On an xdist worker: its rows, as JSON, for the controller."""
    output: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if output is not None:
        output[_WORKER_ROWS] = orjson.dumps([dataclasses.asdict(r) for r in ROWS]).decode()


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown when xdist is not installed
def pytest_testnodedown(node: Any, error: object) -> None:
    """On the xdist controller: the rows of a worker that finished."""
    output: dict[str, Any] = getattr(node, "workeroutput", None) or {}
    ROWS.extend(Row(**fields) for fields in orjson.loads(output.get(_WORKER_ROWS, "[]")))


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if not ROWS or hasattr(terminalreporter.config, "workerinput"):
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

"""The rows of the fault suite's table, kept as scenarios finish."""

from __future__ import annotations

from tests.faults.harness import PHASES, Row

ROWS: list[Row] = []


def keep(row: Row) -> None:
    """Add a scenario's row to the table and fail the scenario on any problem."""
    ROWS.append(row)
    problems = row.problems()
    assert not problems, f"{row.scenario}: {', '.join(problems)}; {row.notes[:10]}"


def table(rows: list[Row]) -> str:
    head = (
        "scenario | accepted | indet. | refused | delivered | dup | DLQ (reason) | lost | "
        "unexpected | stuck | p50/p99 ms before | during | after | recover s"
    )
    lines = [head, " | ".join("---" for _ in head.split(" | "))]
    for r in rows:
        dlq = ", ".join(f"{n} {reason}" for reason, n in sorted(r.dlq.items())) or "0"
        latency = [_pair(r.latency_ms.get(p)) for p in PHASES]
        recover = "-" if r.recover_s is None else f"{r.recover_s:g}"
        cells = [r.scenario, r.accepted, r.indeterminate, r.refused, r.delivered, r.duplicated]
        cells += [dlq, r.lost, r.unexpected, r.stuck, *latency, recover]
        lines.append(" | ".join(str(c) for c in cells))
    return "\n".join(lines) + "\n"


def figures(rows: list[Row]) -> str:
    """What scenarios measured besides the accounting, one line per scenario that did."""
    return "".join(
        f"{r.scenario}: " + ", ".join(f"{k} {v}" for k, v in r.figures.items()) + "\n"
        for r in rows
        if r.figures
    )


def _pair(value: tuple[float, float] | None) -> str:
    return "-" if value is None else f"{value[0]:g} / {value[1]:g}"

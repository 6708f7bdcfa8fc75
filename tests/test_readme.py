"""The README, run as printed: every recipe a newcomer types, against a ``make run`` daemon.

Each fenced ``sh``, ``console`` or ``python`` block carries a marker just above it:

- ``<!-- readme-test: run -->``: a shell block, run by bash (``set -euo pipefail``) in one
  working directory; variables and functions carry over to the next run block, as in one
  terminal. Every ``curl`` in it ends with its expected status as a comment (``# 201 ...``), on
  the command's last line, with the answer's top-level fields it must show (``"matched": 0``);
  curl is wrapped to record each call's README line, status and answer.
- ``<!-- readme-test: file PATH -->``: the repository's file PATH, shown whole (the receiver,
  the tour); checked equal to it, and written to PATH before anything runs.
- ``<!-- readme-test: transcript -->``: ``$ command`` lines, each followed by its output.
- ``<!-- readme-test: skip REASON -->``: not run (it installs packages, needs systemd, ...).

A block without a marker fails, so a new recipe is either run or skipped for a stated reason.
The daemon is ``scripts/run-dev`` (what ``make run`` runs) in a fresh directory with ``.venv``
and ``etc`` linked in. The one change to the README's text: the admin port 8080 and the
receiver's port 9000 become free ports (in URLs and in the receiver's bind address).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest

from tests.helpers import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MARKER = re.compile(r"<!--\s*readme-test:\s*(\w+)\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
CHECKED_LANGUAGES = {"sh", "bash", "console", "python"}
STATUS_NOTE = re.compile(r"#\s*(\d{3})\b(.*)")
FIELD_NOTE = re.compile(r'"(\w+)":\s*(-?\d+|true|false|null|"[^"]*")')
BLOCK_TIMEOUT_S = 60

# Sourced by bash before each run block (BASH_ENV), so the block's lines keep their README
# line numbers: curl records "line status" for every call, then prints the answer as usual.
PRELUDE = r"""
unset BASH_ENV
set -euo pipefail
set -a
if [ -f "$README_STATE" ]; then . "$README_STATE"; fi
curl() {
    local body code rc=0
    body=$(mktemp -p "$README_BODIES")
    code=$(command curl -o "$body" -w '%{http_code}' "$@") || rc=$?
    if [ "$rc" = 0 ]; then echo "${BASH_LINENO[0]} $code $body" >>"$README_STATUSES"; fi
    cat "$body"
    return "$rc"
}
"""
EPILOGUE = """
export -p >"$README_STATE"
for name in $(compgen -A function); do
    if [ "$name" != curl ]; then declare -f "$name" >>"$README_STATE"; fi
done
"""


@dataclass(frozen=True)
class Block:
    kind: str  # run, file, transcript, skip
    arg: str
    language: str
    first_line: int  # README line number of the block's first code line
    lines: tuple[str, ...]


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of the README with their markers; fails on a checked block without one."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        indent, language = fence.group(1), fence.group(2)
        start = index + 1
        end = start
        while not lines[end].strip().startswith("```"):
            end += 1
        body = tuple(line.removeprefix(indent) for line in lines[start:end])
        index = end + 1
        if language not in CHECKED_LANGUAGES:
            continue
        before = next((line for line in reversed(lines[: start - 1]) if line.strip()), "")
        marker = MARKER.search(before)
        assert marker, f"README line {start}: a {language} block without a readme-test marker"
        kind, arg = marker.group(1), marker.group(2)
        assert kind in {"run", "file", "transcript", "skip"}, f"README line {start}: {kind}?"
        assert kind != "skip" or arg, f"README line {start}: a skip marker must say why"
        blocks.append(Block(kind, arg, language, start + 1, body))
    return blocks


@dataclass(frozen=True)
class Expected:
    first_line: int
    status: int | None
    fields: dict[str, object]  # top-level fields of the JSON answer, from `# 202 "matched": 0`


def curl_commands(block: Block) -> list[tuple[int, Expected]]:
    """(last line, what it must answer) of each curl command of a run block.

    A command runs on while a quote is open or a line ends with a backslash; its status is
    the ``# NNN`` comment on its last line, and ``"key": value`` after it is a field the answer
    must have.
    """
    commands = []
    open_at: int | None = None
    quote = ""
    for offset, line in enumerate(block.lines):
        number = block.first_line + offset
        code_start_quoted = bool(quote)
        quote, comment = _scan(line, quote)
        code = line[: len(line) - len(comment)] if comment is not None else line
        if open_at is None and not code_start_quoted and re.search(r"(^|[\s($|])curl\s", code):
            open_at = number
        if open_at is None or quote or code.rstrip().endswith("\\"):
            continue
        note = STATUS_NOTE.match(comment or "")
        fields = {
            key: orjson.loads(value)
            for key, value in FIELD_NOTE.findall(note.group(2) if note else "")
        }
        commands.append((number, Expected(open_at, int(note.group(1)) if note else None, fields)))
        open_at = None
    return commands


def _scan(line: str, quote: str) -> tuple[str, str | None]:
    """The quote still open at the end of ``line`` and its comment (None when it has none)."""
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return quote, line[index:]
    return quote, None


@dataclass
class Session:
    """One newcomer's working directory, daemon and shell state."""

    cwd: Path
    env: dict[str, str]
    admin_port: int
    receiver_port: int
    daemon: subprocess.Popen[bytes]
    daemon_log: Path
    groups: list[int]

    def localize(self, text: str) -> str:
        ports = (("127.0.0.1:8080", self.admin_port), ("127.0.0.1:9000", self.receiver_port))
        for host, port in ports:
            text = text.replace(host, f"127.0.0.1:{port}")
        return text.replace('("127.0.0.1", 9000)', f'("127.0.0.1", {self.receiver_port})')

    def run_block(self, block: Block) -> str:
        """Run a shell block as printed (ports aside); its output, failing on a non-zero exit."""
        script = self.cwd / f".block-{block.first_line}.sh"
        padding = "\n" * (block.first_line - 1)  # so bash's line numbers are the README's
        script.write_text(padding + self.localize("\n".join(block.lines)) + EPILOGUE)
        out = self.cwd / f".block-{block.first_line}.out"
        with out.open("wb") as sink:
            # Files, not pipes: a block may leave a process running (the receiver), which
            # would hold a pipe open.
            process = subprocess.Popen(
                ["bash", str(script)],
                cwd=self.cwd,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.groups.append(process.pid)
            code = process.wait(BLOCK_TIMEOUT_S)
        output = out.read_text(errors="replace")
        where = f"README block at line {block.first_line}"
        assert code == 0, f"{where} exited {code}:\n{output[-3000:]}"
        return output

    def run_transcript(self, block: Block) -> None:
        """Each ``$ command`` prints what the README shows under it (``$?`` carries over)."""
        commands: list[tuple[str, list[str]]] = []
        for line in block.lines:
            if line.startswith("$ "):
                commands.append((line[2:], []))
            else:
                commands[-1][1].append(line)
        script = "".join(
            f'{command} 2>&1; __rc=$?; echo "@@end@@"; (exit $__rc)\n' for command, _ in commands
        )
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=self.cwd,
            env={k: v for k, v in self.env.items() if k != "BASH_ENV"},
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            check=False,
        )
        outputs = done.stdout.split("@@end@@\n")
        for (command, expected), got in zip(commands, outputs, strict=False):
            assert got.rstrip("\n").splitlines() == expected, (
                f"README line {block.first_line}: `{command}` printed {got!r}, "
                f"the README shows {expected!r}"
            )

    def stop(self) -> None:
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.daemon.pid, signal.SIGKILL)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    cwd = tmp_path / "newcomer"
    cwd.mkdir()
    (cwd / ".venv").symlink_to(REPO / ".venv")
    (cwd / "etc").symlink_to(REPO / "etc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.pop("REDIS_URL", None)
    admin_port, receiver_port = free_port(), free_port()
    daemon_log = tmp_path / "daemon.log"
    with daemon_log.open("wb") as sink:
        daemon = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "run-dev")],
            cwd=cwd,
            env={
                **env,
                "DISPATCHER_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
                "DISPATCHER_LOG_FORMAT": "json",
            },
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (tmp_path / "bash_env.sh").write_text(PRELUDE)
    (tmp_path / "bodies").mkdir()
    env |= {
        "BASH_ENV": str(tmp_path / "bash_env.sh"),
        "README_STATE": str(tmp_path / "shell_state.sh"),
        "README_STATUSES": str(tmp_path / "statuses.txt"),
        "README_BODIES": str(tmp_path / "bodies"),
    }
    session = Session(cwd, env, admin_port, receiver_port, daemon, daemon_log, [])
    try:
        _wait_for(lambda: '"admin.listening"' in daemon_log.read_text(), daemon, daemon_log)
        yield session
    finally:
        session.stop()


def _wait_for(check: object, daemon: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while not check():  # type: ignore[operator]
        assert daemon.poll() is None, f"the daemon exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the daemon did not start:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


def test_every_readme_recipe_works_as_printed(session: Session) -> None:
    """Each shell block of the README runs as printed, each curl answers the status written
    beside it, and the Python tour's delivery reaches the README's receiver, signed."""
    blocks = readme_blocks(README.read_text())
    for block in blocks:
        if block.kind == "file":
            text = "\n".join(block.lines) + "\n"
            assert (REPO / block.arg).read_text() == text, f"{block.arg} differs from the README"
            (session.cwd / block.arg).parent.mkdir(parents=True, exist_ok=True)
            (session.cwd / block.arg).write_text(session.localize(text))

    outputs: dict[int, str] = {}
    expected: dict[int, Expected] = {}  # by the command's last line
    for block in blocks:
        if block.kind == "run":
            for last, wanted in curl_commands(block):
                assert wanted.status is not None, f"README line {last}: curl without # status"
                expected[last] = wanted
            outputs[block.first_line] = session.run_block(block)
        elif block.kind == "transcript":
            session.run_transcript(block)

    statuses = Path(session.env["README_STATUSES"]).read_text().split("\n")
    called: set[int] = set()
    for record in filter(None, statuses):
        line, status, body = record.split(" ", 2)
        command = next(
            (last for last, wanted in expected.items() if wanted.first_line <= int(line) <= last),
            None,
        )
        assert command is not None, f"a curl at README line {line} that the test did not find"
        wanted = expected[command]
        where = f"README line {wanted.first_line}"
        assert int(status) == wanted.status, f"{where}: answered {status}, not {wanted.status}"
        if wanted.fields:
            answer = orjson.loads(Path(body).read_bytes())
            shown = {key: answer.get(key) for key in wanted.fields}
            assert shown == wanted.fields, f"{where}: answered {shown}, not {wanted.fields}"
        called.add(command)
    assert called == set(expected), f"curl commands never run: {sorted(set(expected) - called)}"

    # Read again: the receiver, started by a block, goes on writing to that block's output.
    everything = "\n".join(
        (session.cwd / f".block-{line}.out").read_text(errors="replace") for line in outputs
    )
    assert "delivered" in everything, "the tour's job was not delivered"
    assert " valid " in everything, "the receiver saw no delivery with a valid signature"
    assert "INVALID" not in everything, "the receiver saw a delivery with a bad signature"
    events = [
        orjson.loads(line)
        for line in session.daemon_log.read_text().splitlines()
        if line.startswith("{")
    ]
    started = next(event for event in events if event["event"] == "redis.embedded_started")
    assert started["url"] == f"unix://{session.cwd.resolve()}/var/redis.sock"
    assert not [e for e in events if e.get("level") in {"error", "critical"}]

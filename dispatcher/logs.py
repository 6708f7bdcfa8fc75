"""Logging: structlog's fast path, one line per event, on stderr.

Logs go to **stderr** (journald reads it like stdout), so stdout stays free for command output
such as ``dispatcher check-config``'s JSON. Off a terminal each line is one JSON object written
as bytes (orjson, `BytesLoggerFactory`); on a terminal it is structlog's console format.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, ClassVar, Final

import orjson
import structlog

LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS: Final = ("auto", "json", "console")
# Non-string dict keys (e.g. {200: 3}) would make orjson raise inside a log call.
_ORJSON_OPTIONS: Final = orjson.OPT_NON_STR_KEYS

_Output = tuple[list[structlog.typing.Processor], Callable[..., Any]]


class LevelledLogger(structlog.BoundLoggerBase):
    """structlog's filtering logger, with a level that `set_level` changes while the process
    runs: loggers are cached on first use, so the level lives on the class, not in them."""

    min_level: ClassVar[int] = logging.INFO

    def debug(self, event: str, **kw: Any) -> Any:
        if self.min_level > logging.DEBUG:
            return None
        return self._proxy_to_logger("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> Any:
        if self.min_level > logging.INFO:
            return None
        return self._proxy_to_logger("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> Any:
        if self.min_level > logging.WARNING:
            return None
        return self._proxy_to_logger("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> Any:
        return self._proxy_to_logger("error", event, **kw)

    def exception(self, event: str, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        return self._proxy_to_logger("error", event, **kw)


def debug_enabled() -> bool:
    """Whether debug lines are logged now: a hot path skips building what it would log."""
    return LevelledLogger.min_level <= logging.DEBUG


def set_level(level: str) -> None:
    """Change the lowest level logged, for every logger, already used or not (a reload)."""
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    LevelledLogger.min_level = LEVELS[level.lower()]


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog for the process; calling it again replaces the configuration.

    ``fmt`` is ``json``, ``console``, or ``auto`` (console when stderr is a TTY, else JSON).
    Loggers are cached on first use, so a logger already used keeps the format it was first
    used with: call this once, early. Its level follows `set_level`.
    """
    level, fmt = level.lower(), fmt.lower()
    set_level(level)
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    processors, factory = _console_output() if console else _json_output()
    structlog.configure(
        processors=[*shared, *processors],
        wrapper_class=LevelledLogger,
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def _console_output() -> _Output:
    # Tracebacks without the frames' local variables (structlog's rich default shows them):
    # a delivery's frame holds its signing secrets and header values.
    tracebacks: Any = structlog.dev.plain_traceback
    if isinstance(structlog.dev.default_exception_formatter, structlog.dev.RichTracebackFormatter):
        tracebacks = structlog.dev.RichTracebackFormatter(show_locals=False)
    render = structlog.dev.ConsoleRenderer(exception_formatter=tracebacks)
    return [render], structlog.PrintLoggerFactory(file=sys.stderr)


def _json_output() -> _Output:
    processors: list[structlog.typing.Processor] = [structlog.processors.format_exc_info]
    render = structlog.processors.JSONRenderer
    buffer = getattr(sys.stderr, "buffer", None)
    if buffer is None:  # a text-only stderr (some test captures): same JSON, as str
        processors.append(render(serializer=_dumps_str, option=_ORJSON_OPTIONS))
        return processors, structlog.PrintLoggerFactory(file=sys.stderr)
    processors.append(render(serializer=orjson.dumps, option=_ORJSON_OPTIONS))
    return processors, structlog.BytesLoggerFactory(file=buffer)


def _dumps_str(obj: Any, **kwargs: Any) -> str:
    return orjson.dumps(obj, **kwargs).decode()

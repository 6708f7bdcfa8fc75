"""Configuration: a TOML file, overridden key by key by ``DISPATCHER_*`` environment variables.

``load(path, environ)`` returns a frozen `Config` or raises `ConfigError` listing every problem,
one line each, naming the key and where the bad value came from. The sections and keys are the
dataclass fields below: adding a field adds its TOML key and its environment variable
(``DISPATCHER_<SECTION>_<KEY>``; top-level keys ``DISPATCHER_<KEY>``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from dispatcher.errors import ConfigError
from dispatcher.queue import urls
from dispatcher.queue.keys import MAX_SHARDS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ENV_PREFIX: Final = "DISPATCHER_"
CONFIG_ENV: Final = "DISPATCHER_CONFIG"  # the config path; read by the CLI, never by load()
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("auto", "json", "console")
REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
MAX_DURATION_S: Final = 10 * 365 * 86400.0  # ten years: keeps every `*_s` far from overflow
MAX_CONCURRENCY: Final = 100_000
DEFAULT_EMBEDDED_MAXMEMORY: Final = 1024**3  # "1gb": see redis.embedded_maxmemory
MIN_MAXMEMORY: Final = 1024**2  # below 1mb an empty Redis is already full
MAX_MAXMEMORY: Final = 2**63 - 1  # Redis keeps it in a signed 64-bit integer


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str | None = None  # None: run an embedded redis-server in state_dir
    prefix: str = "dispatcher"
    shards: int = 1  # new webhooks are spread over this many shards (keys.py)
    # maxmemory of the embedded redis-server, in bytes (0: no limit); unused with a url
    embedded_maxmemory: int = DEFAULT_EMBEDDED_MAXMEMORY


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: str | None = "127.0.0.1:8080"  # None: the admin API is disabled
    token: str | None = None  # from admin.token, or the stripped content of token_file
    token_file: Path | None = None


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    concurrency: int = 256
    timeout_s: float = 15.0
    max_attempts: int = 8
    backoff_base_s: float = 5.0
    backoff_cap_s: float = 3600.0
    stall_timeout_s: float = 60.0
    max_payload_bytes: int = 262_144
    queues: tuple[str, ...] = ("default",)  # the queues this process serves
    disable_after_s: float = 432_000.0  # failing this long without a success disables a webhook
    breaker_open_s: float = 30.0  # a tripped breaker's first open period (doubles, up to 20x)


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    allow_private_targets: bool = False
    allowed_cidrs: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class DlqConfig:
    retention_s: float = 604_800.0


@dataclass(frozen=True, slots=True)
class JobsConfig:
    retention_s: float = 86_400.0  # how long delivered job records stay readable


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """Backlog thresholds; 0 turns one off. Checked every few seconds by each daemon."""

    queued_max: int = 100_000  # jobs queued (ready, unclaimed) across every queue
    oldest_ready_age_s: float = 300.0  # age of the oldest ready, unclaimed job
    dlq_growth: int = 100  # jobs dead-lettered within dlq_window_s
    dlq_window_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"  # auto: console on a TTY, JSON otherwise


@dataclass(frozen=True, slots=True)
class Config:
    state_dir: Path = Path("var")
    redis: RedisConfig = field(default_factory=RedisConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    dlq: DlqConfig = field(default_factory=DlqConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    log: LogConfig = field(default_factory=LogConfig)


SECTIONS: Final[Mapping[str, type]] = {
    "redis": RedisConfig,
    "admin": AdminConfig,
    "delivery": DeliveryConfig,
    "security": SecurityConfig,
    "dlq": DlqConfig,
    "jobs": JobsConfig,
    "alerts": AlertsConfig,
    "log": LogConfig,
}
TOP_LEVEL_KEYS: Final = ("state_dir",)


def env_name(section: str | None, key: str) -> str:
    """The environment variable that overrides ``section.key`` (or a top-level ``key``)."""
    return f"{ENV_PREFIX}{section}_{key}".upper() if section else f"{ENV_PREFIX}{key}".upper()


def _known_env_names() -> frozenset[str]:
    names = {env_name(None, key) for key in TOP_LEVEL_KEYS}
    for section, cls in SECTIONS.items():
        names.update(env_name(section, f.name) for f in dataclasses.fields(cls))
    return frozenset(names)


# --- raw values and their parsers -------------------------------------------------------------


class _BadValueError(ValueError):
    """A parser's refusal: each reason becomes one problem line."""

    def __init__(self, *reasons: str) -> None:
        super().__init__(*reasons)
        self.reasons = reasons


@dataclass(frozen=True, slots=True)
class _Raw:
    value: object  # a str from the environment, any TOML value from the file
    origin: str  # "from DISPATCHER_X" or "from path/to/file.toml"
    from_env: bool


T = TypeVar("T")
Parser = Callable[[_Raw], T]


def _show(value: object) -> str:
    """Render a raw value the way the user wrote it: strings quoted, booleans lower case."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def _duration(raw: _Raw) -> float:
    value = raw.value
    if raw.from_env and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadValueError(f"expected a number of seconds, got {_show(raw.value)}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise _BadValueError(f"must be a number of seconds > 0, got {_show(raw.value)}")
    if seconds > MAX_DURATION_S:
        raise _BadValueError(
            f"must be at most {MAX_DURATION_S:.0f} seconds (ten years), got {_show(raw.value)}"
        )
    return seconds


def _threshold_s(raw: _Raw) -> float:
    """A duration where 0 means "off" (an alert threshold)."""
    value = raw.value
    if raw.from_env and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    try:
        return _duration(raw)
    except _BadValueError as bad:
        raise _BadValueError(
            *(f"{reason} (or 0 to turn it off)" for reason in bad.reasons)
        ) from None


def _integer(lo: int, hi: int | None = None) -> Parser[int]:
    def parse(raw: _Raw) -> int:
        value = raw.value
        if raw.from_env and isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise _BadValueError(f"expected an integer, got {_show(raw.value)}")
        if value < lo or (hi is not None and value > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise _BadValueError(f"must be {bounds}, got {value}")
        return value

    return parse


# Redis's own size units (redis.conf): k/m/g are powers of 1000, kb/mb/gb of 1024.
_SIZE_UNITS: Final = {
    "": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}
_SIZE = re.compile(r"([0-9]+)([kmg]b?)?", re.IGNORECASE)


def _memory_size(raw: _Raw) -> int:
    """A size in bytes, written as Redis writes ``maxmemory``: 1073741824, 512mb, 2gb;
    0 means no limit."""
    value = raw.value
    if isinstance(value, str) and (found := _SIZE.fullmatch(value.strip())):
        value = int(found[1]) * _SIZE_UNITS[(found[2] or "").lower()]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _BadValueError(
            f'expected a size like "1gb", "512mb" or a number of bytes (0: no limit), '
            f"got {_show(raw.value)}"
        )
    if 0 < value < MIN_MAXMEMORY:
        raise _BadValueError(f"must be 0 (no limit) or at least 1mb, got {_show(raw.value)}")
    if value > MAX_MAXMEMORY:
        raise _BadValueError(f"must be at most {MAX_MAXMEMORY} bytes, got {_show(raw.value)}")
    return value


def _boolean(raw: _Raw) -> bool:
    if isinstance(raw.value, bool):
        return raw.value
    if raw.from_env and isinstance(raw.value, str):
        word = raw.value.strip().lower()
        if word in {"true", "1"}:
            return True
        if word in {"false", "0"}:
            return False
    raise _BadValueError(f"expected true/false/1/0, got {_show(raw.value)}")


def _string(raw: _Raw) -> str:
    if not isinstance(raw.value, str):
        raise _BadValueError(f"expected a string, got {_show(raw.value)}")
    return raw.value


def _optional_string(raw: _Raw) -> str | None:
    """A string where an empty value means unset (the file's ``key = ""`` like the env's)."""
    return _string(raw) or None


def _choice(choices: tuple[str, ...]) -> Parser[str]:
    def parse(raw: _Raw) -> str:
        value = _string(raw).strip().lower()
        if value not in choices:
            raise _BadValueError(f"expected one of {', '.join(choices)}, got {_show(raw.value)}")
        return value

    return parse


def _state_dir(raw: _Raw) -> Path:
    value = _string(raw)
    if not value.strip():
        raise _BadValueError("must not be empty")
    return Path(value).expanduser()


def _prefix(raw: _Raw) -> str:
    value = _string(raw)
    if not value:
        raise _BadValueError("must not be empty")
    if any(char.isspace() or char in "{}" for char in value):
        raise _BadValueError(
            f"must not contain spaces or braces (keys add their own {{hash tag}}), "
            f"got {_show(value)}"
        )
    return value


def redact_url(url: str) -> str:
    """The URL with its password (in the userinfo or a ``password=`` query) replaced by ***."""
    parts = urlsplit(url)
    netloc, query = parts.netloc, parts.query
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(name == "password" for name, _ in pairs):
        query = urlencode([(n, "***" if n == "password" else v) for n, v in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # Built by hand: urlunsplit turns "unix:///path" into "unix:/path".
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{parts.path}{'?' if query else ''}{query}{fragment}"


def _redis_url(raw: _Raw) -> str | None:
    url = _optional_string(raw)
    if url is None:
        return None
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    shown = _show(redact_url(url))
    if scheme in urls.CLUSTER_SCHEMES + urls.SENTINEL_SCHEMES:
        try:
            urls.parse(url)
        except urls.UrlError as exc:
            raise _BadValueError(f"{exc} in {shown}") from None
        return url
    if scheme not in REDIS_SCHEMES or "://" not in url:
        raise _BadValueError(
            f"unsupported scheme in {shown}: use redis://, rediss://, unix://, "
            "redis+cluster://host:port,host:port or redis+sentinel://host:port,host:port/service"
        )
    if scheme == "unix" and not urlsplit(urls.absolute_unix(url)).path:
        raise _BadValueError(
            f"a unix:// URL needs a socket path, e.g. unix:///run/redis.sock, got {shown}"
        )
    try:
        parts.port  # noqa: B018 - urlsplit only checks the port when asked
    except ValueError:
        raise _BadValueError(f"invalid port in {shown}") from None
    return url


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def _listen(raw: _Raw) -> str | None:
    value = _string(raw).strip()
    if not value:
        return None  # empty disables the admin API
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:  # noqa: PLR2004
        raise _BadValueError(
            f"expected host:port with a port 0-65535 (IPv6 as [::1]:8080; empty disables "
            f"the API), got {_show(raw.value)}"
        )
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _BadValueError(f"{host} is not an IPv6 address") from None
    elif ":" in host:
        raise _BadValueError(f"an IPv6 host needs brackets, e.g. [::1]:8080, got {_show(value)}")
    elif not _HOSTNAME.fullmatch(host):
        raise _BadValueError(
            f"expected a host name or IP address before :{port} "
            f"(0.0.0.0 listens on every interface), got {_show(raw.value)}"
        )
    return value


def _cidr(text: object) -> IPNetwork:
    if not isinstance(text, str):
        raise _BadValueError(f"expected CIDR strings, got {_show(text)}")
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise _BadValueError(
            f'{_show(text)} is not a CIDR (expected e.g. "10.20.0.0/16")'
        ) from None
    raise _BadValueError(f'{_show(text)} has host bits set; did you mean "{loose}"?')


def _cidrs(raw: _Raw) -> tuple[IPNetwork, ...]:
    value = raw.value
    if raw.from_env and isinstance(value, str):
        items: list[object] = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise _BadValueError(
            f'expected a list of CIDR strings like ["10.20.0.0/16"], got {_show(value)}'
        )
    networks: list[IPNetwork] = []
    reasons: list[str] = []
    for item in items:
        try:
            networks.append(_cidr(item))
        except _BadValueError as bad:
            reasons.extend(bad.reasons)
    if reasons:
        raise _BadValueError(*reasons)
    return tuple(networks)


_QUEUE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def queue_names(value: object, *, from_env: bool = True) -> tuple[str, ...]:
    """Queue names from a list (TOML) or a comma-separated string (environment, ``--queues``)."""
    if from_env and isinstance(value, str):
        items: list[object] = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise _BadValueError(f'expected a list of queue names like ["default"], got {_show(value)}')
    bad = [item for item in items if not isinstance(item, str) or not _QUEUE_NAME.fullmatch(item)]
    if bad:
        raise _BadValueError(
            f"{', '.join(_show(b) for b in bad)}: a queue name is 1-64 of a-z, 0-9, '_' or '-', "
            "starting with a letter or digit"
        )
    if not items:
        raise _BadValueError("expected at least one queue name")
    return tuple(dict.fromkeys(str(item) for item in items))


def _queues(raw: _Raw) -> tuple[str, ...]:
    return queue_names(raw.value, from_env=raw.from_env)


def _token_file(raw: _Raw) -> tuple[Path, str]:
    """The path and its stripped content: the file is read at load."""
    text = _optional_string(raw)
    if text is None:
        raise _BadValueError("must not be empty")
    path = Path(text).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise _BadValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise _BadValueError(f"{path} is not UTF-8 text") from None
    if not token:
        raise _BadValueError(f"{path} is empty")
    return path, token


# --- gathering values -------------------------------------------------------------------------


class _Reader:
    """Looks each key up in the environment, then the file; collects every problem."""

    def __init__(
        self, file_data: Mapping[str, object], file_label: str, environ: Mapping[str, str]
    ) -> None:
        self._file = file_data
        self._file_label = file_label
        self._environ = environ
        self.problems: list[str] = []
        self.failed: set[str] = set()

    def problem(self, name: str, reason: str) -> None:
        self.problems.append(f"{name}: {reason}")
        self.failed.add(name)

    def value(
        self,
        section: str | None,
        key: str,
        default: T,
        parse: Parser[T],
        *,
        empty_env_is_value: bool = False,
    ) -> T:
        raw = self._raw(section, key, empty_env_is_value=empty_env_is_value)
        if raw is None:
            return default
        try:
            return parse(raw)
        except _BadValueError as bad:
            name = f"{section}.{key}" if section else key
            for reason in bad.reasons:
                self.problem(name, f"{reason} ({raw.origin})")
            return default

    def _raw(self, section: str | None, key: str, *, empty_env_is_value: bool) -> _Raw | None:
        name = env_name(section, key)
        env_value = self._environ.get(name)
        if env_value is not None and (env_value or empty_env_is_value):
            return _Raw(env_value, f"from {name}", from_env=True)
        table = self._file.get(section, {}) if section else self._file
        if isinstance(table, Mapping) and key in table:
            return _Raw(table[key], f"from {self._file_label}", from_env=False)
        return None


def _read_file(path: str | os.PathLike[str] | None, problems: list[str]) -> dict[str, object]:
    if path is None:
        return {}
    try:
        with Path(path).open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        problems.append(f"{os.fspath(path)}: config file not found")
    except OSError as exc:
        problems.append(f"{os.fspath(path)}: cannot read config file: {exc.strerror or exc}")
    except ValueError as exc:  # TOMLDecodeError, UnicodeDecodeError
        problems.append(f"{os.fspath(path)}: invalid TOML: {exc}")
    return {}


def _check_file_keys(data: Mapping[str, object], problems: list[str]) -> None:
    for name, value in data.items():
        if name in TOP_LEVEL_KEYS:
            continue
        cls = SECTIONS.get(name)
        if cls is None:
            hint = _did_you_mean(name, [*SECTIONS, *TOP_LEVEL_KEYS])
            problems.append(f"{name}: unknown key or section in the config file{hint}")
        elif not isinstance(value, dict):
            problems.append(f"{name}: expected a table [{name}], got {_show(value)}")
        else:
            keys = [f.name for f in dataclasses.fields(cls)]
            problems.extend(
                f"{name}.{key}: unknown key{_did_you_mean(key, keys)}"
                for key in value
                if key not in keys
            )


def _check_env_names(environ: Mapping[str, str], problems: list[str]) -> None:
    known = _known_env_names()
    problems.extend(
        f"{name}: unknown environment variable{_did_you_mean(name, sorted(known))}"
        for name in sorted(environ)
        if name.startswith(ENV_PREFIX) and name not in known and name != CONFIG_ENV
    )


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


# --- building the sections --------------------------------------------------------------------


def _redis(r: _Reader) -> RedisConfig:
    d = RedisConfig()
    return RedisConfig(
        url=r.value("redis", "url", d.url, _redis_url),
        prefix=r.value("redis", "prefix", d.prefix, _prefix),
        shards=r.value("redis", "shards", d.shards, _integer(1, MAX_SHARDS)),
        embedded_maxmemory=r.value(
            "redis", "embedded_maxmemory", d.embedded_maxmemory, _memory_size
        ),
    )


def _admin(r: _Reader) -> AdminConfig:
    d = AdminConfig()
    listen = r.value("admin", "listen", d.listen, _listen, empty_env_is_value=True)
    token = r.value("admin", "token", d.token, _optional_string)
    from_file = r.value("admin", "token_file", None, _token_file)
    if from_file is None:
        return AdminConfig(listen=listen, token=token)
    if token is not None:
        r.problem("admin.token", "admin.token and admin.token_file are both set; keep one")
    return AdminConfig(listen=listen, token=from_file[1], token_file=from_file[0])


def _delivery(r: _Reader) -> DeliveryConfig:
    d = DeliveryConfig()
    cfg = DeliveryConfig(
        concurrency=r.value("delivery", "concurrency", d.concurrency, _integer(1, MAX_CONCURRENCY)),
        timeout_s=r.value("delivery", "timeout_s", d.timeout_s, _duration),
        max_attempts=r.value("delivery", "max_attempts", d.max_attempts, _integer(1)),
        backoff_base_s=r.value("delivery", "backoff_base_s", d.backoff_base_s, _duration),
        backoff_cap_s=r.value("delivery", "backoff_cap_s", d.backoff_cap_s, _duration),
        stall_timeout_s=r.value("delivery", "stall_timeout_s", d.stall_timeout_s, _duration),
        max_payload_bytes=r.value(
            "delivery", "max_payload_bytes", d.max_payload_bytes, _integer(1)
        ),
        queues=r.value("delivery", "queues", d.queues, _queues),
        disable_after_s=r.value("delivery", "disable_after_s", d.disable_after_s, _duration),
        breaker_open_s=r.value("delivery", "breaker_open_s", d.breaker_open_s, _duration),
    )
    _check_delivery(r, cfg)
    return cfg


def _check_delivery(r: _Reader, cfg: DeliveryConfig) -> None:
    """Rules across keys, checked only when each key involved is valid on its own."""
    if not r.failed & {"delivery.backoff_base_s", "delivery.backoff_cap_s"} and (
        cfg.backoff_cap_s < cfg.backoff_base_s
    ):
        r.problem(
            "delivery.backoff_cap_s",
            f"must be >= delivery.backoff_base_s ({cfg.backoff_base_s:g}), "
            f"got {cfg.backoff_cap_s:g}",
        )
    if not r.failed & {"delivery.timeout_s", "delivery.stall_timeout_s"} and (
        cfg.stall_timeout_s <= cfg.timeout_s
    ):
        r.problem(
            "delivery.stall_timeout_s",
            f"must exceed delivery.timeout_s ({cfg.timeout_s:g}), got {cfg.stall_timeout_s:g}: "
            "otherwise a slow but live delivery would be reclaimed by another worker and "
            "sent twice",
        )


def _security(r: _Reader) -> SecurityConfig:
    d = SecurityConfig()
    return SecurityConfig(
        allow_private_targets=r.value(
            "security", "allow_private_targets", d.allow_private_targets, _boolean
        ),
        allowed_cidrs=r.value("security", "allowed_cidrs", d.allowed_cidrs, _cidrs),
    )


def _alerts(r: _Reader) -> AlertsConfig:
    d = AlertsConfig()
    return AlertsConfig(
        queued_max=r.value("alerts", "queued_max", d.queued_max, _integer(0)),
        oldest_ready_age_s=r.value(
            "alerts", "oldest_ready_age_s", d.oldest_ready_age_s, _threshold_s
        ),
        dlq_growth=r.value("alerts", "dlq_growth", d.dlq_growth, _integer(0)),
        dlq_window_s=r.value("alerts", "dlq_window_s", d.dlq_window_s, _duration),
    )


def _log(r: _Reader) -> LogConfig:
    d = LogConfig()
    return LogConfig(
        level=r.value("log", "level", d.level, _choice(LOG_LEVELS)),
        format=r.value("log", "format", d.format, _choice(LOG_FORMATS)),
    )


def load(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Config:
    """Read the TOML file at ``path`` (None: defaults only), then apply ``DISPATCHER_*``.

    Raises `ConfigError` with one line per problem when anything is wrong.
    """
    problems: list[str] = []
    data = _read_file(path, problems)
    _check_file_keys(data, problems)
    r = _Reader(data, os.fspath(path) if path is not None else "", environ)
    cfg = Config(
        state_dir=r.value(None, "state_dir", Config().state_dir, _state_dir),
        redis=_redis(r),
        admin=_admin(r),
        delivery=_delivery(r),
        security=_security(r),
        dlq=DlqConfig(
            retention_s=r.value("dlq", "retention_s", DlqConfig().retention_s, _duration)
        ),
        jobs=JobsConfig(
            retention_s=r.value("jobs", "retention_s", JobsConfig().retention_s, _duration)
        ),
        alerts=_alerts(r),
        log=_log(r),
    )
    problems.extend(r.problems)
    _check_env_names(environ, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


# --- the effective config, for check-config ---------------------------------------------------


def _plain(value: object) -> object:
    if isinstance(value, Path | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def _plain_fields(section: DataclassInstance) -> dict[str, object]:
    return {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)}


def changed_keys(old: Config, new: Config) -> list[str]:
    """The dotted names of the keys whose values differ (``state_dir``, ``log.level``, ...)."""
    names = [key for key in TOP_LEVEL_KEYS if getattr(old, key) != getattr(new, key)]
    for section in SECTIONS:
        before, after = getattr(old, section), getattr(new, section)
        names.extend(
            f"{section}.{f.name}"
            for f in dataclasses.fields(before)
            if getattr(before, f.name) != getattr(after, f.name)
        )
    return names


def with_keys(cfg: Config, source: Config, keys: Iterable[str]) -> Config:
    """``cfg`` with the values of the dotted ``keys`` taken from ``source``."""
    for key in keys:
        section, _, name = key.partition(".")
        if not name:
            cfg = dataclasses.replace(cfg, **{section: getattr(source, section)})
            continue
        part = dataclasses.replace(
            getattr(cfg, section), **{name: getattr(getattr(source, section), name)}
        )
        cfg = dataclasses.replace(cfg, **{section: part})
    return cfg


def redacted(cfg: Config) -> dict[str, object]:
    """The effective config as a JSON-able dict, every key present, secrets replaced by ***."""
    sections = {name: _plain_fields(getattr(cfg, name)) for name in SECTIONS}
    sections["admin"]["token"] = "***" if cfg.admin.token is not None else None
    sections["redis"]["url"] = redact_url(cfg.redis.url) if cfg.redis.url is not None else None
    return {"state_dir": str(cfg.state_dir), **sections}

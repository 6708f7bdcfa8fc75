"""Configuration: a TOML file, overridden key by key by ``DISPATCHER_*`` environment variables.

``load(path, environ)`` returns a frozen `Config` or raises `ConfigError` listing every problem,
one line each, naming the key and where the bad value came from. The sections and keys are the
dataclass fields below: adding a field adds its TOML key and its environment variable
(``DISPATCHER_<SECTION>_<KEY>``; top-level keys ``DISPATCHER_<KEY>``). One table is free-form:
``[regions]`` maps region names to Redis URLs (``DISPATCHER_REGIONS_<NAME>``, the name
lower-cased, adds an entry or overrides the file's), with the top-level ``region`` naming this
process's own (docs/regions.md).
Each value's parser and its messages live in `dispatcher.config_values`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

from dispatcher import config_values as values
from dispatcher.errors import ConfigError
from dispatcher.queue.keys import MAX_SHARDS
from dispatcher.queue.publishing import MAX_DEDUP_WINDOW_S
from dispatcher.tasks import TASK_QUEUES

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from dispatcher.config_values import IPNetwork

ENV_PREFIX: Final = "DISPATCHER_"
CONFIG_ENV: Final = "DISPATCHER_CONFIG"  # the config path; read by the CLI, never by load()
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("auto", "json", "console")
HTTP_CLIENTS: Final = ("native", "aiohttp")  # delivery.http_client: sender.py, sender_aiohttp.py
MAX_CONCURRENCY: Final = 100_000
DEFAULT_EMBEDDED_MAXMEMORY: Final = 1024**3  # "1gb": see redis.embedded_maxmemory


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
    http_client: str = "native"  # "aiohttp": the aiohttp sender, for a target native mishandles
    proxy_url: str | None = None  # http://[user:pass@]host:port: every delivery leaves through it


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    allow_private_targets: bool = False
    allowed_cidrs: tuple[IPNetwork, ...] = ()
    #: AES-256 keys sealing webhook secrets in Redis (crypto.py): the first seals, all open.
    encryption_keys: tuple[bytes, ...] = field(default=(), repr=False)
    encryption_keys_file: Path | None = None


@dataclass(frozen=True, slots=True)
class DlqConfig:
    retention_s: float = 604_800.0
    auto_purge: bool = False  # the dispatcher.purge_dlq task deletes entries past retention_s


@dataclass(frozen=True, slots=True)
class JobsConfig:
    retention_s: float = 86_400.0  # how long delivered job records stay readable
    # how long a delivered job keeps its payload for a retry (0: dropped at delivery); at most
    # retention_s, as the record goes with it
    payload_retention_s: float = 3_600.0


@dataclass(frozen=True, slots=True)
class EventsConfig:
    # an identical event (tenant, type, payload) within this many seconds is accepted once; 0 off
    dedup_window_s: int = 0


@dataclass(frozen=True, slots=True)
class TasksConfig:
    modules: tuple[str, ...] = ()  # imported at start; their @task functions register
    concurrency: int = 2  # task lanes, apart from delivery.concurrency


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
    region: str | None = None  # this process's region, one of ``regions``; None without them
    #: Every region's Redis URL (a ``redis.url`` form), this one's included; {} without regions.
    regions: dict[str, str] = field(default_factory=dict)
    redis: RedisConfig = field(default_factory=RedisConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    dlq: DlqConfig = field(default_factory=DlqConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    log: LogConfig = field(default_factory=LogConfig)


SECTIONS: Final[Mapping[str, type]] = {
    "redis": RedisConfig,
    "admin": AdminConfig,
    "delivery": DeliveryConfig,
    "security": SecurityConfig,
    "dlq": DlqConfig,
    "jobs": JobsConfig,
    "events": EventsConfig,
    "tasks": TasksConfig,
    "alerts": AlertsConfig,
    "log": LogConfig,
}
TOP_LEVEL_KEYS: Final = ("state_dir", "region")
REGIONS: Final = "regions"  # the free table: region name -> Redis URL


def env_name(section: str | None, key: str) -> str:
    """The environment variable that overrides ``section.key`` (or a top-level ``key``)."""
    return f"{ENV_PREFIX}{section}_{key}".upper() if section else f"{ENV_PREFIX}{key}".upper()


def _known_env_names() -> frozenset[str]:
    names = {env_name(None, key) for key in TOP_LEVEL_KEYS}
    for section, cls in SECTIONS.items():
        names.update(env_name(section, f.name) for f in dataclasses.fields(cls))
    return frozenset(names)


T = TypeVar("T")


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
        parse: values.Parser[T],
        *,
        empty_env_is_value: bool = False,
    ) -> T:
        raw = self._raw(section, key, empty_env_is_value=empty_env_is_value)
        if raw is None:
            return default
        return self.parsed(f"{section}.{key}" if section else key, raw, default, parse)

    def parsed(self, name: str, raw: values.Raw, default: T, parse: values.Parser[T]) -> T:
        try:
            return parse(raw)
        except values.BadValueError as bad:
            for reason in bad.reasons:
                self.problem(name, f"{reason} ({raw.origin})")
            return default

    def table(self, name: str) -> dict[str, values.Raw]:
        """A free table's entries: the file's, then ``DISPATCHER_<NAME>_<KEY>`` (the key
        lower-cased), which add to them and override them; an empty variable is unset."""
        found: dict[str, values.Raw] = {}
        table = self._file.get(name)
        if isinstance(table, Mapping):
            origin = f"from {self._file_label}"
            found.update({str(k): values.Raw(v, origin, from_env=False) for k, v in table.items()})
        env_prefix = env_name(None, f"{name}_")
        for var, value in sorted(self._environ.items()):
            if var.startswith(env_prefix) and value:
                found[var.removeprefix(env_prefix).lower()] = values.Raw(
                    value, f"from {var}", from_env=True
                )
        return found

    def _raw(self, section: str | None, key: str, *, empty_env_is_value: bool) -> values.Raw | None:
        name = env_name(section, key)
        env_value = self._environ.get(name)
        if env_value is not None and (env_value or empty_env_is_value):
            return values.Raw(env_value, f"from {name}", from_env=True)
        table = self._file.get(section, {}) if section else self._file
        if isinstance(table, Mapping) and key in table:
            return values.Raw(table[key], f"from {self._file_label}", from_env=False)
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
        if name == REGIONS:
            if not isinstance(value, dict):
                problems.append(f"{name}: expected a table [{name}], got {values.show(value)}")
            continue
        cls = SECTIONS.get(name)
        if cls is None:
            hint = values.did_you_mean(name, [*SECTIONS, *TOP_LEVEL_KEYS, REGIONS])
            problems.append(f"{name}: unknown key or section in the config file{hint}")
        elif not isinstance(value, dict):
            problems.append(f"{name}: expected a table [{name}], got {values.show(value)}")
        else:
            keys = [f.name for f in dataclasses.fields(cls)]
            problems.extend(
                f"{name}.{key}: unknown key{values.did_you_mean(key, keys)}"
                for key in value
                if key not in keys
            )


def _check_env_names(environ: Mapping[str, str], problems: list[str]) -> None:
    known = _known_env_names()
    regions = env_name(None, f"{REGIONS}_")  # DISPATCHER_REGIONS_<NAME>: any name (checked)
    problems.extend(
        f"{name}: unknown environment variable"
        f"{values.did_you_mean(name, sorted(known), shared=ENV_PREFIX)}"
        for name in sorted(environ)
        if name.startswith(ENV_PREFIX)
        and name not in known
        and name != CONFIG_ENV
        and not name.startswith(regions)
    )


# --- building the sections --------------------------------------------------------------------


def _redis(r: _Reader) -> RedisConfig:
    d = RedisConfig()
    return RedisConfig(
        url=r.value("redis", "url", d.url, values.redis_url),
        prefix=r.value("redis", "prefix", d.prefix, values.prefix),
        shards=r.value("redis", "shards", d.shards, values.integer(1, MAX_SHARDS)),
        embedded_maxmemory=r.value(
            "redis", "embedded_maxmemory", d.embedded_maxmemory, values.memory_size
        ),
    )


def _regions(r: _Reader) -> dict[str, str]:
    """``[regions]``: each name and URL checked on its own (`_check_regions` relates them)."""
    found: dict[str, str] = {}
    for name, raw in r.table(REGIONS).items():
        key = f"{REGIONS}.{name}"
        if r.parsed(key, values.Raw(name, raw.origin, raw.from_env), None, values.region):
            found[name] = r.parsed(key, raw, "", values.region_url)
    return {name: url for name, url in sorted(found.items()) if url}


def _check_regions(
    r: _Reader, region: str | None, regions: dict[str, str], redis: RedisConfig
) -> RedisConfig:
    """Rules across ``region``, ``[regions]`` and ``redis.url``, checked only when each key
    involved is valid on its own; with regions, ``redis.url`` defaults to this region's URL."""
    if "region" in r.failed or any(key.startswith(f"{REGIONS}.") for key in r.failed):
        return redis
    seen: dict[str, str] = {}
    for name, url in regions.items():
        if url in seen:
            r.problem(
                f"{REGIONS}.{name}",
                f"the same URL as {REGIONS}.{seen[url]}: each region has a Redis of its own",
            )
        seen.setdefault(url, name)
    names = ", ".join(regions)
    if regions and region is None:
        r.problem("region", f"[regions] is set ({names}): region must name this process's own")
    elif region is not None and not regions:
        r.problem(
            "region",
            f"{values.show(region)} needs [regions]: every region's Redis URL, its own included",
        )
    elif region is not None and region not in regions:
        r.problem("region", f"{values.show(region)} is not in [regions] ({names})")
    elif region is not None:
        url = regions[region]
        if redis.url is None:
            return dataclasses.replace(redis, url=url)
        if redis.url != url and "redis.url" not in r.failed:
            r.problem(
                "redis.url",
                f"{values.show(values.redact_url(redis.url))} is not regions.{region} "
                f"({values.show(values.redact_url(url))}): with [regions], leave redis.url "
                f"unset (it is then regions.{region}) or set both alike",
            )
    return redis


def _admin(r: _Reader) -> AdminConfig:
    d = AdminConfig()
    listen = r.value("admin", "listen", d.listen, values.listen, empty_env_is_value=True)
    token = r.value("admin", "token", d.token, values.optional_string)
    from_file = r.value("admin", "token_file", None, values.token_file)
    if from_file is None:
        return AdminConfig(listen=listen, token=token)
    if token is not None:
        r.problem("admin.token", "admin.token and admin.token_file are both set; keep one")
    return AdminConfig(listen=listen, token=from_file[1], token_file=from_file[0])


def _delivery(r: _Reader) -> DeliveryConfig:
    d = DeliveryConfig()
    cfg = DeliveryConfig(
        concurrency=r.value(
            "delivery", "concurrency", d.concurrency, values.integer(1, MAX_CONCURRENCY)
        ),
        timeout_s=r.value("delivery", "timeout_s", d.timeout_s, values.duration),
        max_attempts=r.value("delivery", "max_attempts", d.max_attempts, values.integer(1)),
        backoff_base_s=r.value("delivery", "backoff_base_s", d.backoff_base_s, values.duration),
        backoff_cap_s=r.value("delivery", "backoff_cap_s", d.backoff_cap_s, values.duration),
        stall_timeout_s=r.value("delivery", "stall_timeout_s", d.stall_timeout_s, values.duration),
        max_payload_bytes=r.value(
            "delivery", "max_payload_bytes", d.max_payload_bytes, values.integer(1)
        ),
        queues=r.value("delivery", "queues", d.queues, values.queues),
        disable_after_s=r.value("delivery", "disable_after_s", d.disable_after_s, values.duration),
        breaker_open_s=r.value("delivery", "breaker_open_s", d.breaker_open_s, values.duration),
        http_client=r.value("delivery", "http_client", d.http_client, values.choice(HTTP_CLIENTS)),
        proxy_url=r.value("delivery", "proxy_url", d.proxy_url, values.proxy_url),
    )
    _check_delivery(r, cfg)
    return cfg


def _check_delivery(r: _Reader, cfg: DeliveryConfig) -> None:
    """Rules across keys, checked only when each key involved is valid on its own."""
    taken = [q for q in cfg.queues if q in TASK_QUEUES]
    if taken:
        r.problem(
            "delivery.queues",
            f"{', '.join(taken)}: the task queues are served by every daemon's task lanes "
            "(tasks.concurrency), not by delivery",
        )
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
    keys, keys_file = _encryption_keys(r)
    return SecurityConfig(
        allow_private_targets=r.value(
            "security", "allow_private_targets", d.allow_private_targets, values.boolean
        ),
        allowed_cidrs=r.value("security", "allowed_cidrs", d.allowed_cidrs, values.cidrs),
        encryption_keys=keys,
        encryption_keys_file=keys_file,
    )


def _encryption_keys(r: _Reader) -> tuple[tuple[bytes, ...], Path | None]:
    """``encryption_keys`` from the list (or env), or from ``encryption_keys_file``; not both."""
    none: tuple[bytes, ...] = ()
    keys = r.value("security", "encryption_keys", none, values.encryption_keys)
    from_file = r.value("security", "encryption_keys_file", None, values.encryption_keys_file)
    if from_file is None:
        return keys, None
    if keys:
        r.problem(
            "security.encryption_keys",
            "security.encryption_keys and security.encryption_keys_file are both set; keep one",
        )
    return from_file[1], from_file[0]


def _alerts(r: _Reader) -> AlertsConfig:
    d = AlertsConfig()
    return AlertsConfig(
        queued_max=r.value("alerts", "queued_max", d.queued_max, values.integer(0)),
        oldest_ready_age_s=r.value(
            "alerts", "oldest_ready_age_s", d.oldest_ready_age_s, values.threshold_s
        ),
        dlq_growth=r.value("alerts", "dlq_growth", d.dlq_growth, values.integer(0)),
        dlq_window_s=r.value("alerts", "dlq_window_s", d.dlq_window_s, values.duration),
    )


def _log(r: _Reader) -> LogConfig:
    d = LogConfig()
    return LogConfig(
        level=r.value("log", "level", d.level, values.choice(LOG_LEVELS)),
        format=r.value("log", "format", d.format, values.choice(LOG_FORMATS)),
    )


def load(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Config:
    """Read the TOML file at ``path`` (None: defaults only), then apply ``DISPATCHER_*``.

    Raises `ConfigError` with one line per problem when anything is wrong.
    """
    problems: list[str] = []
    data = _read_file(path, problems)
    _check_file_keys(data, problems)
    r = _Reader(data, os.fspath(path) if path is not None else "", environ)
    redis = _redis(r)
    region = r.value(None, "region", None, values.region)
    regions = _regions(r)
    cfg = Config(
        state_dir=r.value(None, "state_dir", Config().state_dir, values.state_dir),
        region=region,
        regions=regions,
        redis=_check_regions(r, region, regions, redis),
        admin=_admin(r),
        delivery=_delivery(r),
        security=_security(r),
        dlq=DlqConfig(
            retention_s=r.value("dlq", "retention_s", DlqConfig().retention_s, values.duration),
            auto_purge=r.value("dlq", "auto_purge", DlqConfig().auto_purge, values.boolean),
        ),
        jobs=JobsConfig(
            retention_s=r.value("jobs", "retention_s", JobsConfig().retention_s, values.duration),
            payload_retention_s=r.value(
                "jobs", "payload_retention_s", JobsConfig().payload_retention_s, values.threshold_s
            ),
        ),
        events=EventsConfig(
            dedup_window_s=r.value(
                "events", "dedup_window_s", 0, values.integer(0, MAX_DEDUP_WINDOW_S)
            )
        ),
        tasks=TasksConfig(
            modules=r.value("tasks", "modules", TasksConfig().modules, values.module_names),
            concurrency=r.value(
                "tasks", "concurrency", TasksConfig().concurrency, values.integer(1, 1000)
            ),
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
    names = [key for key in (*TOP_LEVEL_KEYS, REGIONS) if getattr(old, key) != getattr(new, key)]
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
    sections["security"]["encryption_keys"] = ["***" for _ in cfg.security.encryption_keys]
    sections["redis"]["url"] = (
        values.redact_url(cfg.redis.url) if cfg.redis.url is not None else None
    )
    if cfg.delivery.proxy_url is not None:
        sections["delivery"]["proxy_url"] = values.redact_url(cfg.delivery.proxy_url)
    if not cfg.regions:  # without regions, as before them
        return {"state_dir": str(cfg.state_dir), **sections}
    shown = {name: values.redact_url(url) for name, url in cfg.regions.items()}
    return {"state_dir": str(cfg.state_dir), "region": cfg.region, REGIONS: shown, **sections}

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import re
from pathlib import Path

import orjson
import pytest

from dispatcher.config import (
    SECTIONS,
    AdminConfig,
    Config,
    DeliveryConfig,
    LogConfig,
    RedisConfig,
    SecurityConfig,
    changed_keys,
    env_name,
    load,
    redacted,
    with_keys,
)
from dispatcher.daemon import LIVE_KEYS
from dispatcher.errors import ConfigError
from dispatcher.queue import urls

BEARER = "s3cret"
FROM_FILE = "from-file"
EXAMPLE_BEARER = "change-me"  # the commented-out example in etc/dispatcher.toml
EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "dispatcher.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dispatcher.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path | None, environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path, environ)
    return info.value.problems


def value_at(out: dict[str, object], section: str | None, key: str) -> object:
    node = out if section is None else out[section]
    assert isinstance(node, dict)
    return node[key]


def all_keys() -> list[tuple[str | None, str]]:
    keys: list[tuple[str | None, str]] = [(None, "state_dir")]
    for section, cls in SECTIONS.items():
        keys.extend((section, f.name) for f in dataclasses.fields(cls))
    return keys


# --- good configurations ----------------------------------------------------------------------


def test_defaults_without_file_or_env() -> None:
    """With no file and no environment every key has its documented default."""
    cfg = load(None, {})
    assert cfg == Config()
    assert cfg.state_dir == Path("var")
    assert cfg.redis == RedisConfig(url=None, prefix="dispatcher")
    assert cfg.admin == AdminConfig(listen="127.0.0.1:8080", token=None, token_file=None)
    assert cfg.delivery == DeliveryConfig(
        concurrency=256,
        timeout_s=15.0,
        max_attempts=8,
        backoff_base_s=5.0,
        backoff_cap_s=3600.0,
        stall_timeout_s=60.0,
        max_payload_bytes=262144,
    )
    assert cfg.security == SecurityConfig(allow_private_targets=False, allowed_cidrs=())
    assert cfg.dlq.retention_s == 604800.0
    assert cfg.jobs.retention_s == 86400.0
    assert cfg.log == LogConfig(level="info", format="auto")


def test_file_values_are_read(tmp_path: Path) -> None:
    """Values in the TOML file replace the defaults, with ints accepted for durations."""
    path = write(
        tmp_path,
        """
state_dir = "/srv/dispatcher"
[redis]
url = "redis://localhost:6379/1"
prefix = "acme"
[admin]
listen = "[::1]:9000"
token = "s3cret"
[delivery]
concurrency = 32
timeout_s = 2
backoff_base_s = 0.05
stall_timeout_s = 30
http_client = "aiohttp"
[security]
allow_private_targets = true
allowed_cidrs = ["10.20.0.0/16", "fd00:1::/64"]
[dlq]
retention_s = 60
[jobs]
retention_s = 0.5
[log]
level = "debug"
format = "json"
""",
    )
    cfg = load(path, {})
    assert cfg.state_dir == Path("/srv/dispatcher")
    assert cfg.redis == RedisConfig(url="redis://localhost:6379/1", prefix="acme")
    assert cfg.admin.listen == "[::1]:9000"
    assert cfg.admin.token == BEARER
    assert cfg.delivery.concurrency == 32
    assert cfg.delivery.timeout_s == 2.0
    assert isinstance(cfg.delivery.timeout_s, float)
    assert cfg.delivery.backoff_base_s == 0.05
    assert cfg.delivery.http_client == "aiohttp"
    assert cfg.security.allow_private_targets is True
    assert cfg.security.allowed_cidrs == (
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("fd00:1::/64"),
    )
    assert cfg.dlq.retention_s == 60.0
    assert cfg.jobs.retention_s == 0.5
    assert cfg.log == LogConfig(level="debug", format="json")


def test_environment_wins_over_file(tmp_path: Path) -> None:
    """A DISPATCHER_* variable overrides the same key in the file, and only that key."""
    path = write(tmp_path, "[delivery]\ntimeout_s = 2\nmax_attempts = 3\n")
    cfg = load(path, {"DISPATCHER_DELIVERY_TIMEOUT_S": "0.25"})
    assert cfg.delivery.timeout_s == 0.25
    assert cfg.delivery.max_attempts == 3


def test_every_key_has_a_working_environment_variable(tmp_path: Path) -> None:
    """Each key's DISPATCHER_<SECTION>_<KEY> variable sets it to a non-default value."""
    token_file = tmp_path / "token"
    token_file.write_text(f"{FROM_FILE}\n", encoding="utf-8")
    keys_file = tmp_path / "keys"
    keys_file.write_text(base64.b64encode(b"k" * 32).decode(), encoding="utf-8")
    environ = {
        "DISPATCHER_STATE_DIR": "/srv/d",
        "DISPATCHER_REDIS_URL": "unix:///run/redis.sock",
        "DISPATCHER_REDIS_PREFIX": "other",
        "DISPATCHER_REDIS_SHARDS": "4",
        "DISPATCHER_REDIS_EMBEDDED_MAXMEMORY": "512mb",
        "DISPATCHER_ADMIN_LISTEN": "0.0.0.0:0",
        "DISPATCHER_ADMIN_TOKEN_FILE": str(token_file),
        "DISPATCHER_DELIVERY_CONCURRENCY": "7",
        "DISPATCHER_DELIVERY_TIMEOUT_S": "1.5",
        "DISPATCHER_DELIVERY_MAX_ATTEMPTS": "2",
        "DISPATCHER_DELIVERY_BACKOFF_BASE_S": "0.1",
        "DISPATCHER_DELIVERY_BACKOFF_CAP_S": "9",
        "DISPATCHER_DELIVERY_STALL_TIMEOUT_S": "3",
        "DISPATCHER_DELIVERY_MAX_PAYLOAD_BYTES": "1024",
        "DISPATCHER_DELIVERY_QUEUES": "slow, default,",
        "DISPATCHER_DELIVERY_DISABLE_AFTER_S": "60",
        "DISPATCHER_DELIVERY_BREAKER_OPEN_S": "2.5",
        "DISPATCHER_DELIVERY_HTTP_CLIENT": "aiohttp",
        "DISPATCHER_DELIVERY_PROXY_URL": "http://egress:pw@proxy.internal:3128",
        "DISPATCHER_SECURITY_ALLOW_PRIVATE_TARGETS": "TRUE",
        "DISPATCHER_SECURITY_ALLOWED_CIDRS": "10.0.0.0/8, 192.168.1.0/24,",
        "DISPATCHER_SECURITY_ENCRYPTION_KEYS_FILE": str(keys_file),
        "DISPATCHER_DLQ_RETENTION_S": "5",
        "DISPATCHER_DLQ_AUTO_PURGE": "true",
        "DISPATCHER_JOBS_RETENTION_S": "6",
        "DISPATCHER_JOBS_PAYLOAD_RETENTION_S": "0",
        "DISPATCHER_EVENTS_DEDUP_WINDOW_S": "30",
        "DISPATCHER_TASKS_MODULES": "myapp.tasks, other,",
        "DISPATCHER_TASKS_CONCURRENCY": "3",
        "DISPATCHER_ALERTS_QUEUED_MAX": "0",
        "DISPATCHER_ALERTS_OLDEST_READY_AGE_S": "0",
        "DISPATCHER_ALERTS_DLQ_GROWTH": "5",
        "DISPATCHER_ALERTS_DLQ_WINDOW_S": "60",
        "DISPATCHER_LOG_LEVEL": "WARNING",
        "DISPATCHER_LOG_FORMAT": "console",
    }
    inline = {"DISPATCHER_ADMIN_TOKEN", "DISPATCHER_SECURITY_ENCRYPTION_KEYS"}  # or the file
    assert set(environ) | inline == {env_name(s, k) for s, k in all_keys()}
    cfg = load(None, environ)
    flat_default = redacted(Config())
    flat = redacted(cfg)
    for section, key in all_keys():
        if (section, key) == ("admin", "token"):
            continue  # set through token_file here; a token and a token file exclude each other
        if (section, key) == ("security", "encryption_keys"):
            assert cfg.security.encryption_keys == (b"k" * 32,)  # through the file
            continue
        got, want = value_at(flat, section, key), value_at(flat_default, section, key)
        assert got != want, f"{section}.{key} not overridden"
    assert cfg.admin.token == FROM_FILE
    assert cfg.admin.token_file == token_file
    assert cfg.security.allowed_cidrs == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.0/24"),
    )
    assert cfg.log == LogConfig(level="warning", format="console")
    assert cfg.delivery.queues == ("slow", "default")
    assert cfg.redis.embedded_maxmemory == 512 * 1024**2
    assert cfg.delivery.http_client == "aiohttp"
    assert cfg.delivery.proxy_url == "http://egress:pw@proxy.internal:3128"
    assert value_at(flat, "delivery", "proxy_url") == "http://egress:***@proxy.internal:3128"
    assert cfg.tasks.modules == ("myapp.tasks", "other")
    assert cfg.dlq.auto_purge is True
    assert load(None, {"DISPATCHER_ADMIN_TOKEN": BEARER}).admin.token == BEARER


def test_task_modules_and_queues(tmp_path: Path) -> None:
    """tasks.modules is a list of module names; delivery.queues may not name a task queue."""
    cfg = load(write(tmp_path, '[tasks]\nmodules = ["myapp.tasks"]\n'), {})
    assert cfg.tasks.modules == ("myapp.tasks",)
    with pytest.raises(ConfigError, match="not a Python module name"):
        load(write(tmp_path, '[tasks]\nmodules = ["my-app"]\n'), {})
    with pytest.raises(ConfigError, match="task queues"):
        load(None, {"DISPATCHER_DELIVERY_QUEUES": "default,maintenance"})


def test_queues_in_file_must_be_queue_names(tmp_path: Path) -> None:
    """delivery.queues is a list of queue names; a bad name is named in the error."""
    assert load(write(tmp_path, '[delivery]\nqueues = ["a", "b-2"]\n'), {}).delivery.queues == (
        "a",
        "b-2",
    )
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, '[delivery]\nqueues = ["ok", "Not OK"]\n'), {})
    where = tmp_path / "dispatcher.toml"
    reason = "a queue name is 1-64 of a-z, 0-9, '_' or '-', starting with a letter or digit"
    assert caught.value.problems == [f'delivery.queues: "Not OK": {reason} (from {where})']
    with pytest.raises(ConfigError, match="expected at least one queue name"):
        load(write(tmp_path, "[delivery]\nqueues = []\n"), {})


def test_empty_environment_value_means_unset(tmp_path: Path) -> None:
    """An empty DISPATCHER_* value falls back to the file, or to the default."""
    path = write(tmp_path, "[delivery]\nmax_attempts = 3\n")
    cfg = load(path, {"DISPATCHER_DELIVERY_MAX_ATTEMPTS": "", "DISPATCHER_REDIS_PREFIX": ""})
    assert cfg.delivery.max_attempts == 3
    assert cfg.redis.prefix == "dispatcher"


def test_empty_listen_in_environment_disables_the_api(tmp_path: Path) -> None:
    """DISPATCHER_ADMIN_LISTEN= disables the admin API even when the file sets an address."""
    path = write(tmp_path, '[admin]\nlisten = "127.0.0.1:9999"\n')
    assert load(path, {"DISPATCHER_ADMIN_LISTEN": ""}).admin.listen is None


def test_empty_listen_in_file_disables_the_api(tmp_path: Path) -> None:
    """listen = "" in the file disables the admin API."""
    assert load(write(tmp_path, '[admin]\nlisten = ""\n'), {}).admin.listen is None


@pytest.mark.parametrize(
    "listen",
    ["127.0.0.1:8080", "[::1]:8080", "0.0.0.0:0", "localhost:65535", "[::]:1", "api.internal:80"],
)
def test_listen_accepts_host_port(listen: str) -> None:
    """admin.listen accepts host:port with a name, an IPv4 or a bracketed IPv6 host."""
    assert load(None, {"DISPATCHER_ADMIN_LISTEN": listen}).admin.listen == listen


def test_dispatcher_config_variable_is_not_an_unknown_key() -> None:
    """DISPATCHER_CONFIG is reserved for the CLI's config path and ignored by load()."""
    assert load(None, {"DISPATCHER_CONFIG": "/etc/x.toml", "OTHER": "1"}) == Config()


def test_token_file_content_becomes_the_token(tmp_path: Path) -> None:
    """admin.token_file is read at load and its stripped content is the token."""
    token_file = tmp_path / "token"
    token_file.write_text(f"  {BEARER}\n", encoding="utf-8")
    path = write(tmp_path, f'[admin]\ntoken_file = "{token_file}"\n')
    cfg = load(path, {})
    assert cfg.admin.token == BEARER
    assert cfg.admin.token_file == token_file


@pytest.mark.parametrize(
    "redis_url",
    [
        "redis://localhost",
        "rediss://u:p@h:6380/2",
        "unix:///run/redis.sock",
        "REDIS://h:1",
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
        "rediss+cluster://u:p@[::1]:7000,h",
        "redis+sentinel://s1:26379,s2:26380/mymaster",
        "redis+sentinel://:pw@s1,s2/mymaster/3",
    ],
)
def test_redis_url_schemes(redis_url: str) -> None:
    """redis.url accepts the redis, rediss and unix schemes, and the cluster and sentinel forms."""
    assert load(None, {"DISPATCHER_REDIS_URL": redis_url}).redis.url == redis_url


# --- bad values: one line per problem, naming the key and the source --------------------------


BAD_ENV = [
    (
        "DISPATCHER_DELIVERY_TIMEOUT_S",
        "abc",
        (
            'delivery.timeout_s: expected a number of seconds, got "abc" '
            "(from DISPATCHER_DELIVERY_TIMEOUT_S)"
        ),
    ),
    ("DISPATCHER_DELIVERY_TIMEOUT_S", "0", "delivery.timeout_s: must be a number of seconds > 0"),
    ("DISPATCHER_DELIVERY_TIMEOUT_S", "-1", "delivery.timeout_s: must be a number of seconds > 0"),
    ("DISPATCHER_DELIVERY_TIMEOUT_S", "nan", "delivery.timeout_s: must be a number of seconds"),
    ("DISPATCHER_DELIVERY_TIMEOUT_S", "inf", "delivery.timeout_s: must be a number of seconds"),
    ("DISPATCHER_DELIVERY_BACKOFF_CAP_S", "1e12", "delivery.backoff_cap_s: must be at most"),
    ("DISPATCHER_DLQ_RETENTION_S", "0", "dlq.retention_s: must be a number of seconds > 0"),
    ("DISPATCHER_JOBS_RETENTION_S", "1d", "jobs.retention_s: expected a number of seconds"),
    ("DISPATCHER_DELIVERY_CONCURRENCY", "1.5", "delivery.concurrency: expected an integer"),
    ("DISPATCHER_EVENTS_DEDUP_WINDOW_S", "-1", "events.dedup_window_s: must be between 0 and"),
    ("DISPATCHER_EVENTS_DEDUP_WINDOW_S", "86401", "events.dedup_window_s: must be between 0 and"),
    ("DISPATCHER_EVENTS_DEDUP_WINDOW_S", "1.5", "events.dedup_window_s: expected an integer"),
    ("DISPATCHER_DELIVERY_CONCURRENCY", "0", "delivery.concurrency: must be between 1 and 100000"),
    ("DISPATCHER_DELIVERY_CONCURRENCY", "100001", "delivery.concurrency: must be between 1"),
    ("DISPATCHER_DELIVERY_MAX_ATTEMPTS", "0", "delivery.max_attempts: must be >= 1, got 0"),
    ("DISPATCHER_DELIVERY_MAX_PAYLOAD_BYTES", "-5", "delivery.max_payload_bytes: must be >= 1"),
    (
        "DISPATCHER_SECURITY_ALLOW_PRIVATE_TARGETS",
        "yes",
        'security.allow_private_targets: expected true/false/1/0, got "yes"',
    ),
    (
        "DISPATCHER_SECURITY_ALLOWED_CIDRS",
        "10.0.0.1/8",
        'security.allowed_cidrs: "10.0.0.1/8" has host bits set; did you mean "10.0.0.0/8"?',
    ),
    (
        "DISPATCHER_SECURITY_ALLOWED_CIDRS",
        "10.0.0.0/8,nope",
        'security.allowed_cidrs: "nope" is not a CIDR',
    ),
    ("DISPATCHER_ADMIN_LISTEN", "8080", "admin.listen: expected host:port"),
    ("DISPATCHER_ADMIN_LISTEN", "127.0.0.1:99999", "admin.listen: expected host:port"),
    ("DISPATCHER_ADMIN_LISTEN", "::1:8080", "admin.listen: an IPv6 host needs brackets"),
    ("DISPATCHER_ADMIN_LISTEN", "[nope]:8080", "admin.listen: [nope] is not an IPv6 address"),
    ("DISPATCHER_ADMIN_LISTEN", ":8080", "admin.listen: expected a host name or IP address"),
    ("DISPATCHER_REDIS_URL", "redis+sentinel://h:26379", "redis.url: name the master's service"),
    ("DISPATCHER_REDIS_URL", "rediss+sentinel://h/m", "redis.url: unsupported scheme"),
    ("DISPATCHER_REDIS_URL", "redis+cluster://h:1,h:x", "redis.url: invalid port in 'h:x'"),
    ("DISPATCHER_REDIS_URL", "redis+cluster://h:1/2", "redis.url: a Redis Cluster has only"),
    ("DISPATCHER_REDIS_URL", "redis+cluster://h:1,,h:2", "redis.url: a host is missing"),
    ("DISPATCHER_REDIS_URL", "redis+cluster://h?ssl=1", "redis.url: a redis+cluster:// URL takes"),
    ("DISPATCHER_REDIS_URL", "redis+sentinel://h/m/x", "redis.url: the database after /m/"),
    ("DISPATCHER_REDIS_URL", "http://h", "redis.url: unsupported scheme"),
    ("DISPATCHER_REDIS_URL", "redis://h:port", "redis.url: invalid port"),
    ("DISPATCHER_REDIS_URL", "unix://", "redis.url: a unix:// URL needs a socket path"),
    ("DISPATCHER_REDIS_PREFIX", "a b", "redis.prefix: must not contain spaces or braces"),
    (
        "DISPATCHER_REDIS_EMBEDDED_MAXMEMORY",
        "lots",
        'redis.embedded_maxmemory: expected a size like "1gb", "512mb" or a number of bytes',
    ),
    ("DISPATCHER_REDIS_EMBEDDED_MAXMEMORY", "1.5gb", "redis.embedded_maxmemory: expected a size"),
    ("DISPATCHER_REDIS_EMBEDDED_MAXMEMORY", "-1gb", "redis.embedded_maxmemory: expected a size"),
    ("DISPATCHER_REDIS_EMBEDDED_MAXMEMORY", "1 gb", "redis.embedded_maxmemory: expected a size"),
    ("DISPATCHER_REDIS_EMBEDDED_MAXMEMORY", "2tb", "redis.embedded_maxmemory: expected a size"),
    (
        "DISPATCHER_REDIS_EMBEDDED_MAXMEMORY",
        "100kb",
        'redis.embedded_maxmemory: must be 0 (no limit) or at least 1mb, got "100kb"',
    ),
    (
        "DISPATCHER_REDIS_EMBEDDED_MAXMEMORY",
        "9223372036854775808",
        "redis.embedded_maxmemory: must be at most 9223372036854775807 bytes",
    ),
    ("DISPATCHER_REDIS_PREFIX", "{x}", "redis.prefix: must not contain spaces or braces"),
    ("DISPATCHER_LOG_LEVEL", "loud", "log.level: expected one of debug, info, warning, error"),
    ("DISPATCHER_LOG_FORMAT", "xml", "log.format: expected one of auto, json, console"),
    (
        "DISPATCHER_DELIVERY_HTTP_CLIENT",
        "curl",
        'delivery.http_client: expected one of native, aiohttp, got "curl"',
    ),
    ("DISPATCHER_ADMIN_TOKEN_FILE", "/nonexistent/token", "admin.token_file: cannot read"),
    (
        "DISPATCHER_DELIVERY_STALL_TIMEOUT_S",
        "15",
        "delivery.stall_timeout_s: must exceed delivery.timeout_s (15), got 15",
    ),
    (
        "DISPATCHER_DELIVERY_BACKOFF_CAP_S",
        "1",
        "delivery.backoff_cap_s: must be >= delivery.backoff_base_s (5), got 1",
    ),
]


@pytest.mark.parametrize(
    ("name", "value", "expected"), BAD_ENV, ids=[f"{n}={v}" for n, v, _ in BAD_ENV]
)
def test_bad_environment_value_is_one_named_problem(name: str, value: str, expected: str) -> None:
    """Each bad environment value yields exactly one one-line problem naming its key."""
    problems = problems_of(None, {name: value})
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems[0]
    assert "\n" not in problems[0]
    if "must exceed" not in expected and ">= delivery" not in expected:
        assert problems[0].endswith(f"(from {name})")


BAD_FILE = [
    ('[delivery]\nconcurrency = "8"', 'delivery.concurrency: expected an integer, got "8"'),
    ("[delivery]\nconcurrency = 8.0", "delivery.concurrency: expected an integer, got 8.0"),
    ("[delivery]\nmax_attempts = true", "delivery.max_attempts: expected an integer, got true"),
    ("[events]\ndedup_window_s = true", "events.dedup_window_s: expected an integer, got true"),
    ('[delivery]\ntimeout_s = "15"', "delivery.timeout_s: expected a number of seconds"),
    ("[delivery]\ntimeout_s = false", "delivery.timeout_s: expected a number of seconds"),
    ("[delivery]\ntimeout_s = nan", "delivery.timeout_s: must be a number of seconds > 0"),
    (
        "[security]\nallow_private_targets = 1",
        "security.allow_private_targets: expected true/false/1/0, got 1",
    ),
    (
        '[security]\nallowed_cidrs = "10.0.0.0/8"',
        "security.allowed_cidrs: expected a list of CIDR strings",
    ),
    ("[security]\nallowed_cidrs = [10]", "security.allowed_cidrs: expected CIDR strings, got 10"),
    ("[admin]\nlisten = 8080", "admin.listen: expected a string, got 8080"),
    ('[redis]\nprefix = ""', "redis.prefix: must not be empty"),
    ("[redis]\nembedded_maxmemory = 1.5", "redis.embedded_maxmemory: expected a size"),
    ("[redis]\nembedded_maxmemory = true", "redis.embedded_maxmemory: expected a size"),
    ("[redis]\nembedded_maxmemory = -1", "redis.embedded_maxmemory: expected a size"),
    ('[redis]\nembedded_maxmemory = "1k"', "redis.embedded_maxmemory: must be 0 (no limit)"),
    ('state_dir = ""', "state_dir: must not be empty"),
    ("state_dir = 3", "state_dir: expected a string, got 3"),
    ("[delivery]\ntimeout = 3", "delivery.timeout: unknown key (did you mean timeout_s?)"),
    (
        "[deliveries]\ntimeout_s = 3",
        "deliveries: unknown key or section in the config file (did you mean delivery?)",
    ),
    ("workers = 3", "workers: unknown key or section in the config file"),
    ("delivery = 3", "delivery: expected a table [delivery], got 3"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILE, ids=[e.split(":")[0] for _, e in BAD_FILE])
def test_bad_file_value_is_one_named_problem(tmp_path: Path, text: str, expected: str) -> None:
    """Each bad or unknown key in the file yields exactly one one-line problem naming it."""
    problems = problems_of(write(tmp_path, text + "\n"), {})
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems[0]
    assert "\n" not in problems[0]


def test_file_problem_names_the_file(tmp_path: Path) -> None:
    """A bad value from the file says which file it came from."""
    path = write(tmp_path, '[delivery]\ntimeout_s = "abc"\n')
    assert problems_of(path, {}) == [
        f'delivery.timeout_s: expected a number of seconds, got "abc" (from {path})'
    ]


def test_unknown_dispatcher_environment_variable_is_an_error() -> None:
    """A DISPATCHER_* variable that names no key is an error, with a suggestion when close."""
    problems = problems_of(None, {"DISPATCHER_REDIS_ULR": "redis://h", "DISPATCHER_FOO": "1"})
    assert problems == [
        "DISPATCHER_FOO: unknown environment variable",
        "DISPATCHER_REDIS_ULR: unknown environment variable (did you mean DISPATCHER_REDIS_URL?)",
    ]


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    """Every problem is collected, file and environment alike, instead of stopping at the first."""
    path = write(tmp_path, '[delivery]\nconcurrency = 0\nbogus = 1\n[log]\nlevel = "loud"\n')
    problems = problems_of(
        path,
        {
            "DISPATCHER_DELIVERY_TIMEOUT_S": "abc",
            "DISPATCHER_REDIS_URL": "memcached://h",
            "DISPATCHER_NOPE": "1",
        },
    )
    names = [p.split(":")[0] for p in problems]
    assert names == [
        "delivery.bogus",
        "redis.url",
        "delivery.concurrency",
        "delivery.timeout_s",
        "log.level",
        "DISPATCHER_NOPE",
    ]
    with pytest.raises(ConfigError) as info:
        load(
            path,
            {
                "DISPATCHER_DELIVERY_TIMEOUT_S": "abc",
                "DISPATCHER_REDIS_URL": "memcached://h",
                "DISPATCHER_NOPE": "1",
            },
        )
    assert str(info.value) == "\n".join(problems)
    assert info.value.exit_code == 2


def test_stall_timeout_must_exceed_timeout_and_says_why(tmp_path: Path) -> None:
    """stall_timeout_s <= timeout_s is an error explaining the double delivery it would cause."""
    path = write(tmp_path, "[delivery]\ntimeout_s = 30\nstall_timeout_s = 20\n")
    (problem,) = problems_of(path, {})
    assert problem.startswith("delivery.stall_timeout_s: must exceed delivery.timeout_s (30)")
    assert "reclaimed" in problem
    assert "sent twice" in problem


def test_cross_key_rules_skip_keys_that_are_already_wrong() -> None:
    """A bad timeout_s is reported once, without a misleading stall_timeout_s complaint."""
    problems = problems_of(
        None, {"DISPATCHER_DELIVERY_TIMEOUT_S": "x", "DISPATCHER_DELIVERY_STALL_TIMEOUT_S": "1"}
    )
    assert [p.split(":")[0] for p in problems] == ["delivery.timeout_s"]


def test_token_and_token_file_together_are_an_error(tmp_path: Path) -> None:
    """Setting both admin.token and admin.token_file is a problem."""
    token_file = tmp_path / "token"
    token_file.write_text("x", encoding="utf-8")
    (problem,) = problems_of(
        None, {"DISPATCHER_ADMIN_TOKEN": "y", "DISPATCHER_ADMIN_TOKEN_FILE": str(token_file)}
    )
    assert problem == "admin.token: admin.token and admin.token_file are both set; keep one"


def test_empty_token_file_is_an_error(tmp_path: Path) -> None:
    """A token file with only whitespace is a problem, not an empty token."""
    token_file = tmp_path / "token"
    token_file.write_text("\n", encoding="utf-8")
    (problem,) = problems_of(None, {"DISPATCHER_ADMIN_TOKEN_FILE": str(token_file)})
    assert problem == (
        f"admin.token_file: {token_file} is empty (from DISPATCHER_ADMIN_TOKEN_FILE)"
    )


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    """A config path that does not exist is a problem, not silently the defaults."""
    path = tmp_path / "missing.toml"
    assert problems_of(path, {}) == [f"{path}: config file not found"]


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    """A file that is not TOML is one problem naming the file."""
    path = write(tmp_path, "[delivery\n")
    (problem,) = problems_of(path, {})
    assert problem.startswith(f"{path}: invalid TOML:")


def test_redis_password_is_not_shown_in_problems() -> None:
    """A rejected redis.url is echoed with its password replaced by ***."""
    (problem,) = problems_of(None, {"DISPATCHER_REDIS_URL": "redis+sentinel://u:hunter2@h"})
    assert "hunter2" not in problem
    assert "u:***@h" in problem


def test_cluster_and_sentinel_passwords_are_redacted() -> None:
    """check-config shows cluster and sentinel URLs with their password replaced by ***."""
    for url, shown in [
        ("redis+cluster://u:pa55@h1:7000,h2:7001", "redis+cluster://u:***@h1:7000,h2:7001"),
        (
            "redis+sentinel://:pa55@s1,s2:26380/mymaster/1",
            "redis+sentinel://:***@s1,s2:26380/mymaster/1",
        ),
    ]:
        cfg = load(None, {"DISPATCHER_REDIS_URL": url})
        assert value_at(redacted(cfg), "redis", "url") == shown


def test_cluster_and_sentinel_urls_parse_into_their_parts() -> None:
    """The multi-host forms name every host, default ports, the service, db and credentials."""
    assert urls.parse("rediss+cluster://u:p%40ss@h1:7000,[::1]") == urls.ClusterUrl(
        (("h1", 7000), ("::1", 6379)), "u", "p@ss", tls=True
    )
    assert urls.parse("redis+sentinel://:pw@s1,s2:26380/my%20master/3") == urls.SentinelUrl(
        (("s1", 26379), ("s2", 26380)), "my master", 3, None, "pw"
    )
    assert urls.parse("redis://h:6379/0") is None


# --- redacted ---------------------------------------------------------------------------------


def test_redacted_hides_token_and_redis_password(tmp_path: Path) -> None:
    """redacted() shows every key as JSON with the token and the Redis password as ***."""
    cfg = load(
        None,
        {
            "DISPATCHER_ADMIN_TOKEN": "tok-123",
            "DISPATCHER_REDIS_URL": "rediss://user:pa55@redis.example:6380/0",
            "DISPATCHER_SECURITY_ALLOWED_CIDRS": "10.20.0.0/16",
        },
    )
    out = redacted(cfg)
    text = orjson.dumps(out).decode()
    assert "tok-123" not in text
    assert "pa55" not in text
    assert out["admin"] == {"listen": "127.0.0.1:8080", "token": "***", "token_file": None}
    assert out["redis"] == {
        "url": "rediss://user:***@redis.example:6380/0",
        "prefix": "dispatcher",
        "shards": 1,
        "embedded_maxmemory": 1024**3,
    }
    assert out["security"] == {
        "allow_private_targets": False,
        "allowed_cidrs": ["10.20.0.0/16"],
        "encryption_keys": [],
        "encryption_keys_file": None,
    }
    assert out["state_dir"] == "var"
    assert set(out) == {"state_dir", *SECTIONS}
    for section, cls in SECTIONS.items():
        shown = out[section]
        assert isinstance(shown, dict)
        assert set(shown) == {f.name for f in dataclasses.fields(cls)}


def test_redacted_without_secrets_shows_nulls() -> None:
    """With no token and no Redis URL, redacted() shows null for both."""
    out = redacted(Config())
    assert value_at(out, "admin", "token") is None
    assert value_at(out, "redis", "url") is None


def test_redacted_hides_password_in_query() -> None:
    """A unix:// URL's password= query parameter is redacted too."""
    cfg = load(None, {"DISPATCHER_REDIS_URL": "unix:///run/r.sock?db=1&password=pa55"})
    assert value_at(redacted(cfg), "redis", "url") == "unix:///run/r.sock?db=1&password=***"


# --- the example file -------------------------------------------------------------------------


def test_example_config_loads_and_equals_the_defaults() -> None:
    """etc/dispatcher.toml loads, and its values are the defaults (redis.url stays unset)."""
    assert load(EXAMPLE, {}) == Config()


def test_example_config_documents_every_key_and_its_variable() -> None:
    """Every key appears in etc/dispatcher.toml, set or commented out, with its env variable."""
    text = EXAMPLE.read_text(encoding="utf-8")
    for section, key in all_keys():
        assert re.search(rf"^(# )?{key} = ", text, re.MULTILINE), f"{section}.{key} missing"
        assert env_name(section, key) in text


def test_example_config_commented_keys_are_valid(tmp_path: Path) -> None:
    """Uncommenting the commented-out examples (one token form at a time) still loads."""
    token_file = tmp_path / "token"
    token_file.write_text("t", encoding="utf-8")
    text = EXAMPLE.read_text(encoding="utf-8")
    text = text.replace('# url = "', 'url = "').replace('# token = "', 'token = "')
    cfg = load(write(tmp_path, text), {})
    assert cfg.redis.url == "redis://127.0.0.1:6379/0"
    assert cfg.admin.token == EXAMPLE_BEARER


# --- alerts and reload ------------------------------------------------------------------------


def test_alert_thresholds_accept_zero_as_off(tmp_path: Path) -> None:
    """0 turns an alert off, from the file or the environment; the window must stay > 0."""
    path = write(tmp_path, "[alerts]\nqueued_max = 0\noldest_ready_age_s = 0\n")
    cfg = load(path, {"DISPATCHER_ALERTS_DLQ_GROWTH": "0"})
    assert (cfg.alerts.queued_max, cfg.alerts.oldest_ready_age_s, cfg.alerts.dlq_growth) == (
        0,
        0.0,
        0,
    )
    assert (
        load(None, {"DISPATCHER_ALERTS_OLDEST_READY_AGE_S": "0.0"}).alerts.oldest_ready_age_s == 0
    )
    problems = problems_of(
        None,
        {
            "DISPATCHER_ALERTS_OLDEST_READY_AGE_S": "-1",
            "DISPATCHER_ALERTS_QUEUED_MAX": "many",
            "DISPATCHER_ALERTS_DLQ_WINDOW_S": "0",
        },
    )
    assert len(problems) == 3
    assert any(
        p.startswith("alerts.oldest_ready_age_s:") and "0 to turn it off" in p for p in problems
    )
    assert any(p.startswith("alerts.queued_max:") for p in problems)
    assert any(p.startswith("alerts.dlq_window_s:") for p in problems)


def test_changed_keys_names_each_difference_and_with_keys_takes_only_those() -> None:
    """changed_keys lists dotted names; with_keys copies just the named values across."""
    old = load(None, {})
    new = load(
        None,
        {
            "DISPATCHER_LOG_LEVEL": "debug",
            "DISPATCHER_DELIVERY_MAX_ATTEMPTS": "3",
            "DISPATCHER_ADMIN_TOKEN": "t",
            "DISPATCHER_STATE_DIR": "/srv/d",
        },
    )
    assert changed_keys(old, new) == [
        "state_dir",
        "admin.token",
        "delivery.max_attempts",
        "log.level",
    ]
    mixed = with_keys(old, new, ["log.level", "delivery.max_attempts"])
    assert mixed.log.level == "debug"
    assert mixed.delivery.max_attempts == 3
    assert mixed.admin.token is None
    assert mixed.state_dir == old.state_dir
    assert changed_keys(mixed, new) == ["state_dir", "admin.token"]


# --- redis.embedded_maxmemory -----------------------------------------------------------------

MAXMEMORY_FORMS = [
    ('"1gb"', 1024**3),
    ('"512MB"', 512 * 1024**2),
    ('"2g"', 2 * 1000**3),
    ('" 1mb "', 1024**2),
    ('"1048576"', 1024**2),
    ("2147483648", 2 * 1024**3),
    ('"0"', 0),
    ("0", 0),
]


@pytest.mark.parametrize(("written", "size"), MAXMEMORY_FORMS, ids=[w for w, _ in MAXMEMORY_FORMS])
def test_embedded_maxmemory_takes_the_sizes_redis_takes(
    tmp_path: Path, written: str, size: int
) -> None:
    """redis.embedded_maxmemory is a number of bytes or a Redis size (kb/mb/gb are powers of
    1024, k/m/g of 1000), in the file or the environment; 0 means no limit."""
    assert load(write(tmp_path, f"[redis]\nembedded_maxmemory = {written}\n"), {}) == Config(
        redis=RedisConfig(embedded_maxmemory=size)
    )
    if written.startswith('"'):
        env = {"DISPATCHER_REDIS_EMBEDDED_MAXMEMORY": written.strip('"')}
        assert load(None, env).redis.embedded_maxmemory == size


def test_embedded_maxmemory_defaults_to_1gb_and_check_config_shows_it() -> None:
    """Unset, the embedded Redis gets 1gb; check-config's output names the key in bytes."""
    assert load(None, {}).redis.embedded_maxmemory == 1024**3
    shown = redacted(load(None, {"DISPATCHER_REDIS_EMBEDDED_MAXMEMORY": "64mb"}))
    assert value_at(shown, "redis", "embedded_maxmemory") == 64 * 1024**2


def test_a_changed_embedded_maxmemory_needs_a_restart() -> None:
    """A reload that changes redis.embedded_maxmemory names it among the keys a restart
    applies (config.reload_needs_restart), as it does for every key not applied live."""
    old = load(None, {})
    new = load(None, {"DISPATCHER_REDIS_EMBEDDED_MAXMEMORY": "2gb"})
    assert changed_keys(old, new) == ["redis.embedded_maxmemory"]
    assert "redis.embedded_maxmemory" not in LIVE_KEYS

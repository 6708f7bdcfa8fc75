"""The config's values: each parser turns one raw value into a typed one or says why not.

A parser takes a `Raw` (the value as written, where it came from, and whether it came from the
environment, where everything is a string) and returns the typed value or raises
`BadValueError` with one reason per problem line; `config.load` adds the key's name and the
origin to each. Nothing here knows the sections or reads the environment; the parsers with
a side effect are `token_file` and `encryption_keys_file`, which read the file they name. Also
here: `queue_names` (used by the CLI's ``--queues`` too), `redact_url` and `did_you_mean`;
`proxy_url` checks with `dispatcher.proxy.Proxy.parse`; `region` and `region_url` are the
parsers of the top-level ``region`` and of each ``[regions]`` entry.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from dispatcher.ids import is_region_name
from dispatcher.proxy import Proxy
from dispatcher.queue import urls

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
MAX_DURATION_S: Final = 10 * 365 * 86400.0  # ten years: keeps every `*_s` far from overflow
MIN_MAXMEMORY: Final = 1024**2  # below 1mb an empty Redis is already full
MAX_MAXMEMORY: Final = 2**63 - 1  # Redis keeps it in a signed 64-bit integer


class BadValueError(ValueError):
    """A parser's refusal: each reason becomes one problem line."""

    def __init__(self, *reasons: str) -> None:
        super().__init__(*reasons)
        self.reasons = reasons


@dataclass(frozen=True, slots=True)
class Raw:
    value: object  # a str from the environment, any TOML value from the file
    origin: str  # "from DISPATCHER_X" or "from path/to/file.toml"
    from_env: bool


T = TypeVar("T")
Parser = Callable[[Raw], T]


def show(value: object) -> str:
    """Render a raw value the way the user wrote it: strings quoted, booleans lower case."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def duration(raw: Raw) -> float:
    value = raw.value
    if raw.from_env and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadValueError(f"expected a number of seconds, got {show(raw.value)}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise BadValueError(f"must be a number of seconds > 0, got {show(raw.value)}")
    if seconds > MAX_DURATION_S:
        raise BadValueError(
            f"must be at most {MAX_DURATION_S:.0f} seconds (ten years), got {show(raw.value)}"
        )
    return seconds


def threshold_s(raw: Raw) -> float:
    """A duration where 0 means "off" (an alert threshold)."""
    value = raw.value
    if raw.from_env and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    try:
        return duration(raw)
    except BadValueError as bad:
        raise BadValueError(
            *(f"{reason} (or 0 to turn it off)" for reason in bad.reasons)
        ) from None


def integer(lo: int, hi: int | None = None) -> Parser[int]:
    def parse(raw: Raw) -> int:
        value = raw.value
        if raw.from_env and isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadValueError(f"expected an integer, got {show(raw.value)}")
        if value < lo or (hi is not None and value > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise BadValueError(f"must be {bounds}, got {value}")
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


def memory_size(raw: Raw) -> int:
    """A size in bytes, written as Redis writes ``maxmemory``: 1073741824, 512mb, 2gb;
    0 means no limit."""
    value = raw.value
    if isinstance(value, str) and (found := _SIZE.fullmatch(value.strip())):
        value = int(found[1]) * _SIZE_UNITS[(found[2] or "").lower()]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadValueError(
            f'expected a size like "1gb", "512mb" or a number of bytes (0: no limit), '
            f"got {show(raw.value)}"
        )
    if 0 < value < MIN_MAXMEMORY:
        raise BadValueError(f"must be 0 (no limit) or at least 1mb, got {show(raw.value)}")
    if value > MAX_MAXMEMORY:
        raise BadValueError(f"must be at most {MAX_MAXMEMORY} bytes, got {show(raw.value)}")
    return value


def boolean(raw: Raw) -> bool:
    if isinstance(raw.value, bool):
        return raw.value
    if raw.from_env and isinstance(raw.value, str):
        word = raw.value.strip().lower()
        if word in {"true", "1"}:
            return True
        if word in {"false", "0"}:
            return False
    raise BadValueError(f"expected true/false/1/0, got {show(raw.value)}")


def string(raw: Raw) -> str:
    if not isinstance(raw.value, str):
        raise BadValueError(f"expected a string, got {show(raw.value)}")
    return raw.value


def optional_string(raw: Raw) -> str | None:
    """A string where an empty value means unset (the file's ``key = ""`` like the env's)."""
    return string(raw) or None


def choice(choices: tuple[str, ...]) -> Parser[str]:
    def parse(raw: Raw) -> str:
        value = string(raw).strip().lower()
        if value not in choices:
            raise BadValueError(f"expected one of {', '.join(choices)}, got {show(raw.value)}")
        return value

    return parse


def state_dir(raw: Raw) -> Path:
    value = string(raw)
    if not value.strip():
        raise BadValueError("must not be empty")
    return Path(value).expanduser()


def prefix(raw: Raw) -> str:
    value = string(raw)
    if not value:
        raise BadValueError("must not be empty")
    if any(char.isspace() or char in "{}" for char in value):
        raise BadValueError(
            f"must not contain spaces or braces (keys add their own {{hash tag}}), "
            f"got {show(value)}"
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


def redis_url(raw: Raw) -> str | None:
    url = optional_string(raw)
    if url is None:
        return None
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    shown = show(redact_url(url))
    if scheme in urls.CLUSTER_SCHEMES + urls.SENTINEL_SCHEMES:
        try:
            urls.parse(url)
        except urls.UrlError as exc:
            raise BadValueError(f"{exc} in {shown}") from None
        return url
    if scheme not in REDIS_SCHEMES or "://" not in url:
        raise BadValueError(
            f"unsupported scheme in {shown}: use redis://, rediss://, unix://, "
            "redis+cluster://host:port,host:port or redis+sentinel://host:port,host:port/service"
        )
    if scheme == "unix" and not urlsplit(urls.absolute_unix(url)).path:
        raise BadValueError(
            f"a unix:// URL needs a socket path, e.g. unix:///run/redis.sock, got {shown}"
        )
    try:
        parts.port  # noqa: B018 - urlsplit only checks the port when asked
    except ValueError:
        raise BadValueError(f"invalid port in {shown}") from None
    return url


def region(raw: Raw) -> str | None:
    """A region name (``ids.REGION_PATTERN``): safe in job ids, key names and env names."""
    value = optional_string(raw)
    if value is not None and not is_region_name(value):
        raise BadValueError(
            f"a region name is a-z, then up to 15 of a-z, 0-9 or '_', got {show(value)}"
        )
    return value


def region_url(raw: Raw) -> str:
    """A ``[regions]`` entry: any form ``redis.url`` accepts, and never empty."""
    url = redis_url(raw)
    if url is None:
        raise BadValueError("must not be empty: each region needs its Redis URL")
    return url


def proxy_url(raw: Raw) -> str | None:
    """``delivery.proxy_url``: ``http://[user:pass@]host:port`` (the password never shown)."""
    url = optional_string(raw)
    if url is None:
        return None
    try:
        Proxy.parse(url)
    except ValueError as exc:
        raise BadValueError(str(exc)) from None
    return url


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def listen(raw: Raw) -> str | None:
    value = string(raw).strip()
    if not value:
        return None  # empty disables the admin API
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:  # noqa: PLR2004
        raise BadValueError(
            f"expected host:port with a port 0-65535 (IPv6 as [::1]:8080; empty disables "
            f"the API), got {show(raw.value)}"
        )
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise BadValueError(f"{host} is not an IPv6 address") from None
    elif ":" in host:
        raise BadValueError(f"an IPv6 host needs brackets, e.g. [::1]:8080, got {show(value)}")
    elif not _HOSTNAME.fullmatch(host):
        raise BadValueError(
            f"expected a host name or IP address before :{port} "
            f"(0.0.0.0 listens on every interface), got {show(raw.value)}"
        )
    return value


def _cidr(text: object) -> IPNetwork:
    if not isinstance(text, str):
        raise BadValueError(f"expected CIDR strings, got {show(text)}")
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise BadValueError(f'{show(text)} is not a CIDR (expected e.g. "10.20.0.0/16")') from None
    raise BadValueError(f'{show(text)} has host bits set; did you mean "{loose}"?')


def _list_items(value: object, *, from_env: bool, expected: str) -> list[object]:
    """The items of a list (TOML) or of a comma-separated string (environment)."""
    if from_env and isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list):
        return value
    raise BadValueError(f"expected {expected}, got {show(value)}")


def cidrs(raw: Raw) -> tuple[IPNetwork, ...]:
    items = _list_items(
        raw.value, from_env=raw.from_env, expected='a list of CIDR strings like ["10.20.0.0/16"]'
    )
    networks: list[IPNetwork] = []
    reasons: list[str] = []
    for item in items:
        try:
            networks.append(_cidr(item))
        except BadValueError as bad:
            reasons.extend(bad.reasons)
    if reasons:
        raise BadValueError(*reasons)
    return tuple(networks)


_QUEUE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def queue_names(value: object, *, from_env: bool = True) -> tuple[str, ...]:
    """Queue names from a list (TOML) or a comma-separated string (environment, ``--queues``)."""
    items = _list_items(value, from_env=from_env, expected='a list of queue names like ["default"]')
    bad = [item for item in items if not isinstance(item, str) or not _QUEUE_NAME.fullmatch(item)]
    if bad:
        raise BadValueError(
            f"{', '.join(show(b) for b in bad)}: a queue name is 1-64 of a-z, 0-9, '_' or '-', "
            "starting with a letter or digit"
        )
    if not items:
        raise BadValueError("expected at least one queue name")
    return tuple(dict.fromkeys(str(item) for item in items))


def queues(raw: Raw) -> tuple[str, ...]:
    return queue_names(raw.value, from_env=raw.from_env)


_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def module_names(raw: Raw) -> tuple[str, ...]:
    """Python module names from a list (TOML) or a comma-separated string (environment)."""
    items = _list_items(
        raw.value, from_env=raw.from_env, expected='a list of module names like ["myapp.tasks"]'
    )
    bad = [item for item in items if not isinstance(item, str) or not _MODULE.fullmatch(item)]
    if bad:
        raise BadValueError(f"{', '.join(show(b) for b in bad)}: not a Python module name")
    return tuple(dict.fromkeys(str(item) for item in items))


def _file_text(raw: Raw) -> tuple[Path, str]:
    """The path a value names and the file's text, read now."""
    text = optional_string(raw)
    if text is None:
        raise BadValueError("must not be empty")
    path = Path(text).expanduser()
    try:
        return path, path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadValueError(f"{path} is not UTF-8 text") from None


def token_file(raw: Raw) -> tuple[Path, str]:
    """The path and its stripped content: the file is read at load."""
    path, text = _file_text(raw)
    token = text.strip()
    if not token:
        raise BadValueError(f"{path} is empty")
    return path, token


_KEY_HINT: Final = "openssl rand -base64 32 makes one"


def key_list(items: list[object]) -> tuple[bytes, ...]:
    """Base64 32-byte keys, named by position only: a key is never echoed."""
    keys: list[bytes] = []
    reasons: list[str] = []
    for n, item in enumerate(items, 1):
        where = f"key {n} of {len(items)}"
        try:
            key = base64.b64decode(item, validate=True) if isinstance(item, str) else b""
        except ValueError:
            key = b""
        if len(key) != 32:  # noqa: PLR2004 - AES-256
            reasons.append(f"{where} is not base64 of 32 bytes ({_KEY_HINT})")
        elif key in keys:
            reasons.append(f"{where} repeats key {keys.index(key) + 1}")
        else:
            keys.append(key)
    if reasons:
        raise BadValueError(*reasons)
    return tuple(keys)


def encryption_keys(raw: Raw) -> tuple[bytes, ...]:
    """AES-256 keys from a list (TOML) or a comma-separated string (environment)."""
    items = _list_items(
        raw.value, from_env=raw.from_env, expected=f"a list of base64 keys ({_KEY_HINT})"
    )
    return key_list(items)


def encryption_keys_file(raw: Raw) -> tuple[Path, tuple[bytes, ...]]:
    """The path and its keys: one base64 key a line, ``#`` comments; read at load."""
    path, text = _file_text(raw)
    lines = text.splitlines()
    items: list[object] = [
        line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")
    ]
    if not items:
        raise BadValueError(f"{path} holds no key ({_KEY_HINT})")
    return path, key_list(items)


def did_you_mean(word: str, candidates: list[str], *, shared: str = "") -> str:
    """A hint naming the closest candidate, compared without the prefix ``shared`` they all
    start with (which would make any short word look close)."""
    tails = {name.removeprefix(shared): name for name in candidates}
    close = difflib.get_close_matches(word.removeprefix(shared), list(tails), n=1, cutoff=0.75)
    return f" (did you mean {tails[close[0]]}?)" if close else ""

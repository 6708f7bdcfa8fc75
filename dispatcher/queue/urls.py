"""The forms ``redis.url`` takes, parsed without redis-py, so ``config.py`` can check them too.

- ``redis://``, ``rediss://``, ``unix://``: one server, opened through redis-py's URL parser.
- ``redis+cluster://[user:password@]host:port[,host:port...]``: startup nodes of a Redis Cluster
  (``rediss+cluster://`` for TLS); the client learns the other nodes from them.
- ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``: the sentinels and
  the name of the master they watch. The userinfo authenticates to the master; the sentinels
  are reached without it.

Ports default to 6379 (cluster nodes) and 26379 (sentinels). Query options are refused in the
two multi-host forms rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote, unquote, urlsplit

CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES: Final = ("redis+sentinel",)
_MAX_PORT: Final = 65535


class UrlError(ValueError):
    """Why a cluster or sentinel URL cannot be used, in one line."""


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def scheme_of(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def absolute_unix(url: str) -> str:
    """``unix://var/redis.sock`` (relative to the working directory) as an absolute URL.

    A plain URL parser reads ``var`` there as a host and ``/redis.sock`` as the path, so a
    relative socket path would silently name another file. ``unix:///abs/path`` and
    ``unix://localhost/abs/path`` (a host-style form some tools write) are left as they are.
    """
    if scheme_of(url) != "unix":
        return url
    rest = url.partition("://")[2]
    location, question, query = rest.partition("?")
    userinfo, at, path = location.rpartition("@")
    if not path or path.startswith(("/", "localhost/")):
        return url
    # Quoted: redis-py unquotes the path, and a directory may hold "%", "#" or "?".
    absolute = quote(str(Path(unquote(path)).absolute()))
    return f"unix://{userinfo}{at}{absolute}{question}{query}"


def parse(url: str) -> ClusterUrl | SentinelUrl | None:
    """The cluster or sentinel form of ``url``; None for a single-server URL."""
    scheme = scheme_of(url)
    if scheme not in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        return None
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise UrlError(f"a {scheme}:// URL takes no query options")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    default_port = 26379 if scheme in SENTINEL_SCHEMES else 6379
    nodes = tuple(_node(text, default_port) for text in hosts.split(","))
    if scheme in CLUSTER_SCHEMES:
        if parts.path not in ("", "/", "/0"):
            raise UrlError("a Redis Cluster has only database 0: drop the path")
        return ClusterUrl(nodes, username, password, tls=scheme.startswith("rediss"))
    service, _, db = parts.path.strip("/").partition("/")
    if not service:
        raise UrlError("name the master's service after the sentinels, e.g. /mymaster")
    if db and not db.isdigit():
        raise UrlError(f"the database after /{service}/ must be a number, got {db!r}")
    return SentinelUrl(nodes, unquote(service), int(db or 0), username, password)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    return unquote(user) or None, unquote(password) if colon else None


def _node(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port``."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise UrlError(f"bad IPv6 host {text!r}: expected [address]:port")
        port = rest[1:]
    elif text.count(":") > 1:
        raise UrlError(f"an IPv6 host needs brackets, e.g. [::1]:7000, got {text!r}")
    else:
        host, _, port = text.partition(":")
    if not host:
        raise UrlError(f"a host is missing in {text!r} (hosts are separated by commas)")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) <= _MAX_PORT:
        raise UrlError(f"invalid port in {text!r}")
    return host, int(port)

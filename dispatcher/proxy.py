"""The egress proxy (``delivery.proxy_url``): its URL, the CONNECT tunnel, whose failure is whose.

With ``delivery.proxy_url = "http://[user:pass@]host:port"`` every delivery leaves through that
forward proxy: an https target through a ``CONNECT host:port`` tunnel (TLS with the target end
to end, the proxy sees only the host name), an http target as an absolute-form request
(``POST http://host:port/path``). The proxy is the operator's: its address is not checked
against the ``security.*`` policy, and target host names are not resolved here but by the
proxy; IP-literal targets are still refused by the policy before anything is sent.

Blame. A failure of the proxy itself is not the endpoint's, so it must not trip the endpoint's
breaker or shrink its traffic share: :class:`ProxyFailure` (the text starts "egress proxy
host:port: ", the outcome's ``blame`` is :data:`BLAME`) covers the TCP connection to the proxy
refused, reset or timed out, the proxy closing before a complete CONNECT answer, a malformed or
oversized answer, bytes after it, a 407 asking for credentials (with ``Proxy-Authenticate``)
and any other refusal of the tunnel that is not about the target. :class:`TunnelRefused` is
the endpoint's: the proxy answered the CONNECT 403 (its policy refused the destination, as
the address policy would; smokescreen says so with a 407 without ``Proxy-Authenticate``, taken
the same way) or 502/503/504 (it could not reach the target). So is everything after a tunnel
opens (TLS with the target, the answer), a deadline that runs out while the proxy dials the
target (a proxy gives up later than our deadline on a target that drops packets), and for an
http target the proxy's answer to the POST, which is the answer.

A refusal may also be the proxy refusing everything (squid's ``http_access deny all``,
smokescreen's "Client role cannot be determined"): neither proxy marks that apart from a refusal
of one destination (squid answers 403 ``X-Squid-Error: ERR_ACCESS_DENIED`` to both, smokescreen
407 ``X-Smokescreen-Error: Egress proxying is denied to host ...`` to both). So each sender keeps
a :class:`Record` of what the proxy did lately, and two answers are judged by it:

- a policy refusal of the CONNECT (403, or 407 without ``Proxy-Authenticate``) is the
  endpoint's, one destination refused however often, until the proxy has refused
  :data:`BROAD_REFUSALS` distinct destinations with nothing let through between them: from
  then on (until it lets a delivery through) it is the proxy's, so a proxy refusing everything
  opens no breaker;
- an http target's answer 407 with ``Proxy-Authenticate`` (the proxy, or an endpoint posing as
  one: it answers through the proxy) is the proxy's until the proxy has let a delivery through
  (so it takes our credentials), then the endpoint's, until the proxy itself asks for
  credentials on a CONNECT (an answer no endpoint can give). Not by how many destinations
  answer it: host names cost an endpoint's owner nothing, so endpoints cannot escape their
  breakers by answering 407 under several names.

A delivery is let through when the proxy opens a tunnel (CONNECT 2xx), an https target
answers through a tunnel (one kept open from before too: other webhooks' traffic on kept
connections opens no new tunnel, and must not leave the proxy blamed for refusals meanwhile),
or an http target's answer through it is a 2xx (each such request passes the proxy's policy
and credentials).

This module makes no HTTP exchange of its own beyond the CONNECT, for the native sender
(:mod:`dispatcher.sender`); :mod:`dispatcher.sender_aiohttp` lets aiohttp send it and maps its
errors with :func:`connect_refusal` and :func:`reason`.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import re
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, urlsplit

from dispatcher.http1 import HEAD_LIMIT_BYTES, SNIPPET_CHARS, Stated

if TYPE_CHECKING:
    from collections.abc import Callable

    from dispatcher.http1 import Target

__all__ = [
    "BLAME",
    "FAILURES_METRIC",
    "Proxy",
    "ProxyFailure",
    "TunnelRefused",
    "connect_refusal",
    "http_answer",
    "open_tunnel",
    "reason",
]

BLAME: Final = "proxy"  # Outcome.blame of a failure of the proxy itself
FAILURES_METRIC: Final = "dispatcher_proxy_failures_total"
#: CONNECT answers that are about the target, not the proxy: the endpoint's failure.
ENDPOINT_STATUSES: Final = frozenset({403, 502, 503, 504})
#: Distinct destinations refused with nothing let through between them, after which a
#: refusal is taken as the proxy refusing everything (:class:`Record`).
BROAD_REFUSALS: Final = 3
_POLICY: Final = 403  # a CONNECT refused by the proxy's policy (or 407 without a challenge)
_PROXY_AUTH: Final = 407
_DNS_CACHE_TTL_S: Final = 10.0
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?")


class Record:
    """What the proxy did lately, as one sender saw it: whether it has let a delivery through
    since the sender started, the destinations it refused since it last did (at most
    :data:`BROAD_REFUSALS`), and whether it asked for credentials on a CONNECT since.
    O(1) per answer; attempts without a proxy never touch it."""

    __slots__ = ("challenged", "passed", "refused")

    def __init__(self) -> None:
        self.passed = False
        self.challenged = False
        self.refused: set[str] = set()

    def let_through(self) -> None:
        """The proxy opened a tunnel, or carried an http delivery answered 2xx."""
        self.passed = True
        self.challenged = False
        if self.refused:
            self.refused.clear()

    def refusing_all(self, host: str) -> bool:
        """Note a refusal for ``host``; whether the proxy now looks like refusing everything
        (:data:`BROAD_REFUSALS` distinct destinations since it last let one through)."""
        refused = self.refused
        if len(refused) < BROAD_REFUSALS:
            refused.add(host)
        return len(refused) >= BROAD_REFUSALS


@dataclass(frozen=True, slots=True)
class Proxy:
    """A parsed ``delivery.proxy_url``; ``str()`` and ``repr()`` never show the password."""

    host: str
    port: int
    username: str = ""
    password: str = field(default="", repr=False)
    #: what this proxy did lately, as the sender that parsed it saw (blame of refusals)
    seen: Record = field(default_factory=Record, repr=False, compare=False)

    @classmethod
    def parse(cls, url: str) -> Proxy:
        """The proxy of ``http://[user:pass@]host:port``; ValueError says what is wrong
        without quoting the password."""
        shown = redact(url)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme != "http" or "://" not in url:
            hint = (
                "; an https:// or socks proxy is not supported (a CONNECT tunnel through an "
                "http:// proxy keeps TLS with the target end to end)"
                if scheme in {"https", "socks4", "socks5", "socks5h"}
                else ""
            )
            raise ValueError(f"must be http://[user:pass@]host:port, got {shown}{hint}")
        try:
            port = parts.port
        except ValueError:
            hint = " (percent-encode / ? # in the password)" if "@" in url else ""
            raise ValueError(f"invalid port in {shown}{hint}") from None
        host = parts.hostname
        if not host:
            raise ValueError(f"no host in {shown}")
        if port is None:
            raise ValueError(f"no port in {shown}: give host:port, e.g. http://proxy:3128")
        if port == 0:
            raise ValueError(f"invalid port in {shown}")
        if parts.path not in {"", "/"} or parts.query or parts.fragment:
            raise ValueError(f"a proxy URL has no path, query or fragment, got {shown}")
        username = unquote(parts.username or "")
        if ":" in username:  # Basic credentials are user:password, split at the first colon
            raise ValueError(f"the user name in {shown} holds a ':' (only the password may)")
        return cls(host, port, username, unquote(parts.password or ""))

    @property
    def label(self) -> str:
        """``host:port``, as errors and logs name the proxy."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL without credentials (aiohttp takes them apart)."""
        return f"http://{self.label}"

    @property
    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` value (Basic, UTF-8), None without credentials."""
        if not self.username and not self.password:
            return None
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def __str__(self) -> str:
        return self.url


def redact(url: str) -> str:
    """``url`` with the password of its userinfo replaced by ***."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostport = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hostport}"


class ProxyFailure(Stated):
    """The proxy itself failed: not the endpoint's (no breaker, no traffic-share change)."""

    blame = BLAME

    def __init__(self, proxy: Proxy, why: str) -> None:
        super().__init__(f"egress proxy {proxy.label}: {why}")


class TunnelRefused(Stated):
    """The proxy answered the CONNECT about the target (403, 502-504): the endpoint's failure."""

    def __init__(self, proxy: Proxy, status: int) -> None:
        why = (
            "refused the target (its policy)"
            if status in {403, 407}
            else "could not reach the target"
        )
        super().__init__(f"egress proxy {proxy.label} {why}: HTTP {status}")
        self.status = status


def connect_refusal(
    proxy: Proxy, status: int, phrase: str, *, challenge: bool, host: str
) -> Exception:
    """The exception for a CONNECT to ``host`` answered ``status`` (not 2xx); ``challenge``:
    the answer has a ``Proxy-Authenticate`` header (a 407 without one is a refusal of the
    target). A policy refusal is the proxy's once it refuses everything (:class:`Record`)."""
    if status == _POLICY or (status == _PROXY_AUTH and not challenge):
        if proxy.seen.refusing_all(host):
            return ProxyFailure(proxy, _refuses_all(status))
        return TunnelRefused(proxy, status)
    if status in ENDPOINT_STATUSES:
        return TunnelRefused(proxy, status)
    if status == _PROXY_AUTH:
        proxy.seen.challenged = True
        return credentials_refused(proxy)
    shown = " ".join(phrase.split())[:SNIPPET_CHARS]
    return ProxyFailure(proxy, f"refused the tunnel: HTTP {status}{' ' if shown else ''}{shown}")


def credentials_refused(proxy: Proxy) -> ProxyFailure:
    """The proxy asked for credentials (a 407 with ``Proxy-Authenticate``)."""
    given = "refused the proxy credentials" if proxy.authorization else "wants credentials"
    return ProxyFailure(proxy, f"{given} (HTTP 407; delivery.proxy_url user:pass@)")


def _refuses_all(status: int) -> str:
    return (
        f"refused the target (HTTP {status}) as it did {BROAD_REFUSALS} destinations in a row, "
        "none let through since: taken as refusing everything (its policy or configuration)"
    )


def http_answer(proxy: Proxy, status: int, *, challenge: bool) -> ProxyFailure | None:
    """An http target's answer ``status`` through the proxy (its request passed the proxy's
    policy and credentials when 2xx); the proxy's failure for a 407 asking for credentials
    (``challenge``) while the proxy is not seen taking ours (:class:`Record`), else None."""
    seen = proxy.seen
    if 200 <= status < 300:  # noqa: PLR2004
        seen.let_through()
    elif status == _PROXY_AUTH and challenge and (seen.challenged or not seen.passed):
        return credentials_refused(proxy)
    return None


def reason(exc: BaseException) -> str:
    """Why a connection to the proxy failed, in a few words."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError) or getattr(exc, "errno", None) == errno.ECONNRESET:
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return "DNS lookup failed"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return f"cannot connect: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


class _Tunnel(asyncio.Protocol):
    """Reads the proxy's answer to a CONNECT: one head, bounded, and nothing after it."""

    def __init__(self, proxy: Proxy, loop: asyncio.AbstractEventLoop) -> None:
        self.proxy = proxy
        self.buffer = bytearray()
        self.head: asyncio.Future[tuple[bytes, bytes]] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        if self.head.done():
            return  # the CONNECT has been judged; open_tunnel closes on stray bytes
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end >= 0 and end + 4 <= HEAD_LIMIT_BYTES:
            self.head.set_result((bytes(self.buffer[:end]), bytes(self.buffer[end + 4 :])))
            if self.transport is not None:
                self.transport.pause_reading()
        elif len(self.buffer) > HEAD_LIMIT_BYTES:
            why = f"its CONNECT answer exceeds {HEAD_LIMIT_BYTES} bytes"
            self.head.set_exception(ProxyFailure(self.proxy, why))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            why = "closed the connection before answering CONNECT"
            if exc is not None:
                why = f"{reason(exc)} before answering CONNECT"
            self.head.set_exception(ProxyFailure(self.proxy, why))


class Dialler:
    """Connections to one proxy: its address (resolved without the policy, cached 10 s) and
    the CONNECT tunnel; the native sender's half of the proxy."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self._dns: tuple[float, list[str]] = (0.0, [])
        self._cut_off: set[asyncio.Task[object]] = set()
        #: the request head an http target gets through the proxy, per target origin line
        auth = proxy.authorization
        self.auth_line = f"Proxy-Authorization: {auth}\r\n".encode() if auth else b""

    async def connect(
        self, loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol]
    ) -> asyncio.Transport:
        """A TCP connection to the proxy with ``factory``'s protocol; ProxyFailure else."""
        last: BaseException | None = None
        try:
            for address in await self._addresses(loop):
                try:
                    transport, _ = await loop.create_connection(factory, address, self.proxy.port)
                except OSError as exc:
                    last = exc
                    continue
                return transport
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                self._cut_off.add(task)  # the deadline (or a stop) came while dialling us
            raise
        raise ProxyFailure(self.proxy, reason(last) if last else "no address") from last

    def cut_off(self, task: asyncio.Task[object]) -> bool:
        """Whether ``task`` was cancelled while it dialled the proxy (forgotten once asked):
        an attempt whose deadline ran out then is the proxy's failure, not the endpoint's."""
        if task in self._cut_off:
            self._cut_off.discard(task)
            return True
        return False

    async def _addresses(self, loop: asyncio.AbstractEventLoop) -> list[str]:
        until, addresses = self._dns
        now = time.monotonic()
        if until > now:
            return addresses
        try:
            infos = await loop.getaddrinfo(
                self.proxy.host, self.proxy.port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise ProxyFailure(self.proxy, reason(exc)) from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        self._dns = (now + _DNS_CACHE_TTL_S, addresses)
        return addresses


async def open_tunnel(
    loop: asyncio.AbstractEventLoop, dialler: Dialler, target: Target
) -> asyncio.Transport:
    """A transport to ``target`` through the proxy: CONNECT sent, a 2xx read, nothing more.

    Raises :class:`ProxyFailure` or :class:`TunnelRefused`; the caller starts TLS on it."""
    proxy = dialler.proxy
    tunnel = _Tunnel(proxy, loop)
    transport = await dialler.connect(loop, lambda: tunnel)
    try:
        authority = (
            f"[{target.host}]:{target.port}"
            if ":" in target.host
            else (f"{target.host}:{target.port}")
        )
        transport.write(
            f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n".encode("ascii")
            + dialler.auth_line
            + b"\r\n"
        )
        head, rest = await tunnel.head
        stray = bool(rest) or len(tunnel.buffer) > len(head) + 4
        _judge(proxy, head, stray=stray, host=target.host)
    except BaseException:
        transport.close()
        raise
    return transport


def _judge(proxy: Proxy, head: bytes, *, stray: bool, host: str) -> None:
    """Raise unless ``head`` is a 2xx answer to the CONNECT to ``host`` with nothing after
    it; a 2xx is a delivery the proxy let through."""
    status_line = head.split(b"\r\n", 1)[0]
    matched = _STATUS_LINE.fullmatch(status_line)
    if matched is None:
        shown = status_line[:SNIPPET_CHARS].decode("latin-1")
        raise ProxyFailure(proxy, f"malformed CONNECT answer: {shown!r}")
    status = int(matched.group(1))
    if not 200 <= status < 300:  # noqa: PLR2004
        phrase = (matched.group(2) or b"").decode("latin-1")
        challenge = b"\nproxy-authenticate:" in head.lower()
        raise connect_refusal(proxy, status, phrase, challenge=challenge, host=host)
    if stray:
        raise ProxyFailure(proxy, "sent data after its CONNECT answer")
    proxy.seen.let_through()

"""How a delivery reaches its webhook: the per-webhook TLS context and OAuth2 settings.

A :class:`Channel` is what a sender needs beyond the URL: its own SSL context (a private CA,
a client certificate for mTLS), a pool key so that connections made with one client identity
never carry another webhook's deliveries, and the OAuth2 client credentials a token is fetched
with (oauth.py). :class:`Channels` keeps one per webhook, built once and rebuilt only when the
webhook's ``tls`` or ``auth`` changes: an SSL context costs milliseconds, an attempt should not.
A webhook with neither gets :data:`PLAIN` after two attribute reads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import orjson

from dispatcher import tlsconf
from dispatcher.errors import InvalidField

if TYPE_CHECKING:
    import ssl

    from dispatcher.model import Webhook

#: Webhooks whose channels are kept; past it the oldest kept is dropped (and rebuilt if used).
CHANNELS_KEPT: Final = 10_000


@dataclass(frozen=True, slots=True)
class OAuthSpec:
    """The OAuth2 client credentials one webhook's token is fetched with."""

    #: The token cache's key: the webhook id and a digest of everything below, so changed
    #: credentials never reuse a token fetched with the old ones.
    key: str
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class Channel:
    """What a sender needs, beyond the URL, to deliver to one webhook."""

    #: Separates the native sender's idle connections: "" (shared by every webhook) without
    #: its own TLS settings, else a digest of them.
    pool_key: str = ""
    #: The SSL context its https connections are made with; None: the sender's default.
    tls: ssl.SSLContext | None = None
    oauth: OAuthSpec | None = None


#: The channel of a webhook with neither ``tls`` nor ``auth``.
PLAIN: Final = Channel()


class ChannelError(Exception):
    """A webhook's stored settings no longer make a channel (a certificate OpenSSL now
    refuses): its attempts fail with this text, as a connection error would."""


class Channels:
    """One :class:`Channel` per webhook, built on first use and when its settings change."""

    def __init__(self, limit: int = CHANNELS_KEPT) -> None:
        self._limit = limit
        # webhook id -> (its tls, its auth, the channel built from them)
        self._kept: dict[str, tuple[object, object, Channel]] = {}
        self.built = 0  # SSL contexts built (a test counts them)

    def of(self, hook: Webhook) -> Channel:
        """The channel of ``hook`` as it is now."""
        tls, auth = hook.tls, hook.auth
        if tls is None and auth is None:
            return PLAIN
        kept = self._kept.get(hook.id)
        if kept is not None and kept[0] == tls and kept[1] == auth:
            return kept[2]
        channel = self._build(hook)
        if kept is None and len(self._kept) >= self._limit:
            del self._kept[next(iter(self._kept))]
        self._kept[hook.id] = (tls, auth, channel)
        return channel

    def _build(self, hook: Webhook) -> Channel:
        context = None
        pool_key = ""
        if hook.tls is not None:
            try:
                context = _tls_context(hook.tls)
            except (InvalidField, ValueError, OSError) as exc:  # ssl.SSLError is an OSError
                raise ChannelError(f"the webhook's tls settings do not load: {exc}") from exc
            self.built += 1
            pool_key = _digest(hook.tls)
        oauth = _oauth_spec(hook.id, hook.auth) if hook.auth is not None else None
        return Channel(pool_key=pool_key, tls=context, oauth=oauth)


def _digest(value: object) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def _oauth_spec(webhook_id: str, auth: dict[str, str]) -> OAuthSpec:
    """The OAuth2 client credentials of a webhook's (checked) ``auth``; ChannelError for one
    this release cannot use (another type, written by a newer release during an upgrade)."""
    kind = auth.get("type")
    if kind != "oauth2_client_credentials":
        raise ChannelError(f"the webhook's auth type {str(kind)[:64]!r} is not known here")
    missing = [n for n in ("token_url", "client_id", "client_secret") if n not in auth]
    if missing:
        raise ChannelError(f"the webhook's auth has no {missing[0]}")
    return OAuthSpec(
        key=f"{webhook_id}:{_digest(auth)}",
        token_url=auth["token_url"],
        client_id=auth["client_id"],
        client_secret=auth["client_secret"],
        scope=auth.get("scope"),
    )


def _tls_context(tls: dict[str, str]) -> ssl.SSLContext:
    """The SSL context of a webhook's (checked) ``tls`` settings (shared with the webhooks
    whose settings are the same)."""
    return tlsconf.shared_context(tls)

"""Webhooks and jobs: the records, their wire form, the checks on their fields, and the
changes of a job's state.

How a job is stored in Redis (the record, the locator of a job never attempted, the ready-stream
entry) is ``queue/codec.py``'s; ids and stream names are ``ids.py``'s.

A webhook's ``filter`` is a payload filter in a Mongo-like subset (``$eq $ne $gt $gte $lt $lte
$in $nin $exists $and $or $not``, dotted paths, a plain value meaning ``$eq``), evaluated at
publish: types are strict (a comparison across types is false), a missing path matches only
``$exists: false``, ``$ne`` and ``$nin``, arrays are not traversed, and numbers are doubles.
``filters.py`` states it exactly, with its bounds (depth 8, 64 conditions, 4 KB).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlsplit

import orjson

from dispatcher import filters, tlsconf
from dispatcher.crypto import Undecryptable
from dispatcher.errors import EncryptionKeyMissing, InvalidField
from dispatcher.ids import TASK_QUEUES, TASK_WEBHOOK, is_region_name, new_webhook_id, queue_of
from dispatcher.signing import (
    SCHEMES,
    SIGNING_KEY_PREFIX,
    generate_key,
    generate_secret,
    public_key_of,
    scheme_of,
    valid_secret,
    valid_signing_key,
)

if TYPE_CHECKING:
    from dispatcher.crypto import Keyring

_QUEUE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "user-agent",
        "host",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "accept-encoding",
        "transfer-encoding",
        "proxy-authorization",  # the egress proxy's (delivery.proxy_url): never a tenant's
    }
)
MAX_ID_TEXT = 256
MAX_EVENT_TYPES = 256  # per webhook
MAX_IN_FLIGHT_CAP = 100_000  # the largest max_in_flight a webhook may ask for
MAX_HEADERS = 32  # custom headers per webhook
MAX_HEADER_VALUE = 4096  # characters in one custom header value


class JobState(StrEnum):
    QUEUED = "queued"
    ACTIVE = "active"
    SCHEDULED = "scheduled"
    DELIVERED = "delivered"
    DEAD = "dead"


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


TERMINAL_STATES = frozenset({JobState.DELIVERED, JobState.DEAD})


def time_ms(name: str, value: object) -> int | None:
    """An aware ``datetime`` or an RFC 3339 string with a zone, in epoch ms (None stays None).

    ``value`` is an ``object``: callers of the public API are not always type-checked. A time
    without a zone is refused with the fix in the message: its moment depends on the host.
    """
    if value is None:
        return None
    text = isinstance(value, str)
    if text:
        try:
            value = datetime.fromisoformat(value)  # type: ignore[arg-type]
        except ValueError as exc:
            example = '"2030-01-01T09:00:00Z"'
            raise InvalidField(name, f"must be an RFC 3339 time, e.g. {example}") from exc
    if not isinstance(value, datetime):
        raise InvalidField(name, "must be a datetime with a time zone or an RFC 3339 string")
    if value.tzinfo is None:
        example = (
            'end it with Z or an offset, e.g. "2030-01-01T09:00:00Z"'
            if text
            else "e.g. datetime(2030, 1, 1, 9, 0, tzinfo=timezone.utc)"
        )
        raise InvalidField(name, f"has no time zone, so its moment is ambiguous: {example}")
    try:
        return int(value.timestamp() * 1000)
    except (OverflowError, ValueError, OSError) as exc:
        raise InvalidField(name, "is out of range") from exc


def rfc3339(ms: int | None) -> str | None:
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


#: ``waiting_for`` of a job queued behind its FIFO lane's head.
ORDERING = "ordering"


# --- jobs ------------------------------------------------------------------------------


@dataclass(slots=True)
class Job:
    id: str
    webhook_id: str
    tenant_id: str
    event_type: str
    stream: str  # the queue's stream for this job's priority: ``Q``, ``Q:high`` or ``Q:low``
    event_id: str
    state: JobState
    attempt: int
    stalls: int
    created_at_ms: int
    payload: bytes
    priority: str = Priority.NORMAL
    processed_at_ms: int | None = None
    finished_at_ms: int | None = None
    next_attempt_at_ms: int | None = None
    last_error: str | None = None
    last_status: int | None = None
    sid: str | None = None
    dlq_id: str | None = None
    reason: str | None = None
    waiting: str | None = None  # why a scheduled job waits without an attempt (traffic control)
    #: The key of its FIFO lane (keys.lane), for a job of a webhook with ``ordering: fifo``.
    lane: str | None = None
    reserved_ms: int | None = None  # the rate-limit slot reserved for it
    history: list[list[Any]] = field(default_factory=list)

    # --- transitions: what each outcome changes in the job before it is settled --------------

    def attempted(
        self, started_ms: int, status: int | None, duration_ms: float, error: str | None
    ) -> list[Any]:
        """An attempt was made: it counts, ends any wait, and joins the history (returned)."""
        self.waiting = None
        self.reserved_ms = None
        self.attempt += 1
        self.processed_at_ms = started_ms
        self.last_status = status
        self.last_error = error
        entry = [started_ms, status, round(duration_ms, 1), error, 0]
        self.history.append(entry)
        return entry

    def delivered(self, at_ms: int) -> None:
        self.state = JobState.DELIVERED
        self.finished_at_ms = at_ms
        self.next_attempt_at_ms = None

    def retry(self, due_ms: int) -> None:
        """Scheduled for another attempt after a failed one."""
        self.state = JobState.SCHEDULED
        self.next_attempt_at_ms = due_ms

    def defer(self, due_ms: int | None, reason: str, reserved_ms: int | None) -> None:
        """Put back without an attempt: due at ``due_ms``, or (None) waiting for room; the
        rate slot ``reserved_ms`` it holds stays its own (admit.lua)."""
        self.state = JobState.SCHEDULED
        self.next_attempt_at_ms = due_ms
        self.waiting = reason
        self.reserved_ms = reserved_ms

    def park(self, retry_at_ms: int | None) -> None:
        """Kept until its webhook's breaker closes (a rate slot it holds stays its own)."""
        self.state = JobState.SCHEDULED
        self.next_attempt_at_ms = retry_at_ms
        self.waiting = "breaker"

    def hold(self) -> None:
        """Kept while its webhook is paused; a rate slot it held is given up, so a resumed
        backlog goes out within the webhook's rate limit."""
        self.state = JobState.SCHEDULED
        self.next_attempt_at_ms = None
        self.waiting = "paused"
        self.reserved_ms = None

    def dead(self, reason: str, at_ms: int, *, error: str | None = None) -> None:
        """Dead-lettered for ``reason``; ``error`` replaces the last error when given (a job
        that dies without an attempt says why)."""
        self.state = JobState.DEAD
        self.finished_at_ms = at_ms
        self.next_attempt_at_ms = None
        self.reason = reason
        if error is not None:
            self.last_error = error

    @property
    def is_task(self) -> bool:
        """A task job (queue/tasks.py), not a delivery."""
        return self.webhook_id == TASK_WEBHOOK

    def to_wire(
        self, *, state: JobState | None = None, with_payload: bool = False
    ) -> dict[str, Any]:
        """The job as the admin API and ``Client.get_job`` show it. A task job shows
        ``kind: "task"``, no webhook nor tenant (null), and its task's name as event type."""
        task = self.is_task
        wire: dict[str, Any] = {
            "id": self.id,
            "kind": "task" if task else "webhook",
            "event_id": self.event_id,
            "webhook_id": None if task else self.webhook_id,
            "tenant_id": None if task else self.tenant_id,
            "event_type": self.event_type,
            "queue": queue_of(self.stream),
            "priority": self.priority,
            "state": (state or self.state).value,
            "attempt": self.attempt,
            "stalls": self.stalls,
            "created_at": rfc3339(self.created_at_ms),
            "processed_at": rfc3339(self.processed_at_ms),
            "finished_at": rfc3339(self.finished_at_ms),
            "next_attempt_at": rfc3339(self.next_attempt_at_ms),
            "last_error": self.last_error,
            "last_status": self.last_status,
            "dead_reason": self.reason,
            "waiting_for": self._waiting_for(state or self.state),
            "attempts": [_attempt_wire(a) for a in self.history],
        }
        if with_payload:
            wire["payload"] = orjson.Fragment(self.payload) if self.payload else None
        return wire

    def _waiting_for(self, state: JobState) -> str | None:
        """Why it waits: traffic control (scheduled), or behind its FIFO lane's head."""
        if state is JobState.SCHEDULED or (state is JobState.QUEUED and self.waiting == ORDERING):
            return self.waiting
        return None


def _attempt_wire(entry: list[Any]) -> dict[str, Any]:
    at_ms, status, duration_ms, error, *rest = entry
    wire = {"at": rfc3339(at_ms), "status": status, "duration_ms": duration_ms, "error": error}
    if rest and rest[0]:
        wire["late"] = True
    return wire


# --- webhooks --------------------------------------------------------------------------

CREATABLE = frozenset(
    {
        "tenant_id",
        "url",
        "event_types",
        "secret",
        "rate_limit",
        "max_in_flight",
        "queue",
        "headers",
        "description",
        "paused",
        "filter",
        "ordering",
        "signature_scheme",
        "tls",
        "auth",
        "region",
    }
)
PATCHABLE = CREATABLE | {"enabled"}

#: How a write-only value is answered; sent back in a PATCH it keeps the stored value.
MASK: Final = "***"
#: Fields sealed whole at rest (crypto.py), blank in the clear record.
SEALED_FIELDS: Final = {"secret": "", "old_secrets": []}
#: Object fields whose values are sealed at rest and answered as MASK: the keys listed, or
#: every key (None). A new sensitive value (a client key, an OAuth client secret) is one row.
SEALED_VALUES: Final[dict[str, tuple[str, ...] | None]] = {
    "headers": None,
    "tls": ("client_key_pem",),
    "auth": ("client_secret",),
}


@dataclass(slots=True)
class Webhook:
    id: str
    tenant_id: str
    url: str
    event_types: list[str]
    secret: str = field(repr=False)  # never in a traceback or a log line (nor below)
    enabled: bool = True
    disabled_reason: str | None = None
    old_secrets: list[list[Any]] = field(default_factory=list, repr=False)  # [[secret, until_ms]]
    rate_limit: dict[str, float] | None = None
    max_in_flight: int | None = None
    queue: str = "default"
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    description: str = ""
    #: A payload filter (filters.py documents the language and its bounds): an event it does
    #: not match gets no job for this webhook. None: every event of its types.
    filter: dict[str, Any] | None = None
    ordering: str = "none"  # "fifo": one job in flight per lane (ordering_key), in publish order
    created_at_ms: int = 0
    updated_at_ms: int = 0
    paused: bool = False  # its jobs are held, without attempts, until it is resumed
    #: "v1" (HMAC, a whsec_ secret) or "v1a" (Ed25519, a whsk_ signing key): always the
    #: scheme of ``secret``; kept beside it so that it reads without the secret.
    signature_scheme: str = "v1"
    #: Its own TLS settings {ca_pem, client_cert_pem, client_key_pem} (channel.py makes the
    #: context): a private CA it alone trusts, a client certificate for mTLS. None: the defaults.
    tls: dict[str, str] | None = field(default=None, repr=False)
    #: How it authorises each delivery: {type: "oauth2_client_credentials", token_url,
    #: client_id, client_secret, scope?} (oauth.py fetches and caches the token). None: nothing.
    auth: dict[str, str] | None = field(default=None, repr=False)
    #: Resumed, its held jobs going back (internal, not in answers): 1 while any is held, 2
    #: once none was at the last release call, 0 at the next. Meanwhile its other jobs never
    #: attempted are held too, so the backlog goes out in accepted order (pauses.py).
    draining: int = 0
    #: The sealed blob of its secrets when this process could not open it (no key, or not
    #: the one it was sealed with): its secrets and header values are unknown here, so it
    #: neither signs nor writes them (``EncryptionKeyMissing``). None once opened, or plain.
    sealed: str | None = field(default=None, repr=False)
    #: The ``whpk_`` public key of a v1a webhook's signing key, stored in the clear beside
    #: the sealed key (``encode`` derives it), so a process that cannot open the key still
    #: answers it; None for v1, and in records written before it was stored.
    public_key: str | None = None
    #: The region whose Redis holds its jobs and whose daemons deliver them (docs/regions.md),
    #: one of ``[regions]``; None without regions, and in a record written before them, where
    #: it means the region of the Redis that holds the record.
    region: str | None = None

    @classmethod
    def create(cls, fields: dict[str, Any], *, now_ms: int, shards: int = 1) -> Webhook:
        unknown = set(fields) - CREATABLE
        if unknown:
            raise InvalidField(min(unknown), "is not a webhook field")
        for required in ("tenant_id", "url"):
            if required not in fields:
                raise InvalidField(required, "is required")
        hook = cls(
            id=new_webhook_id(shards),
            tenant_id="",
            url="",
            event_types=["*"],
            secret=generate_secret(),
            created_at_ms=now_ms,
            updated_at_ms=now_ms,
        )
        hook.apply({k: v for k, v in fields.items() if k not in _KEY_FIELDS})
        # the secret and its scheme together, checked against each other (none: generated)
        keys = {k: fields[k] for k in _KEY_FIELDS if k in fields}
        if keys.get("secret", "") is None:  # null: generated, as when absent
            del keys["secret"]
        if keys:
            hook.apply(keys)
        return hook

    def apply(self, changes: dict[str, Any]) -> None:
        """Validate and set fields (create or PATCH); raises InvalidField, changing nothing."""
        changes = self._kept(changes)
        unknown = set(changes) - PATCHABLE
        if unknown:
            raise InvalidField(min(unknown), "is not a webhook field")
        checked = {name: _CHECKS[name](value) for name, value in changes.items()}
        if "secret" in checked or "signature_scheme" in checked:
            checked.update(_signing_key(self, checked))
        for name, value in checked.items():
            setattr(self, name, value)
        if checked.get("enabled") is True:
            self.disabled_reason = None

    def _kept(self, changes: dict[str, Any]) -> dict[str, Any]:
        """``changes`` with each write-only value sent back as MASK replaced by the stored one,
        so an answer edited and sent back as a PATCH keeps them."""
        kept = changes
        for name, keys in SEALED_VALUES.items():
            sent = changes.get(name)
            if not isinstance(sent, dict) or MASK not in sent.values():
                continue
            stored = getattr(self, name, None) or {}
            value = dict(sent)
            for key, item in sent.items():
                if item != MASK or (keys is not None and key not in keys):
                    continue
                if key not in stored:
                    raise InvalidField(name, f"{key!r} has no stored value to keep")
                value[key] = stored[key]
            kept = {**kept, name: value}
        return kept

    def secrets(self, now_ms: int) -> list[str]:
        """The secrets that sign a delivery now: the current one and those in their grace."""
        if self.sealed is not None:
            raise EncryptionKeyMissing
        return [self.secret] + [s for s, until in self.old_secrets if until > now_ms]

    def routing(self) -> bytes:
        route: dict[str, Any] = {"e": self.event_types, "on": self.enabled, "q": self.queue}
        compiled = filters.compile_filter(self.filter) if self.filter else None
        if compiled is not None:  # only when set: the route of an unfiltered webhook is as before
            route["f"] = compiled
        if self.ordering == "fifo":
            route["o"] = 1  # publish.lua puts its jobs in lanes (only then: none costs nothing)
        if self.region is not None:
            route["r"] = self.region  # publish.lua: another region's jobs go to its outbox
        return orjson.dumps(route)

    def encode(self, keyring: Keyring | None = None) -> bytes:
        """The record as stored; with a keyring its secrets and write-only values are sealed
        (``_seal``), the clear record keeping their names (Lua reads none of them)."""
        record = _slots(self)
        sealed = record.pop("sealed")
        if sealed is not None:  # never opened here: kept as it is, or EncryptionKeyMissing
            record["sealed"] = _keep_sealed(record, sealed)
        elif keyring is not None:
            record["sealed"] = _seal(record, keyring, self.id)
        record["public_key"] = _public_key(self)  # receivers need it; it is not secret
        # fields left out at their defaults, so a release before them still reads the record
        for name, default in _LEFT_OUT.items():
            if record[name] == default:
                del record[name]
        # last when set: pause_release.lua drops it by cutting the record's end
        del record["draining"]
        if self.draining:
            record["draining"] = self.draining
        return orjson.dumps(record)

    @classmethod
    def decode(cls, raw: bytes, keyring: Keyring | None = None) -> Webhook:
        """The stored webhook; fields this release does not know (written by a newer one during
        a rolling upgrade) are left out rather than making the record unreadable, which would
        dead-letter the webhook's jobs as if it were deleted.

        Sealed secrets are opened with ``keyring`` (through its cache: the hot path decodes
        every claimed job's webhook); when no key opens them, ``sealed`` keeps the blob and
        the webhook cannot sign (the gate makes its jobs wait)."""
        stored = orjson.loads(raw)
        try:
            hook = cls(**stored)
        except TypeError:
            known = _webhook_fields()
            hook = cls(**{k: v for k, v in stored.items() if k in known})
        if hook.sealed is not None and keyring is not None:
            _open(hook, keyring)
        return hook

    def to_wire(self, *, with_secret: bool = False) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "url": self.url,
            "event_types": self.event_types,
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "rate_limit": self.rate_limit,
            "max_in_flight": self.max_in_flight,
            "queue": self.queue,
            "headers": dict.fromkeys(self.headers, MASK),
            "description": self.description,
            "paused": self.paused,
            "filter": self.filter,
            "ordering": self.ordering,
            "signature_scheme": self.signature_scheme,
            "public_key": _public_key(self),
            "tls": _masked(self.tls, "tls"),
            "auth": _masked(self.auth, "auth"),
            "region": self.region,
            "created_at": rfc3339(self.created_at_ms),
            "updated_at": rfc3339(self.updated_at_ms),
        }
        if with_secret:
            wire["secret"] = self.secret
        return wire


#: Record fields left out at these values (their defaults): a release before them reads it.
_LEFT_OUT: Final[dict[str, Any]] = {
    "paused": False,
    "filter": None,
    "ordering": "none",
    "signature_scheme": "v1",
    "tls": None,
    "auth": None,
    "public_key": None,
    "region": None,
}


def _masked(value: dict[str, str] | None, name: str) -> dict[str, str] | None:
    """``value`` as answered: its write-only entries (SEALED_VALUES[name]) shown as MASK."""
    if value is None:
        return None
    keys = SEALED_VALUES[name]
    return {k: MASK if keys is None or k in keys else v for k, v in value.items()}


def _slots(obj: Webhook) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _aad(webhook_id: str) -> bytes:
    """What a webhook's sealed blob is bound to: pasted onto another webhook, it does not open."""
    return b"dispatcher.webhook." + webhook_id.encode()


def _blank(record: dict[str, Any]) -> dict[str, Any]:
    """Take the sensitive values out of ``record`` (blanked or MASKed in place); returns them."""
    secret: dict[str, Any] = {}
    for name, blank in SEALED_FIELDS.items():
        secret[name] = record[name]
        record[name] = blank
    for name, keys in SEALED_VALUES.items():
        value = record.get(name)
        if not value:
            continue
        taken = {k: v for k, v in value.items() if keys is None or k in keys}
        if taken:
            secret[name] = taken
            record[name] = {**value, **dict.fromkeys(taken, MASK)}
    return secret


def _seal(record: dict[str, Any], keyring: Keyring, webhook_id: str) -> str:
    return keyring.seal(orjson.dumps(_blank(record)), _aad(webhook_id))


def _keep_sealed(record: dict[str, Any], sealed: str) -> str:
    """A webhook written back by a process that could not open its blob: the blob stays, as
    long as no sensitive value changed (it cannot seal a new one)."""
    before = dict(record)
    _blank(record)
    if record != before:
        raise EncryptionKeyMissing
    return sealed


def _open(hook: Webhook, keyring: Keyring) -> None:
    try:
        secret = orjson.loads(keyring.open_cached(cast("str", hook.sealed), _aad(hook.id)))
    except Undecryptable:
        return  # stays sealed: the gate makes its jobs wait, writes refuse
    for name, value in secret.items():
        if name in SEALED_FIELDS:
            setattr(hook, name, value)
        elif hasattr(hook, name):  # the clear record names the keys (one removed stays so)
            clear = getattr(hook, name) or {}
            setattr(hook, name, {k: value.get(k, v) if v == MASK else v for k, v in clear.items()})
    hook.sealed = None


def _text(name: str, value: Any, *, limit: int = MAX_ID_TEXT, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidField(name, "must be a string")
    if not value and not empty:
        raise InvalidField(name, "must not be empty")
    if len(value) > limit:
        raise InvalidField(name, f"must be at most {limit} characters")
    check_unicode(name, value)
    return value


def check_unicode(name: str, text: str) -> None:
    """InvalidField for text Redis cannot hold: a lone surrogate has no UTF-8 form (and would
    fail the whole pipeline of publishes it was sent with)."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise InvalidField(name, "must be valid Unicode (no lone surrogates)") from None


def check_tenant_id(value: Any) -> str:
    text = _text("tenant_id", value)
    if any(c.isspace() for c in text):
        raise InvalidField("tenant_id", "must not contain white space")
    return text


def check_event_type(value: Any, name: str = "event_type") -> str:
    text = _text(name, value)
    if any(c.isspace() for c in text):
        raise InvalidField(name, "must not contain white space")
    return text


def check_url(value: Any) -> str:
    url = _text("url", value, limit=2048)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidField("url", f"is not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidField("url", "must be an http or https URL")
    if not parts.hostname:
        raise InvalidField("url", "must name a host")
    if port == 0:
        raise InvalidField("url", "must not use port 0")
    return url


def _check_event_types(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise InvalidField("event_types", "must be a non-empty list of event types or '*'")
    if len(value) > MAX_EVENT_TYPES:
        raise InvalidField("event_types", f"must list at most {MAX_EVENT_TYPES} event types")
    return sorted({check_event_type(v, "event_types") for v in value})


def _check_secret(value: Any) -> str:
    if isinstance(value, str) and value.startswith(SIGNING_KEY_PREFIX):
        if not valid_signing_key(value):
            raise InvalidField(
                "secret",
                "must be 'whsk_' followed by base64 of an Ed25519 key: its 32-byte seed, then "
                "its 32-byte public key (or the seed alone)",
            )
    elif not isinstance(value, str) or not valid_secret(value):
        raise InvalidField(
            "secret",
            "must be 'whsec_' followed by base64 of 24 to 64 bytes (signature_scheme v1), "
            "or a 'whsk_' Ed25519 signing key (v1a)",
        )
    return value


def _check_signature_scheme(value: Any) -> str:
    if not isinstance(value, str) or value not in SCHEMES:
        raise InvalidField("signature_scheme", 'must be "v1" or "v1a"')
    return value


def check_signature_scheme(value: Any) -> str | None:
    """A rotation's ``signature_scheme``: None (the webhook's own) or ``v1`` or ``v1a``."""
    return None if value is None else _check_signature_scheme(value)


_KEY_FIELDS = ("secret", "signature_scheme")


def _signing_key(hook: Webhook, checked: dict[str, Any]) -> dict[str, str]:
    """The ``secret`` and ``signature_scheme`` a change sets, agreeing with each other.

    A secret brings its own scheme; a scheme given with it must be that one. A scheme alone,
    changed, needs a new key: to ``v1a`` one is generated (receivers need only its public key,
    in every answer); to ``v1`` the new secret would be shown nowhere, so it is refused.
    """
    scheme = checked.get("signature_scheme", hook.signature_scheme)
    secret = checked.get("secret")
    if secret is not None:
        if "signature_scheme" in checked and scheme_of(secret) != scheme:
            raise InvalidField(
                "secret",
                f"must be a {SCHEMES[scheme]} key for signature_scheme {scheme}",
            )
        return {"secret": secret, "signature_scheme": scheme_of(secret)}
    if scheme == hook.signature_scheme:
        return {}
    if scheme == "v1a":
        return {"secret": generate_key(scheme), "signature_scheme": scheme}
    raise InvalidField(
        "signature_scheme",
        "changes to v1 with a new secret: give it as secret, or rotate "
        '(POST /v1/webhooks/{id}/rotate-secret {"signature_scheme": "v1"}), which answers it '
        "and keeps the old key signing through grace_s",
    )


def _public_key(hook: Webhook) -> str | None:
    """The ``whpk_`` public key receivers verify ``v1a`` signatures with (None for ``v1``):
    of its signing key, or where this process cannot open that, the one stored beside it."""
    if hook.signature_scheme != "v1a":
        return None
    if hook.secret.startswith(SIGNING_KEY_PREFIX):
        return public_key_of(hook.secret)
    return hook.public_key if hook.sealed is not None else None


def _check_rate_limit(value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"per_second", "burst"}:
        raise InvalidField("rate_limit", "must be an object {per_second, burst?}")
    per_second = value.get("per_second")
    if isinstance(per_second, bool) or not isinstance(per_second, int | float) or per_second <= 0:
        raise InvalidField("rate_limit.per_second", "must be a number above 0")
    burst = value.get("burst", max(1.0, per_second))  # one second of traffic by default
    if isinstance(burst, bool) or not isinstance(burst, int | float) or burst < 1:
        raise InvalidField("rate_limit.burst", "must be a number of at least 1")
    return {"per_second": float(per_second), "burst": float(burst)}


def _check_max_in_flight(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IN_FLIGHT_CAP:
        raise InvalidField("max_in_flight", f"must be a whole number from 1 to {MAX_IN_FLIGHT_CAP}")
    return value


def check_queue(value: Any) -> str:
    if not isinstance(value, str) or not _QUEUE.fullmatch(value):
        raise InvalidField(
            "queue", "must be 1-64 of a-z, 0-9, '_' or '-', starting with a letter or digit"
        )
    return value


def _check_webhook_queue(value: Any) -> str:
    queue = check_queue(value)
    if queue in TASK_QUEUES:
        raise InvalidField("queue", f"{queue!r} is a task queue (tasks.py); choose another name")
    return queue


def _check_headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_HEADERS:
        raise InvalidField("headers", f"must be an object of at most {MAX_HEADERS} string headers")
    for name, header in value.items():
        if not isinstance(header, str) or not re.fullmatch(
            r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}", name
        ):
            raise InvalidField("headers", f"{name!r} must be a header name with a string value")
        if name.lower() in _RESERVED_HEADERS:
            raise InvalidField("headers", f"{name!r} is set by dispatcher and cannot be overridden")
        if len(header) > MAX_HEADER_VALUE or "\n" in header or "\r" in header:
            raise InvalidField(
                "headers", f"{name!r} must be one line of at most {MAX_HEADER_VALUE} characters"
            )
        if "\0" in header:
            raise InvalidField("headers", f"{name!r} has a NUL character in its value")
        if not header.isascii() and not _latin1(header):
            raise InvalidField(
                "headers",
                f"{name!r} has a character outside ISO-8859-1 (latin-1) in its value, which an "
                "HTTP header cannot carry: encode it (percent-encoding or base64, say)",
            )
    return dict(value)


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _check_region(value: Any) -> str | None:
    """A region name's form (``ids.REGION_PATTERN``); whether the deployment has it is
    ``check_region_known``'s question. None: the default (the home region)."""
    if value is None or is_region_name(value):
        return cast("str | None", value)
    raise InvalidField("region", "must be a region name: a-z, 0-9 and _, 1 to 16 characters")


def check_region_known(value: str | None, regions: tuple[str, ...]) -> None:
    """``value`` (a checked ``region``) names one of the deployment's ``regions`` (none: no
    region may be named)."""
    if value is None:
        return
    if not regions:
        raise InvalidField("region", "this deployment has no [regions]")
    if value not in regions:
        known = ", ".join(regions)
        raise InvalidField("region", f"is not one of this deployment's regions ({known})")


def _check_enabled(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidField("enabled", "must be true or false")
    return value


def _check_paused(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidField("paused", "must be true or false")
    return value


def _check_ordering(value: Any) -> str:
    if value != "none" and value != "fifo":  # noqa: PLR1714 - a dict is no set member
        raise InvalidField("ordering", 'must be "none" or "fifo"')
    return cast("str", value)


def check_ordering_key(value: Any) -> str | None:
    """A publish's ``ordering_key``: None, or 1 to MAX_ID_TEXT characters without white space."""
    if value is None:
        return None
    text = _text("ordering_key", value)
    if any(c.isspace() for c in text):
        raise InvalidField("ordering_key", "must not contain white space")
    return text


def _check_tls(value: Any) -> dict[str, str] | None:
    """A webhook's ``tls`` settings (see ``Webhook.tls``), or None to use the defaults."""
    return tlsconf.check(value)


def _check_auth(value: Any) -> dict[str, str] | None:
    """A webhook's ``auth`` settings (see ``Webhook.auth``), or None for none. Its texts never
    quote the values (client_secret is one)."""
    kind = "oauth2_client_credentials"  # the one type known
    # the fields besides type, with their longest lengths (scope alone is optional)
    limits = {"token_url": 2048, "client_id": 256, "client_secret": 4096, "scope": 1024}
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidField("auth", "must be an object or null")
    unknown = sorted(str(key)[:64] for key in value if key not in limits and key != "type")
    if unknown:
        known = ", ".join(["type", *limits])
        raise InvalidField(f"auth.{unknown[0]}", f"is not a field of auth ({known})")
    if value.get("type") != kind:
        raise InvalidField("auth.type", f"must be {kind!r}")
    checked = {"type": kind}
    for name, limit in limits.items():
        field_name = f"auth.{name}"
        given = value.get(name)
        if given is None:
            if name == "scope":
                continue
            raise InvalidField(field_name, "is required")
        checked[name] = _text(field_name, given, limit=limit)
    try:
        check_url(checked["token_url"])
    except InvalidField as exc:
        raise InvalidField("auth.token_url", exc.reason) from None
    return checked


_CHECKS: dict[str, Any] = {
    "tenant_id": check_tenant_id,
    "url": check_url,
    "event_types": _check_event_types,
    "secret": _check_secret,
    "rate_limit": _check_rate_limit,
    "max_in_flight": _check_max_in_flight,
    "queue": _check_webhook_queue,
    "headers": _check_headers,
    "description": lambda v: _text("description", v, limit=1024, empty=True),
    "enabled": _check_enabled,
    "paused": _check_paused,
    "region": _check_region,
    "filter": filters.check,
    "ordering": _check_ordering,
    "signature_scheme": _check_signature_scheme,
    "tls": _check_tls,
    "auth": _check_auth,
}


@cache
def _webhook_fields() -> frozenset[str]:
    return frozenset(f.name for f in fields(Webhook))

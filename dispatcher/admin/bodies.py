"""Request bodies and query strings -> checked values, or the error the contract names.

Malformed JSON (or not an object) is 400 ``malformed_request``; an unknown, missing or
ill-typed field is 422 ``invalid_field`` naming it. The finer checks of each value (URLs,
event types, payload size) live in ``model`` and ``Client``, shared with the Python API.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from dispatcher.errors import InvalidField, MalformedRequest
from dispatcher.model import time_ms
from dispatcher.queue.dlq_ops import replay_ids

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from aiohttp import web

# Digits enough for an integer outside orjson's exact range (-2**63 to 2**64 - 1), or a string.
_LONG_NUMBER = re.compile(rb"[0-9]{19}")

_EVENT = frozenset(
    {"event_type", "payload", "idempotency_key", "deliver_at", "priority", "ordering_key"}
)


async def json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object; with ``optional``, an empty body reads as ``{}``."""
    raw = await request.read()
    if not raw.strip() and optional:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"the body is not valid JSON ({exc})") from exc
    if _LONG_NUMBER.search(raw):
        # orjson reads an integer beyond 64 bits as the nearest float: two payloads differing
        # there would be one (and deduplicated). Exact ints instead, which the Client's payload
        # check refuses (as it refuses them from Python callers) and range checks compare.
        try:
            value = json.loads(raw)
        except RecursionError as exc:  # nested deeper than the json module reads
            raise MalformedRequest("the body is nested too deeply") from exc
    if not isinstance(value, dict):
        raise MalformedRequest("the body must be a JSON object")
    return value


def fields(
    body: Mapping[str, Any], allowed: Iterable[str], required: Iterable[str] = ()
) -> dict[str, Any]:
    """``body`` with only ``allowed`` keys and every ``required`` one, else InvalidField."""
    unknown = set(body) - set(allowed)
    if unknown:
        raise InvalidField(min(unknown), "is not a field of this request")
    for name in required:
        if name not in body:
            raise InvalidField(name, "is required")
    return dict(body)


def event(body: Mapping[str, Any], *, with_tenant: bool) -> dict[str, Any]:
    """The keyword arguments of ``Client.publish_checked`` / ``Client.deliver``."""
    # A delivery (to one webhook, on purpose) is never deduplicated: no dedup_window_s.
    allowed = _EVENT | {"tenant_id", "dedup_window_s"} if with_tenant else _EVENT
    required = ("tenant_id", "event_type", "payload") if with_tenant else ("event_type", "payload")
    checked = fields(body, allowed, required)
    checked.setdefault("priority", "normal")
    return checked


def rotation(body: Mapping[str, Any]) -> tuple[float, str | None]:
    """A rotation's ``grace_s`` (default one day) and ``signature_scheme`` (None: the
    webhook's own; the Client checks its value)."""
    checked = fields(body, {"grace_s", "signature_scheme"})
    value = checked.get("grace_s", 86_400)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidField("grace_s", "must be a number of seconds")
    return float(value), checked.get("signature_scheme")


@dataclass(frozen=True, slots=True)
class Replay:
    ids: list[str] | None
    webhook_id: str | None = None
    tenant_id: str | None = None
    since_ms: int | None = None  # dead-lettered at or after
    reason: str | None = None  # the DLQ entry's reason
    until_ms: int | None = None  # dead-lettered before


def _time_ms(name: str, text: str | None) -> int | None:
    """An RFC 3339 time with a zone (as ``Client`` reads ``since``), in epoch ms."""
    return time_ms(name, text)


def replay(body: Mapping[str, Any]) -> Replay:
    checked = fields(body, {"ids", "all", "webhook_id", "tenant_id", "since", "reason", "until"})
    if "ids" in checked:
        extra = set(checked) - {"ids"}
        if extra:
            raise InvalidField(min(extra), "cannot be combined with ids")
        return Replay(ids=replay_ids(checked["ids"]))  # the Client's check (Client.replay)
    if checked.get("all") is not True:
        raise InvalidField("all", 'is required: {"ids": [...]} or {"all": true, ...}')
    for name in ("webhook_id", "tenant_id", "since", "reason", "until"):
        if checked.get(name) is not None and not isinstance(checked[name], str):
            raise InvalidField(name, "must be a string")
    return Replay(
        None,
        checked.get("webhook_id"),
        checked.get("tenant_id"),
        _time_ms("since", checked.get("since")),
        checked.get("reason"),
        _time_ms("until", checked.get("until")),
    )


# --- query strings ------------------------------------------------------------------------------


def query(request: web.Request, allowed: Iterable[str]) -> dict[str, str]:
    """The query parameters, each given at most once and all of them known."""
    params = request.rel_url.query
    unknown = set(params) - set(allowed)
    if unknown:
        raise InvalidField(min(unknown), "is not a parameter of this request")
    for name in params:
        if len(params.getall(name)) > 1:
            raise InvalidField(name, "must be given once")
    return dict(params)


def whole(params: Mapping[str, str], name: str, default: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    if not text.isdigit() or len(text) > 9:  # noqa: PLR2004 - far above any page size
        raise InvalidField(name, "must be a whole number")
    return int(text)


def seconds(params: Mapping[str, str], name: str, default: float) -> float:
    text = params.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError as exc:
        raise InvalidField(name, "must be a number of seconds") from exc
    if not math.isfinite(value):
        raise InvalidField(name, "must be a finite number of seconds")
    return value


def flag(params: Mapping[str, str], name: str) -> bool:
    text = params.get(name, "false")
    if text not in ("true", "false"):
        raise InvalidField(name, "must be true or false")
    return text == "true"

"""``dispatcher.shapes`` and openapi.json declare the same shapes.

Each TypedDict is compared with the schema it stands for: the same property names, the same
required set, the same JSON types (null included) and enums, and nested shapes recursively.
Every JSON object schema the spec gives a request or an answer has a shape here.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import pytest

from dispatcher import shapes
from tests.spec_check import SPEC, flatten, resolve

_JSON = "application/json"

#: Each shape and where openapi.json has it: a component, or (method, path, status) for an
#: answer, or (method, path, "request") for a body.
PLACES: list[tuple[type, str | tuple[str, str, str]]] = [
    (shapes.Error, "Error"),
    (shapes.ConfirmationRequired, "ConfirmationRequired"),
    (shapes.UnknownQueue, "UnknownQueue"),
    (shapes.NotReplayable, "NotReplayable"),
    (shapes.Webhook, "Webhook"),
    (shapes.OutboxCounts, "OutboxCounts"),
    (shapes.RegionCounts, "RegionCounts"),
    (shapes.WebhookWithSecret, "WebhookWithSecret"),
    (shapes.Breaker, "Breaker"),
    (shapes.TlsSettings, "TlsSettings"),
    (shapes.OAuth2Settings, "OAuth2Settings"),
    (shapes.PublishAnswer, "PublishAnswer"),
    (shapes.Attempt, "Attempt"),
    (shapes.Job, "Job"),
    (shapes.DeadJob, "DeadJob"),
    (shapes.DlqItem, "DlqItem"),
    (shapes.Status, "Status"),
    (shapes.Operation, "Operation"),
    (shapes.WebhookStats, "WebhookStats"),
    (shapes.Percentiles, "Percentiles"),
    (shapes.StatsPoint, "StatsPoint"),
    (shapes.Health, ("get", "/healthz", "200")),
    (shapes.Ready, ("get", "/readyz", "200")),
    (shapes.WebhookList, ("get", "/v1/webhooks", "200")),
    (shapes.RecentJob, "RecentJob"),
    (shapes.WebhookJobs, ("get", "/v1/webhooks/{id}/jobs", "200")),
    (shapes.MinuteStats, "MinuteStats"),
    (shapes.Stats, ("get", "/v1/stats", "200")),
    (shapes.DlqPage, ("get", "/v1/dlq", "200")),
    (shapes.Purged, ("delete", "/v1/dlq", "200")),
    (shapes.PurgeStarted, ("delete", "/v1/dlq", "202")),
    (shapes.Replayed, ("post", "/v1/dlq/replay", "200")),
    (shapes.ReplayStarted, ("post", "/v1/dlq/replay", "202")),
    (shapes.QueuePaused, ("post", "/v1/queues/{name}/pause", "200")),
    (shapes.QueuePaused, ("post", "/v1/queues/{name}/resume", "200")),
    (shapes.TaskInfo, "TaskInfo"),
    (shapes.TaskEnqueued, "TaskEnqueued"),
    (shapes.TaskList, ("get", "/v1/tasks", "200")),
    (shapes.WebhookCreate, ("post", "/v1/webhooks", "request")),
    (shapes.WebhookChange, ("patch", "/v1/webhooks/{id}", "request")),
    (shapes.SecretRotation, ("post", "/v1/webhooks/{id}/rotate-secret", "request")),
    (shapes.Event, ("post", "/v1/events", "request")),
    (shapes.Delivery, ("post", "/v1/webhooks/{id}/deliveries", "request")),
    (shapes.TestSend, "TestSend"),
    (shapes.TestSendRequest, ("post", "/v1/webhooks/{id}/test", "request")),
]
#: Component schemas that are a choice of shapes rather than one.
CHOICES: dict[str, list[type]] = {
    "Replay": [shapes.ReplayIds, shapes.ReplayMatching],
    "RetryRefused": [shapes.Error, shapes.NotReplayable],
}
#: JSON objects of the spec that are not the API's own shape: the spec itself.
UNSHAPED = {("get", "/openapi.json", "200")}


def _raw_schema(place: str | tuple[str, str, str]) -> dict[str, Any]:
    if isinstance(place, str):
        raw: dict[str, Any] = SPEC["components"]["schemas"][place]
        return raw
    method, path, status = place
    operation = SPEC["paths"][path][method]
    holder = operation["requestBody"] if status == "request" else operation["responses"][status]
    body: dict[str, Any] = holder["content"][_JSON]["schema"]
    return body


def _schema(place: str | tuple[str, str, str]) -> dict[str, Any]:
    schema: dict[str, Any] = flatten(resolve(_raw_schema(place)))
    return schema


def _branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives of a schema: its ``oneOf``/``anyOf`` branches, else itself."""
    schema = flatten(schema)
    for keyword in ("oneOf", "anyOf"):
        if keyword in schema:
            return [b for branch in schema[keyword] for b in _branches(branch)]
    return [schema]


def _json_types(schema: dict[str, Any]) -> set[str] | None:
    """The JSON types a schema allows; None when it says nothing (any value)."""
    found: set[str] = set()
    for branch in _branches(schema):
        values = branch.get("enum", [branch["const"]] if "const" in branch else None)
        if values is not None:
            found |= {_type_of_value(v) for v in values}
        elif "type" in branch:
            kind = branch["type"]
            found |= {kind} if isinstance(kind, str) else set(kind)
        else:
            return None
    return found


def _type_of_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


_PRIMITIVES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def _members(hint: Any) -> list[Any]:
    if get_origin(hint) in {Union, types.UnionType}:
        return list(get_args(hint))
    return [hint]


def _python_types(hint: Any) -> set[str] | None:
    found: set[str] = set()
    for member in _members(hint):
        if member is Any:
            return None
        origin = get_origin(member)
        if member in _PRIMITIVES:
            found.add(_PRIMITIVES[member])
        elif origin is Literal:
            found |= {_type_of_value(v) for v in get_args(member)}
        elif origin is list:
            found.add("array")
        elif origin is dict or is_typeddict(member):
            found.add("object")
        else:
            pytest.fail(f"no JSON type for {member!r}")
    return found


def _literals(hint: Any) -> set[object]:
    return {v for m in _members(hint) if get_origin(m) is Literal for v in get_args(m)}


def _enum(schema: dict[str, Any]) -> set[object]:
    values: set[object] = set()
    for branch in _branches(schema):
        values |= set(branch.get("enum", [branch["const"]] if "const" in branch else []))
    return values - {None}


def _compare_value(hint: Any, schema: dict[str, Any], where: str) -> list[str]:
    errors = []
    want = _json_types(schema)
    have = _python_types(hint)
    if want is not None and have is not None and want != have:
        errors.append(f"{where}: {sorted(have)} here, {sorted(want)} in openapi.json")
    elif (want is None) != (have is None):
        errors.append(f"{where}: {hint!r} here, {want or 'any'} in openapi.json")
    if _literals(hint) != _enum(schema) and (_literals(hint) or _enum(schema)):
        errors.append(f"{where}: {sorted(map(str, _literals(hint)))} here, enum {_enum(schema)}")
    for member in _members(hint):
        origin = get_origin(member)
        if is_typeddict(member):
            objects = [b for b in _branches(schema) if "properties" in b]
            assert len(objects) == 1, f"{where}: one object schema expected"
            errors += _compare_shape(member, objects[0], where)
        elif origin is list:
            arrays = [b for b in _branches(schema) if b.get("type") in ("array", ["array"])]
            if arrays and "items" in arrays[0]:
                errors += _compare_value(get_args(member)[0], arrays[0]["items"], f"{where}[]")
        elif origin is dict:
            maps = [b for b in _branches(schema) if isinstance(b.get("additionalProperties"), dict)]
            if maps:
                value = get_args(member)[1]
                errors += _compare_value(value, maps[0]["additionalProperties"], f"{where}{{}}")
    return errors


def _compare_shape(shape: Any, schema: dict[str, Any], where: str) -> list[str]:
    """What differs between a TypedDict and an object schema (resolved and flattened)."""
    where = f"{where} ({shape.__name__})"
    schema = flatten(schema)
    hints = get_type_hints(shape)
    properties: dict[str, Any] = schema.get("properties", {})
    errors = []
    if set(hints) != set(properties):
        errors.append(
            f"{where}: only here {sorted(set(hints) - set(properties))}, "
            f"only in openapi.json {sorted(set(properties) - set(hints))}"
        )
    if set(shape.__required_keys__) != set(schema.get("required", [])):
        errors.append(
            f"{where}: required here {sorted(shape.__required_keys__)}, "
            f"in openapi.json {sorted(schema.get('required', []))}"
        )
    for name in sorted(set(hints) & set(properties)):
        errors += _compare_value(hints[name], properties[name], f"{where}.{name}")
    return errors


@pytest.mark.parametrize(("shape", "place"), PLACES, ids=[f"{s.__name__}-{p}" for s, p in PLACES])
def test_shape_is_the_schema_of_openapi_json(
    shape: type, place: str | tuple[str, str, str]
) -> None:
    """The TypedDict and the schema list the same properties, required ones and types."""
    errors = _compare_shape(shape, _schema(place), str(place))
    assert not errors, "\n".join(errors)


def test_choices_are_the_branches_of_their_schema() -> None:
    for name, choices in CHOICES.items():
        branches = _branches(resolve(SPEC["components"]["schemas"][name]))
        assert len(branches) == len(choices), name
        for shape, branch in zip(choices, branches, strict=True):
            errors = _compare_shape(shape, branch, name)
            assert not errors, "\n".join(errors)


def test_every_json_object_of_the_spec_has_a_shape() -> None:
    """A new component, answer or body in openapi.json needs its shape in dispatcher.shapes."""
    placed = {place for _, place in PLACES} | set(CHOICES) | UNSHAPED
    named = {
        r.removeprefix("#/components/schemas/")
        for place in placed
        if isinstance(place, tuple)
        for r in [_raw_schema(place).get("$ref", "")]
        if r
    }
    missing = [name for name in SPEC["components"]["schemas"] if name not in placed | named]
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            holders = [(s, r) for s, r in operation["responses"].items()]
            if "requestBody" in operation:
                holders.append(("request", operation["requestBody"]))
            for status, holder in holders:
                schema = holder.get("content", {}).get(_JSON, {}).get("schema")
                if schema is None or "$ref" in schema or (method, path, status) in placed:
                    continue
                missing.append(f"{method.upper()} {path} {status}")
    assert not missing, f"no shape in dispatcher.shapes for {missing}"


def test_every_shape_is_placed() -> None:
    """Each TypedDict of dispatcher.shapes stands for a schema of openapi.json (or is the base
    of one that does)."""
    placed = {shape for shape, _ in PLACES} | {s for c in CHOICES.values() for s in c}
    declared = {
        value
        for value in vars(shapes).values()
        if is_typeddict(value) and value.__module__ == shapes.__name__
    }
    nested = {
        member
        for shape in placed
        for hint in get_type_hints(shape).values()
        for member in _nested(hint)
    }
    # Client.status(): Status without the daemon's alerts; the fields of both webhook bodies
    bases = {shapes.StatusCounts, shapes.WebhookSettings}
    assert declared - placed - nested - bases == set()


def _nested(hint: Any) -> typing.Iterator[Any]:
    for member in _members(hint):
        if is_typeddict(member):
            yield member
            for inner in get_type_hints(member).values():
                yield from _nested(inner)
        for arg in get_args(member):
            yield from _nested(arg)

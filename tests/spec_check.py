"""openapi.json read for tests: each answer of the admin API checked against its operation.

``check_answer`` is called by ``tests.admin_api.Api.call`` for every answer, so each admin test
is also a conformance test. The answer's status must be documented for the operation, its
content type must be one the operation lists, and a JSON body must match the response schema
*closed*: every object schema that lists ``properties`` here accepts no other property
(``additionalProperties: false``), so a field added to an answer but not to the spec fails. The
document itself stays open for clients; only this test view is closed. ``date-time`` and
``uri`` formats are checked too.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from importlib import resources
from typing import Any

import jsonschema_rs
import orjson

SPEC: dict[str, Any] = orjson.loads(
    resources.files("dispatcher.admin").joinpath("openapi.json").read_bytes()
)
_METHODS = frozenset({"get", "post", "put", "patch", "delete"})
_REF = "#/components/schemas/"


def resolve(schema: Any) -> Any:
    """``schema`` with every ``$ref`` to a component replaced by the component (the spec's
    schemas are not recursive)."""
    if isinstance(schema, list):
        return [resolve(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF):
        return resolve(SPEC["components"]["schemas"][ref.removeprefix(_REF)])
    return {key: resolve(value) for key, value in schema.items()}


def flatten(schema: dict[str, Any]) -> dict[str, Any]:
    """A resolved object schema with its ``allOf`` branches merged into one object schema:
    the union of their ``properties`` and of their ``required`` lists."""
    if "allOf" not in schema:
        return schema
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    merged.setdefault("type", "object")
    properties: dict[str, Any] = dict(merged.get("properties", {}))
    required: list[str] = list(merged.get("required", []))
    for branch in schema["allOf"]:
        part = flatten(branch)
        properties.update(part.get("properties", {}))
        required += [name for name in part.get("required", []) if name not in required]
    merged["properties"] = properties
    merged["required"] = required
    return merged


def component(name: str) -> dict[str, Any]:
    """The component schema ``name``, resolved and flattened."""
    return flatten(resolve(SPEC["components"]["schemas"][name]))


def closed(schema: Any) -> Any:
    """A resolved schema in which every object schema listing ``properties`` (``allOf``
    merged) accepts no other property."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    flat = flatten(schema)
    out = {key: closed(value) for key, value in flat.items()}
    if "properties" in flat and "additionalProperties" not in flat:
        out["additionalProperties"] = False
    return out


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile(
        "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts) + "$"
    )


# Fixed paths first, so /v1/dlq/replay is not taken for /v1/dlq/{id} (as the router does).
_OPERATIONS = sorted(
    ((template.count("{"), template, _pattern(template)) for template in SPEC["paths"]),
)


def operation(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    """The template and operation object of ``method path``; None if the spec has none."""
    path = path.split("?", 1)[0]
    method = method.lower()
    for _, template, pattern in _OPERATIONS:
        item = SPEC["paths"][template]
        if pattern.match(path) and method in item and method in _METHODS:
            return template, item[method]
    return None


@cache
def _validator(template: str, method: str, status: str, media: str) -> Any:
    content = SPEC["paths"][template][method]["responses"][status].get("content", {})
    schema = closed(resolve(content[media].get("schema", {})))
    return jsonschema_rs.Draft202012Validator(copy.deepcopy(schema), validate_formats=True)


def check_answer(
    method: str, path: str, status: int, content_type: str, text: str, body: Any
) -> None:
    """Raise ``AssertionError`` unless the answer is one the spec documents for the request.

    Requests the spec has no operation for (a wrong method, an unknown path) are not checked.
    """
    found = operation(method, path)
    if found is None:
        return
    template, op = found
    where = f"{method.upper()} {path} ({template}) -> {status}"
    responses = op["responses"]
    key = str(status)
    assert key in responses, f"{where}: the status is not in openapi.json"
    content = responses[key].get("content", {})
    if not content:
        assert not text, f"{where}: a body that openapi.json does not document"
        return
    assert content_type in content, f"{where}: {content_type!r} is not one of {sorted(content)}"
    if content_type != "application/json":
        return
    errors = [
        f"{'/'.join(map(str, error.instance_path))}: {error.message}"
        for error in _validator(template, method.lower(), key, content_type).iter_errors(body)
    ]
    assert not errors, f"{where}: the answer does not match openapi.json:\n" + "\n".join(errors)

"""Payload filters: a webhook's ``filter`` checked and compiled for ``queue/lua/_filter.lua``.

A filter is a JSON object in a small Mongo-like subset, evaluated once per publish for each
webhook the event would otherwise go to (publish.lua); a webhook whose filter does not match
the payload gets no job. Pure: no IO; the evaluation itself is written once, in Lua.

The language:

- ``{"data.amount": {"$gt": 100}, "data.currency": "EUR"}``: every entry must hold (an
  implicit ``$and``). A key is a dotted path into the payload, or ``$and``/``$or`` (a non-empty
  list of filters) or ``$not`` (a filter). ``{}`` matches every payload.
- A path's value is a plain value (``$eq``) or an operator object, all of whose operators must
  hold: ``$eq $ne`` (a string, number, boolean or null), ``$gt $gte $lt $lte`` (a number or a
  string), ``$in $nin`` (a list of such plain values), ``$exists`` (true or false), ``$not``
  (an operator object, negated).

Its exact meaning:

- **Types are strict.** A number equals only a number (``1`` equals ``1.0``), a string only
  a string, true only true, null only null. A comparison across types is false: ``{"$gt": 5}``
  does not match ``"7"``, and ``{"$eq": 1}`` does not match ``true``. Strings compare by their
  UTF-8 bytes (code points), never by a locale.
- **Numbers are doubles**, as Lua reads JSON: an integer beyond 2**53 in a payload is compared
  rounded to the nearest double, and a filter refuses one (it could not mean what it says).
- **A missing path** (a key absent, or a step into a value that is not an object) matches
  ``{"$exists": false}``, ``$ne`` and ``$nin`` (Mongo's rule: it is not equal), and nothing
  else. A null value is present: it matches ``{"$exists": true}`` and ``{"$eq": null}``.
- **Arrays are values, not traversed**: a path does not step into an array (``items.0.sku``
  is missing), and an array or object at a path equals no plain value (``$ne`` matches it,
  ``$exists: true`` matches it). A payload that is not an object (a list, a number) has no
  paths, so only ``$exists: false``, ``$ne`` and ``$nin`` conditions match it.

The bounds, so a filter's cost per publish is bounded: at most ``MAX_DEPTH`` levels of
nesting, ``MAX_NODES`` conditions in all (each path, operator, logical operator and ``$in``
value counts one), ``MAX_IN`` values per ``$in``/``$nin``, paths of at most ``MAX_PATH``
characters and ``MAX_SEGMENTS`` steps, and ``MAX_BYTES`` bytes as JSON. One evaluation is thus
at most 64 comparisons, each a lookup of at most 16 steps and a comparison with a value of at
most 4 KB.

The compiled form publish.lua reads is a list tree: ``["and", node...]``, ``["or",
node...]``, ``["not", node]``, ``[op, [step...], operand]`` with ``op`` one of ``eq ne gt gte
lt lte in nin exists``.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from dispatcher.errors import InvalidField

MAX_DEPTH = 8
MAX_NODES = 64
MAX_IN = 32
MAX_PATH = 256
MAX_SEGMENTS = 16
MAX_BYTES = 4096
MAX_EXACT_INT = 2**53

_LOGICAL = frozenset({"$and", "$or", "$not"})
_EQUALITY = frozenset({"$eq", "$ne"})
_ORDER = frozenset({"$gt", "$gte", "$lt", "$lte"})
_LISTS = frozenset({"$in", "$nin"})
_OPERATORS = _EQUALITY | _ORDER | _LISTS | {"$exists", "$not"}


def check(value: Any) -> dict[str, Any] | None:
    """The filter as given, checked (None removes it); ``InvalidField`` names the path inside
    it (``filter.data.amount.$gt``) and the reason."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidField("filter", "must be an object (or null for none)")
    try:
        size = len(orjson.dumps(value))
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise InvalidField("filter", f"must be JSON ({exc})") from exc
    if size > MAX_BYTES:
        raise InvalidField("filter", f"is {size} bytes as JSON, over the limit of {MAX_BYTES}")
    _Compiler().filter(value, "filter", 1)
    return value


def compile_filter(value: dict[str, Any]) -> list[Any] | None:
    """The checked filter in the form publish.lua evaluates; None for ``{}`` (matches all)."""
    if not value:
        return None
    return _Compiler().filter(value, "filter", 1)


class _Compiler:
    """One pass over a filter: checks each part (with its path for the error) and counts."""

    def __init__(self) -> None:
        self.nodes = 0

    def _count(self, where: str, depth: int, n: int = 1) -> None:
        self.nodes += n
        if self.nodes > MAX_NODES:
            raise InvalidField(where, f"the filter has over {MAX_NODES} conditions")
        if depth > MAX_DEPTH:
            raise InvalidField(where, f"is nested deeper than {MAX_DEPTH} levels")

    def filter(self, value: Any, where: str, depth: int) -> list[Any]:
        if not isinstance(value, dict):
            raise InvalidField(where, "must be a filter object")
        nodes: list[Any] = []
        for key, operand in value.items():
            at = f"{where}.{key}"
            self._count(at, depth)
            if key in ("$and", "$or"):
                if not isinstance(operand, list) or not operand:
                    raise InvalidField(at, "must be a non-empty list of filters")
                subs = [self.filter(f, f"{at}.{i}", depth + 1) for i, f in enumerate(operand)]
                nodes.append([key[1:], *subs])
            elif key == "$not":
                nodes.append(["not", self.filter(operand, at, depth + 1)])
            elif key.startswith("$"):
                raise InvalidField(at, "is not an operator here (use $and, $or, $not or a path)")
            else:
                nodes.append(self.condition(_steps(key, at), operand, at, depth + 1))
        return _all(nodes)

    def condition(self, steps: list[str], operand: Any, where: str, depth: int) -> list[Any]:
        """What one path must satisfy: a plain value ($eq) or an operator object."""
        if not _is_operators(operand):
            if isinstance(operand, dict | list):
                raise InvalidField(
                    where,
                    "must be a plain value or an object of operators (arrays and "
                    "objects are not compared; use $in for a list)",
                )
            return ["eq", steps, _plain(operand, where)]
        nodes: list[Any] = []
        for op, arg in operand.items():
            at = f"{where}.{op}"
            self._count(at, depth)
            nodes.append(self.operator(steps, op, arg, at, depth))
        return _all(nodes)

    def operator(self, steps: list[str], op: str, arg: Any, at: str, depth: int) -> list[Any]:
        if op not in _OPERATORS:
            raise InvalidField(at, f"unknown operator (one of {' '.join(sorted(_OPERATORS))})")
        if op == "$not":
            if not _is_operators(arg):
                raise InvalidField(at, "must be an object of operators")
            return ["not", self.condition(steps, arg, at, depth + 1)]
        if op == "$exists":
            if not isinstance(arg, bool):
                raise InvalidField(at, "must be true or false")
            return ["exists", steps, arg]
        if op in _ORDER and (isinstance(arg, bool) or not isinstance(arg, int | float | str)):
            raise InvalidField(at, "must be a number or string")
        if op in _LISTS:
            if not isinstance(arg, list) or len(arg) > MAX_IN:
                raise InvalidField(at, f"must be a list of at most {MAX_IN} plain values")
            self._count(at, depth, len(arg))
            return [op[1:], steps, [_plain(v, f"{at}.{i}") for i, v in enumerate(arg)]]
        return [op[1:], steps, _plain(arg, at)]


def _is_operators(value: Any) -> bool:
    """An operator object: non-empty, every key an operator's ``$`` name."""
    return isinstance(value, dict) and bool(value) and all(k.startswith("$") for k in value)


def _all(nodes: list[Any]) -> list[Any]:
    """The conjunction of ``nodes``: the node itself when there is one."""
    return nodes[0] if len(nodes) == 1 else ["and", *nodes]


def _steps(path: str, where: str) -> list[str]:
    steps = path.split(".")
    if len(path) > MAX_PATH or len(steps) > MAX_SEGMENTS:
        raise InvalidField(
            where, f"a path has at most {MAX_PATH} characters and {MAX_SEGMENTS} steps"
        )
    if not all(steps):
        raise InvalidField(where, "a path's steps must not be empty")
    return steps


def _plain(value: Any, where: str) -> Any:
    """A string, boolean, null, or a number Lua reads exactly."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int) and abs(value) > MAX_EXACT_INT:
        raise InvalidField(where, "must be an integer within ±2**53 (compared as a double)")
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise InvalidField(where, "must be a string, number, boolean or null")

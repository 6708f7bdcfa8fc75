"""The filter evaluator is written once, in Lua (``queue/lua/_filter.lua``); this checks it, and
``filters.py``'s compiled form, against the language as README and ``filters.py`` state it (a
small Python reading of the source filter, here), over random filters and random payloads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher import InvalidField, filters
from dispatcher.queue.scripts import _read

if TYPE_CHECKING:
    import redis.asyncio as aioredis

#: Evaluates a batch: ARGV[1] is a JSON list of compiled filters (null: {}), ARGV[2..] the
#: payloads; answers one string of '0'/'1' per payload, one character per filter.
_SCRIPT = (
    _read("_filter.lua")
    + """
local nodes = cjson.decode(ARGV[1])
local out = {}
for a = 2, #ARGV do
  local ok, doc = pcall(cjson.decode, ARGV[a])
  if not ok then doc = nil end
  local row = {}
  for i = 1, #nodes do
    local node = nodes[i]
    row[i] = (node == cjson.null or filter_match(node, doc)) and '1' or '0'
  end
  out[#out + 1] = table.concat(row)
end
return out
"""
)

_MISSING = object()
KEYS = ("a", "b", "é")
#: Few values, so that equal ones meet often (ties decide $gte/$lte), and the edges: 2**53 + 1
#: reads as 2**53, an integer beyond 64 bits, -0.0, byte order against a locale's.
NUMBERS = st.sampled_from([-1, 0, 1, 0.5, 1.0, -0.0, 2**53, 2**53 + 1, 2**64 - 1])
STRINGS = st.sampled_from(["", "a", "B", "ab", "é", "\U0001f600", "7", "a\x00"])
BOUNDS = st.sampled_from([0, 1, 0.5, 2**53, "a", "B", "é"])  # few, so that ties are common
PLAIN = st.none() | st.booleans() | NUMBERS | STRINGS
VALUES = PLAIN | st.lists(PLAIN, max_size=2) | st.dictionaries(st.sampled_from(KEYS), PLAIN)
#: Payloads, mostly objects two levels deep (whose paths filters reach), some not.
DOCS = st.integers(0, 7).flatmap(  # (``|`` flattens alternatives: objects would be rare)
    lambda n: VALUES if n == 0 else st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=n % 3)
)
PATHS = st.sampled_from(["a", "b", "é", "a.b", "a.b.a"])
OPERANDS = PLAIN


def _operators(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    ops: list[st.SearchStrategy[tuple[str, Any]]] = [
        st.tuples(st.sampled_from(["$eq", "$ne"]), OPERANDS),
        st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), BOUNDS),
        st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(OPERANDS, max_size=3)),
        st.tuples(st.just("$exists"), st.booleans()),
    ]
    if depth:
        ops.append(st.tuples(st.just("$not"), _operators(depth - 1)))
    return st.lists(st.one_of(ops), min_size=1, max_size=2).map(dict)


def _filters(depth: int = 2, min_size: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    entry: list[st.SearchStrategy[tuple[str, Any]]] = [
        # half plain values, half operator objects (``|`` would flatten to one in six)
        st.tuples(PATHS, st.booleans().flatmap(lambda ops: _operators(1) if ops else OPERANDS))
    ]
    if depth:
        sub = _filters(depth - 1)
        entry += [
            st.tuples(st.sampled_from(["$and", "$or"]), st.lists(sub, min_size=1, max_size=2)),
            st.tuples(st.just("$not"), sub),
        ]
    return st.lists(st.one_of(entry), min_size=min_size, max_size=2).map(dict)


# --- the language, read from its documentation -------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else "composite"


def _equal(value: Any, operand: Any) -> bool:
    if value is _MISSING or _kind(value) != _kind(operand) or _kind(value) == "composite":
        return False
    if _kind(value) == "number":  # doubles, as Lua reads them
        return float(value) == float(operand)
    return bool(value == operand)


def _less(a: Any, b: Any) -> bool:
    if isinstance(a, str):
        return bool(a.encode() < b.encode())
    return float(a) < float(b)


def _holds(value: Any, op: str, operand: Any) -> bool:  # noqa: PLR0911 - one case per operator
    if op == "$eq":
        return _equal(value, operand)
    if op == "$ne":
        return not _equal(value, operand)
    if op == "$in":
        return any(_equal(value, x) for x in operand)
    if op == "$nin":
        return not any(_equal(value, x) for x in operand)
    if op == "$exists":
        return bool((value is not _MISSING) == operand)
    if op == "$not":
        return not _condition(value, operand)
    if value is _MISSING or _kind(value) != _kind(operand):
        return False
    return {
        "$gt": lambda: _less(operand, value),
        "$gte": lambda: not _less(value, operand),
        "$lt": lambda: _less(value, operand),
        "$lte": lambda: not _less(operand, value),
    }[op]()


def _condition(value: Any, operand: Any) -> bool:
    if isinstance(operand, dict) and operand and all(k.startswith("$") for k in operand):
        return all(_holds(value, op, arg) for op, arg in operand.items())
    return _equal(value, operand)


def _lookup(doc: Any, path: str) -> Any:
    for step in path.split("."):
        if not isinstance(doc, dict) or step not in doc:
            return _MISSING
        doc = doc[step]
    return doc


def matches(filter_: dict[str, Any], doc: Any) -> bool:
    """Whether ``doc`` matches ``filter_``, as the README states the language."""
    for key, operand in filter_.items():
        if key == "$and":
            held = all(matches(f, doc) for f in operand)
        elif key == "$or":
            held = any(matches(f, doc) for f in operand)
        elif key == "$not":
            held = not matches(operand, doc)
        else:
            held = _condition(_lookup(doc, key), operand)
        if not held:
            return False
    return True


@settings(
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    candidates=st.lists(_filters(min_size=1), min_size=1, max_size=8),
    payloads=st.lists(DOCS, min_size=1, max_size=8),
)
async def test_lua_evaluates_filters_as_documented(
    redis: aioredis.Redis, candidates: list[dict[str, Any]], payloads: list[Any]
) -> None:
    """Random valid filters against random payloads: publish.lua's evaluator answers what the
    documented language says, including types, missing paths, arrays and byte order."""
    checked = []
    for candidate in candidates:
        try:
            checked.append(filters.check(candidate))
        except InvalidField:  # a random filter may be out of the language: refused, not run
            continue
    if not checked:
        return
    compiled = [filters.compile_filter(f) if f else None for f in checked]
    raws = [orjson.dumps(p) for p in payloads]
    answer = await redis.eval(_SCRIPT, 0, orjson.dumps(compiled), *raws)
    got = [row.decode() for row in answer]
    docs = [orjson.loads(raw) for raw in raws]
    wanted = ["".join("1" if matches(f or {}, doc) else "0" for f in checked) for doc in docs]
    assert got == wanted, (checked, payloads)

"""Shorter fixed waits for a ``dispatcher run`` child of a test, so it need not wait out a
production interval (the liveness age, the alert interval, the shutdown's settle drain).

A daemon started with ``tests.helpers.short_waits(...)`` in its environment imports this module
as a tasks module (``tasks.modules``), first thing at start and before any loop begins; it sets
each dispatcher module constant named in ``TEST_SHORT_WAITS`` (``liveness.MAX_AGE_S=3,...``).
Only constants that the code reads at each use take effect; a name that does not exist, or is
not a number of seconds, fails the import, so the daemon exits 2 and the test fails loudly.
"""

from __future__ import annotations

import importlib
import os

ENV = "TEST_SHORT_WAITS"


def _apply(spec: str) -> None:
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition("=")
        module_name, _, constant = name.rpartition(".")
        module = importlib.import_module(f"dispatcher.{module_name}")
        current = getattr(module, constant)  # AttributeError: a renamed constant
        if not isinstance(current, float):
            msg = f"dispatcher.{name} is {current!r}, not seconds"
            raise TypeError(msg)
        setattr(module, constant, float(value))


_apply(os.environ.get(ENV, ""))

"""dispatcher: reliable webhook delivery from Redis.

The public Python API is ``Client`` (see ``dispatcher.client``) and the error tree rooted at
``DispatcherError``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from dispatcher.client import Client
from dispatcher.errors import (
    Conflict,
    DispatcherError,
    IdempotencyKeyReused,
    InvalidField,
    NotFound,
    NotReplayable,
    PayloadTooLarge,
    RedisOutOfMemory,
    RedisUnavailable,
)

__all__ = [
    "Client",
    "Conflict",
    "DispatcherError",
    "IdempotencyKeyReused",
    "InvalidField",
    "NotFound",
    "NotReplayable",
    "PayloadTooLarge",
    "RedisOutOfMemory",
    "RedisUnavailable",
    "__version__",
]

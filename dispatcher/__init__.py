"""dispatcher: reliable webhook delivery from Redis.

The public Python API is ``Client`` (see ``dispatcher.client``), ``verify`` (a receiver's
signature check, ``dispatcher.verifier``) and the error tree rooted at ``DispatcherError``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from dispatcher.client import Client
from dispatcher.errors import (
    ConfirmationRequired,
    Conflict,
    DispatcherError,
    EncryptionKeyMissing,
    IdempotencyKeyReused,
    InvalidField,
    InvalidSignature,
    NotFound,
    NotReplayable,
    PayloadTooLarge,
    RedisOutOfMemory,
    RedisUnavailable,
    TooManyRequests,
    UnknownQueue,
)
from dispatcher.tasks import TaskContext, task
from dispatcher.verifier import verify

__all__ = [
    "Client",
    "ConfirmationRequired",
    "Conflict",
    "DispatcherError",
    "EncryptionKeyMissing",
    "IdempotencyKeyReused",
    "InvalidField",
    "InvalidSignature",
    "NotFound",
    "NotReplayable",
    "PayloadTooLarge",
    "RedisOutOfMemory",
    "RedisUnavailable",
    "TaskContext",
    "TooManyRequests",
    "UnknownQueue",
    "__version__",
    "task",
    "verify",
]

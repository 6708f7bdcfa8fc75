# ruff: noqa: N818 - the class names are the contract's words (InvalidField, NotFound, ...)
"""The DispatcherError tree: one root, one snake_case `code` per leaf.

The admin API renders any of these as ``{"error": {"code": ..., "message": ...}}`` with
``http_status``; the Python API raises the same classes, so both answer with the same code.
"""

from __future__ import annotations

from typing import ClassVar


class DispatcherError(Exception):
    """Root of every error dispatcher raises on purpose."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    default_message: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(self.default_message if message is None else message)

    @property
    def message(self) -> str:
        """A human sentence, safe to show to the caller (never a secret or a traceback)."""
        return str(self.args[0])

    def details(self) -> dict[str, object]:
        """Facts the API answers next to ``error`` (``would_purge``, say); none by default."""
        return {}


class InvalidField(DispatcherError):
    """A request field is present but its value is unacceptable."""

    code = "invalid_field"
    http_status = 422

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[type[InvalidField], tuple[str, str]]:
        return (type(self), (self.field, self.reason))


class IdempotencyKeyReused(DispatcherError):
    """The idempotency key was first used with a different request; nothing was enqueued.

    422 as in the IETF Idempotency-Key draft (a key reused with a different payload).
    """

    code = "idempotency_key_reused"
    http_status = 422
    field = "idempotency_key"

    def __init__(self, key: str) -> None:
        super().__init__(
            f"idempotency_key: {key!r} was first used with a different request (event_type, "
            "payload, deliver_at, priority or webhook) within 24 h; nothing was enqueued. "
            "Repeat that request exactly, or use a new key"
        )
        self.key = key

    def __reduce__(self) -> tuple[type[IdempotencyKeyReused], tuple[str]]:
        return (type(self), (self.key,))


class InvalidSignature(DispatcherError):
    """A delivery that ``dispatcher.verify`` refuses; ``check`` names the check it failed:
    ``headers`` (webhook-id, webhook-timestamp or webhook-signature missing or empty),
    ``timestamp`` (not a whole number of seconds), ``too_old`` or ``too_new`` (further from now
    than the tolerance) or ``signature`` (no signature in the header matches a key).

    Raised only by ``verify``, in a receiver; the admin API never answers it.
    """

    code = "invalid_signature"
    http_status = 401
    CHECKS: ClassVar[tuple[str, ...]] = ("headers", "timestamp", "too_old", "too_new", "signature")

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check

    def __reduce__(self) -> tuple[type[InvalidSignature], tuple[str, str]]:
        return (type(self), (self.check, self.message))


class MalformedRequest(DispatcherError):
    """The request is not what the endpoint reads (bad JSON, wrong shape)."""

    code = "malformed_request"
    http_status = 400
    default_message = "malformed request"


class Unauthorized(DispatcherError):
    """The bearer token is missing or wrong, or no token is configured."""

    code = "unauthorized"
    http_status = 401
    default_message = "a valid bearer token is required"


class NotFound(DispatcherError):
    """The named resource does not exist."""

    code = "not_found"
    http_status = 404
    default_message = "not found"


class UnknownQueue(NotFound):
    """No worker serves the queue, no webhook names it, it is not configured nor paused."""

    code = "unknown_queue"

    def __init__(self, message: str, *, known: list[str]) -> None:
        super().__init__(message)
        self.known = known

    def __reduce__(self) -> tuple[type[DispatcherError], tuple[str]]:
        return (NotFound, (self.message,))

    def details(self) -> dict[str, object]:
        return {"known_queues": self.known}


class Conflict(DispatcherError):
    """The request conflicts with the resource's current state."""

    code = "conflict"
    http_status = 409
    default_message = "conflict"


class ConfirmationRequired(Conflict):
    """A destructive request needs ``confirm=true``; ``would_purge`` says what it would do,
    ``retention_s`` and ``within_retention`` what the retention floor keeps (a purge)."""

    code = "confirmation_required"

    def __init__(
        self,
        message: str,
        *,
        would_purge: int,
        retention_s: float | None = None,
        within_retention: int | None = None,
    ) -> None:
        super().__init__(message)
        self.would_purge = would_purge
        self.retention_s = retention_s
        self.within_retention = within_retention

    def __reduce__(self) -> tuple[type[DispatcherError], tuple[str]]:
        return (Conflict, (self.message,))

    def details(self) -> dict[str, object]:
        facts: dict[str, object] = {"would_purge": self.would_purge}
        if self.retention_s is not None:
            facts["retention_s"] = self.retention_s
        if self.within_retention is not None:
            facts["within_retention"] = self.within_retention
        return facts


class NotReplayable(Conflict):
    """Dead jobs that cannot go back to their queue; ``refused`` says which and why."""

    code = "not_replayable"

    def __init__(self, message: str, *, refused: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.refused = refused

    def __reduce__(self) -> tuple[type[DispatcherError], tuple[str]]:
        return (Conflict, (self.message,))

    def details(self) -> dict[str, object]:
        return {"refused": self.refused}


class TooManyRequests(DispatcherError):
    """Too soon after the last such request; ``retry_after_s`` says when to try again (the
    API's ``Retry-After``)."""

    code = "too_many_requests"
    http_status = 429
    default_message = "too many requests"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[type[TooManyRequests], tuple[str]]:
        return (type(self), (self.message,))


class PayloadTooLarge(DispatcherError):
    """The body or event payload exceeds its configured limit."""

    code = "payload_too_large"
    http_status = 413
    default_message = "payload too large"


class RedisUnavailable(DispatcherError):
    """Redis did not answer in time; nothing was accepted."""

    code = "redis_unavailable"
    http_status = 503
    default_message = "Redis is unavailable; nothing was accepted, try again later"


class RegionUnavailable(DispatcherError):
    """Another region's Redis, which holds what was asked, did not answer, or this process
    knows no URL for it (``[regions]``); nothing was changed there."""

    code = "region_unavailable"
    http_status = 503
    default_message = "a region's Redis is unavailable; nothing was changed there, try again"

    def __init__(self, region: str, why: str = "did not answer") -> None:
        super().__init__(f"region {region!r} is unavailable: {why}; nothing was changed there")
        self.region = region


class RedisOutOfMemory(DispatcherError):
    """Redis refused the write for lack of memory (OOM); nothing was accepted."""

    code = "redis_oom"
    http_status = 503
    default_message = "Redis is out of memory; nothing was accepted, try again later"


class EncryptionKeyMissing(DispatcherError):
    """The webhook's secrets are sealed with a key this process does not hold
    (``security.encryption_keys``): nothing was written or sent."""

    code = "encryption_key_missing"
    http_status = 500
    default_message = (
        "webhook secrets are encrypted with a key this process does not have; "
        "configure security.encryption_keys"
    )


class ConfigError(DispatcherError):
    """The configuration is invalid: one line per problem, each naming its key.

    Not an HTTP error: the command line prints it and exits with ``exit_code``.
    """

    code = "invalid_config"
    exit_code: ClassVar[int] = 2

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[str]]]:
        return (type(self), (self.problems,))

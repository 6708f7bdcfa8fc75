"""The fault suite's own checks must be able to fail: signatures as a verifier judges them."""

from __future__ import annotations

import time

from multidict import CIMultiDict

from dispatcher.signing import generate_secret, sign
from tests.faults.harness import _signed
from tests.target import Received


def _delivery(secret: str, *, body: bytes = b'{"seq":1}', age_s: float = 0) -> Received:
    timestamp = int(time.time() - age_s)
    headers = CIMultiDict(
        {
            "webhook-id": "job_x.1",
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign("job_x.1", timestamp, b'{"seq":1}', [secret]),
        }
    )
    return Received("POST", "/ok0", headers, body, time.monotonic() - age_s)


def test_a_signed_delivery_verifies_even_when_judged_later() -> None:
    secret = generate_secret()
    assert _signed(secret, _delivery(secret))
    assert _signed(secret, _delivery(secret, age_s=3600)), "judged as of its arrival"


def test_a_wrong_secret_or_a_changed_body_does_not_verify() -> None:
    secret = generate_secret()
    assert not _signed(generate_secret(), _delivery(secret))
    assert not _signed(secret, _delivery(secret, body=b'{"seq":2}'))

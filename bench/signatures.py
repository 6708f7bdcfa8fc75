"""Signing cost: signatures per second of CPU for ``v1`` (HMAC-SHA256) and ``v1a`` (Ed25519),
as ``signing.sign`` makes them for each delivery, and ``dispatcher.verify``'s checks.

    python -m bench.signatures                        # 1 KiB bodies
    python -m bench.signatures --body-bytes 100000

CPU time (``time.process_time``), so it holds on a busy machine better than wall time. Keys are
parsed once and cached (``signing._key``, ``signing._private_key``), as in the worker: what is
measured is the signature itself.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from typing import TYPE_CHECKING

from dispatcher import signing, verify

if TYPE_CHECKING:
    from collections.abc import Callable

MSG_ID = "job_01m8s0t5vqez7yp32c1e"
TIMESTAMP_S = 1_700_000_000


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls of ``work`` per second of CPU, over about ``seconds`` of it."""
    done, started = 0, time.process_time()
    while (spent := time.process_time() - started) < seconds:
        for _ in range(100):
            work()
        done += 100
    return done / spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per figure")
    args = parser.parse_args()
    body = b"x" * args.body_bytes
    for scheme in ("v1", "v1a"):
        key = signing.generate_key(scheme)
        public = signing.public_key_of(key) if scheme == "v1a" else key
        header = signing.sign(MSG_ID, TIMESTAMP_S, body, [key])
        headers = {
            "webhook-id": MSG_ID,
            "webhook-timestamp": str(TIMESTAMP_S),
            "webhook-signature": header,
        }
        signs = rate(partial(signing.sign, MSG_ID, TIMESTAMP_S, body, [key]), args.seconds)
        checks = rate(partial(verify, body, headers, public, now_s=TIMESTAMP_S), args.seconds)
        print(
            f"{scheme:>3}: sign {signs:>9,.0f}/s ({1e6 / signs:6.1f} us), "
            f"verify {checks:>9,.0f}/s ({1e6 / checks:6.1f} us), {args.body_bytes} B bodies"
        )


if __name__ == "__main__":
    main()

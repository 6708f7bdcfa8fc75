"""The systemd notify protocol: a few datagrams to ``$NOTIFY_SOCKET``, no library needed.

``READY=1`` once the daemon serves, ``STATUS=`` lines for ``systemctl status``, ``STOPPING=1``
when it starts draining, and ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` while it is healthy.
Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading "@", sent with a leading NUL.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        for_us = not pid or pid == str(os.getpid())
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and for_us else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        """Send ``lines`` as one datagram; False when not under systemd or the send failed."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never block the event loop: a receiver that stopped reading (its queue is
                # full) loses this note rather than freezing every delivery with it.
                sock.setblocking(False)
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:  # BlockingIOError included
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=draining")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

"""Which of the daemon's essential loops still make progress: for systemd's watchdog and /readyz.

A loop that turns is not necessarily one that works: a settle loop that retries the same
batch forever on a script error, or a read loop stuck in an await, stops all delivery while
the event loop (and so a naive watchdog) looks healthy. So each essential loop reports:

- ``beat(name)`` after a step that got somewhere: a batch written, a read answered, a tick
  done; and also after a failure because Redis is unavailable (an outage is not a wedge, and
  restarting the daemon would not end it);
- ``idle(name)`` while it waits for work that other loops produce (the settler with no
  outcomes, a reader whose lanes are all busy): healthy however long that lasts;
- ``wake(name)`` after any other failure: the clock starts if the loop was idle, and a loop
  that fails the same way over and over goes stale.

``stalled()`` names the loops that neither beat nor idled for longer than the allowed age. The
watchdog stops petting systemd while the list is not empty, and ``/readyz`` answers 503 with it.
"""

from __future__ import annotations

import time

__all__ = ["MAX_AGE_S", "Liveness"]

#: A loop silent this long is stalled. The longest honest gap is a blocking read (about 2.5 s)
#: or the outage back-off (5 s at most) plus the step itself.
MAX_AGE_S = 15.0


class Liveness:
    """Progress stamps of named loops (monotonic seconds; None while idle)."""

    __slots__ = ("_max_age_s", "_since", "default_max_age_s")

    def __init__(self, default_max_age_s: float | None = None) -> None:
        self._since: dict[str, float | None] = {}
        self._max_age_s: dict[str, float] = {}
        # MAX_AGE_S read now, not when the module was imported (tests/short_waits.py sets it)
        self.default_max_age_s = MAX_AGE_S if default_max_age_s is None else default_max_age_s

    def expect(self, name: str, max_age_s: float | None = None) -> None:
        """Watch ``name`` from now on, allowing it ``max_age_s`` (default: the default age, and
        at least it) between signs of progress."""
        self._max_age_s[name] = max(max_age_s or 0.0, self.default_max_age_s)
        self._since.setdefault(name, time.monotonic())

    def beat(self, name: str) -> None:
        self._since[name] = time.monotonic()

    def idle(self, name: str) -> None:
        self._since[name] = None

    def wake(self, name: str) -> None:
        """Work arrived, or a step failed: an idle loop's clock starts; a running one's goes on."""
        if self._since.get(name) is None:
            self._since[name] = time.monotonic()

    def forget(self, name: str) -> None:
        """The loop ended on purpose (shutdown): no longer watched."""
        self._since.pop(name, None)
        self._max_age_s.pop(name, None)

    def stalled(self, now: float | None = None) -> dict[str, float]:
        """Loops silent for longer than their allowed age (``MAX_AGE_S`` unless ``expect``
        said otherwise), with how long they have been silent (s)."""
        at = time.monotonic() if now is None else now
        return {
            name: round(at - since, 1)
            for name, since in self._since.items()
            if since is not None and at - since > self._max_age_s.get(name, self.default_max_age_s)
        }

    def watched(self) -> list[str]:
        return sorted(self._since)

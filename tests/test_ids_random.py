"""Ids' random bits, drawn from a buffer: never the same bits twice, across threads or a fork."""

from __future__ import annotations

import os
import sys
import threading

from dispatcher import ids


def test_ids_made_in_threads_at_once_are_unique() -> None:
    """Threads making ids at once (a Client per thread, say) never get the same id: an id
    repeated in one millisecond would give two events the same job ids."""
    made: list[list[str]] = []

    def make() -> None:
        made.append([ids.new_event_ids()[0] for _ in range(30_000)])

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often, so any race shows within seconds
    try:
        threads = [threading.Thread(target=make) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    every = [event_id for batch in made for event_id in batch]
    assert len(set(every)) == len(every) == 120_000


def test_a_forked_child_draws_its_own_random_bits() -> None:
    """A child forked after its parent made an id makes ids with other random bits."""
    ids.new_event_ids()  # the parent's buffer is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, "".join(ids.new_event_ids()[0][14:] for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 1000).decode()
    os.close(read)
    parent = "".join(ids.new_event_ids()[0][14:] for _ in range(4))
    assert len(child) == len(parent) == 40
    assert child != parent

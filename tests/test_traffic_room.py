"""traffic.Endpoint.room's shortcut (a lower bound of the attempts' start times) against the
full count it replaces, over random sequences of attempts starting, ending and being asked."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.traffic import Endpoint

_JOBS = st.sampled_from([f"job_{n}" for n in range(6)])
_STEP = st.one_of(
    st.tuples(st.just("begin"), _JOBS, st.floats(0, 3)),
    st.tuples(st.just("sending"), _JOBS, st.floats(0, 3)),
    st.tuples(st.just("end"), _JOBS, st.floats(0, 40), st.booleans(), st.booleans()),
    st.tuples(st.just("hanging"), st.floats(0, 3)),
    st.tuples(st.just("room"), st.floats(0, 60)),
)


def _full_room(endpoint: Endpoint, now: float) -> int:
    """room() as it was before the shortcut: every attempt on the wire looked at."""
    cutoff = now - endpoint.stuck_after_s()
    sending = stuck = 0
    for started in endpoint.started.values():
        if started is not None:
            sending += 1
            stuck += started < cutoff
    limit = endpoint.limit if not stuck else endpoint.limit * (1 - stuck / sending)
    return int(limit) - len(endpoint.started)


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 16), st.lists(_STEP, max_size=60))
def test_room_equals_the_full_count(start: int, steps: list[tuple[object, ...]]) -> None:
    """Whatever attempts began, started, ended or were asked about, in any order, room() is
    what counting every attempt on the wire gives (time only moves forward)."""
    endpoint = Endpoint(start, 32)
    now = 1000.0
    for step in steps:
        match step:
            case ("begin", str(job), float(dt)):
                now += dt
                endpoint.begin(job, now)
            case ("sending", str(job), float(dt)):
                now += dt
                endpoint.sending(job, now)
            case ("end", str(job), float(took), bool(answered), bool(ok)):
                endpoint.end(job, took, answered=answered, ok=ok)
            case ("hanging", float(dt)):
                now += dt
                endpoint.hanging(now)
            case ("room", float(dt)):
                now += dt
                assert endpoint.room(now) == _full_room(endpoint, now)
        assert endpoint.room(now) == _full_room(endpoint, now)

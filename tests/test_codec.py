"""The job's storage format (queue/codec.py): records written by earlier releases read back and
write out byte for byte, and the locator and the entry read as they always have."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from dispatcher.model import Job, JobState
from dispatcher.queue import codec, scripts

if TYPE_CHECKING:
    import redis.asyncio as aioredis

_PAYLOAD = b'{"amount": 1.50, "items": {}, "n": 12345678901234567890}'
_META = b'{"w":"wh_0123456789abcdefghjk","t":"acme","e":"order.paid","q":"default:high",'
# Written by Job.encode as of 6cfd807 (before the codec moved to queue/codec.py).
_RECORDS = [
    _META + b'"s":"queued","a":0,"k":0,"c":1700000000000,"sid":"1700000000000-0"}\n' + _PAYLOAD,
    _META + b'"s":"scheduled","a":2,"k":1,"c":1700000000000,"p":1700000001000,'
    b'"n":1700000060000,"le":"500 Internal Server Error","ls":500,"sid":"1700000000000-0",'
    b'"wr":"rate_limit","rv":1700000002000,"h":[[1700000001000,500,12.5,'
    b'"500 Internal Server Error",0],[1700000002000,null,30000.0,"timeout",1]]}\n' + _PAYLOAD,
    _META + b'"s":"delivered","a":1,"k":0,"c":1700000000000,"p":1700000001000,'
    b'"f":1700000001200,"ls":200,"h":[[1700000001000,200,3.2,null,0]]}\n' + _PAYLOAD,
    _META + b'"s":"delivered","a":1,"k":0,"c":1700000000000,"p":1700000001000,'
    b'"f":1700000001200,"ls":200,"h":[[1700000001000,200,3.2,null,0]]}\n',
    b'{"w":"wh_0123456789abcdefghjk","t":"org:1 \xc3\xa9","e":"order.paid","q":"billing:low",'
    b'"s":"dead","a":5,"k":0,"c":1700000000000,"f":1700000009000,"le":"410 Gone","ls":410,'
    b'"d":"1700000009000-1","r":"gone"}\n' + _PAYLOAD,
]
_JOB_ID = "job_0123456789abcdefghjk.3"


@pytest.mark.parametrize("record", _RECORDS)
def test_a_record_reads_back_and_writes_out_byte_for_byte(record: bytes) -> None:
    job = codec.decode(_JOB_ID, record)
    assert codec.encode(job, keep_payload=bool(job.payload)) == record
    assert job.event_id == "evt_0123456789abcdefghjk"
    assert codec.try_decode(_JOB_ID, record) == job


def test_the_fields_of_a_record() -> None:
    job = codec.decode(_JOB_ID, _RECORDS[1])
    assert (job.stream, job.priority, job.state, job.attempt, job.stalls) == (
        "default:high",
        "high",
        JobState.SCHEDULED,
        2,
        1,
    )
    assert (job.waiting, job.reserved_ms, job.last_status) == ("rate_limit", 1700000002000, 500)
    assert job.payload == _PAYLOAD
    meta_only = codec.decode_meta(_JOB_ID, _RECORDS[1].partition(b"\n")[0])
    assert meta_only.payload == b""
    assert meta_only.history == job.history


def test_history_keeps_the_last_fifty_and_cjson_empty_history_reads_as_none() -> None:
    job = codec.decode(_JOB_ID, _RECORDS[0])
    job.history = [[n, 503, 1.0, "503", 0] for n in range(60)]
    again = codec.decode(_JOB_ID, codec.encode(job))
    assert [entry[0] for entry in again.history] == list(range(10, 60))
    cjson = _RECORDS[0].replace(b"}\n", b',"h":{}}\n', 1)
    assert codec.decode(_JOB_ID, cjson).history == []


def test_the_locator() -> None:
    """A locator is a few bytes: the entry id relative to the job id's time, the stream
    named only when it is not the default queue's normal one."""
    job_ms = codec.id_ms(_JOB_ID)
    assert codec.locator("default", f"{job_ms + 3}-0", _JOB_ID) == b"@3-0"
    assert codec.locator("default", f"{job_ms + 1295}-36", _JOB_ID) == b"@zz-10"
    assert codec.locator("default:low", f"{job_ms - 12}-7", _JOB_ID) == b"@-c-7,default:low"
    cases = [("default", f"{job_ms + 3}-0"), ("billing:high", f"{job_ms - 1200}-17")]
    cases += [("default", f"{job_ms + 86_400_000}-123456")]
    for stream, sid in cases:
        raw = codec.locator(stream, sid, _JOB_ID)
        assert codec.is_locator(raw)
        assert codec.parse_locator(raw, _JOB_ID) == (stream, sid)
    assert not codec.is_locator(_RECORDS[0])
    assert codec.try_decode(_JOB_ID, b"@3-0") is None
    assert codec.try_decode(_JOB_ID, None) is None
    assert codec.try_decode(_JOB_ID, b"garbage") is None
    with pytest.raises(ValueError, match="not a locator"):
        codec.parse_locator(b"@x", _JOB_ID)


def test_a_locator_written_before_the_short_form_still_reads() -> None:
    """A locator of an earlier release, "@<stream> <entry id>", names its entry as it did."""
    raw = b"@default:low 1700000000000-7"
    assert codec.is_locator(raw)
    assert codec.parse_locator(raw, _JOB_ID) == ("default:low", "1700000000000-7")
    assert codec.parse_locator(b"@12-3 1700000000000-0", _JOB_ID) == ("12-3", "1700000000000-0")
    assert codec.try_decode(_JOB_ID, raw) is None


def test_a_job_from_its_entry() -> None:
    fields = {b"j": _JOB_ID.encode(), b"w": b"wh_x", b"t": b"acme", b"e": b"a.b", b"p": b"{}"}
    assert codec.is_inline(fields)
    assert not codec.is_inline({b"j": b"x", b"w": b"y"})
    job = codec.from_entry(_JOB_ID, "default", "1700000000123-0", fields)
    assert isinstance(job, Job)
    assert (job.state, job.created_at_ms, job.sid, job.priority) == (
        JobState.QUEUED,
        1700000000123,
        "1700000000123-0",
        "normal",
    )
    with pytest.raises(KeyError):
        codec.from_entry(_JOB_ID, "default", "1-0", {b"w": b"wh_x"})


async def test_lua_and_python_write_and_read_the_same_locators(redis: aioredis.Redis) -> None:
    """_record.lua's make_locator and parse_locator agree with codec's, both forms, any delta."""
    job_id = _JOB_ID
    job_ms = codec.id_ms(job_id)
    cases = [
        ("default", f"{job_ms + 3}-0"),
        ("default", f"{job_ms + 1295}-1295"),
        ("default:low", f"{job_ms - 12}-7"),
        ("billing:high", f"{job_ms + 86_400_000}-123456"),
        ("default", f"{job_ms - 5_000_000}-0"),
    ]
    script = scripts._read("_record.lua") + (
        "local out = {}\n"
        "for i = 1, #ARGV, 2 do\n"
        "  local written = make_locator(ARGV[i], ARGV[i + 1], KEYS[1])\n"
        "  local stream, sid = parse_locator(written, KEYS[1])\n"
        "  out[#out + 1] = written; out[#out + 1] = stream .. ' ' .. sid\n"
        "end\n"
        "local stream, sid = parse_locator('@default:low 1700000000000-7', KEYS[1])\n"
        "out[#out + 1] = stream .. ' ' .. sid\n"
        "return out\n"
    )
    args = [part for case in cases for part in case]
    reply = await redis.eval(script, 1, job_id, *args)
    for n, (stream, sid) in enumerate(cases):
        assert reply[2 * n] == codec.locator(stream, sid, job_id)
        assert reply[2 * n + 1] == f"{stream} {sid}".encode()
    assert reply[-1] == b"default:low 1700000000000-7"

"""The orphan scan's shortcut (only records holding '"s":"queued"' are decoded): a queued
record is still put back whichever encoder wrote it, a finished one never, whatever its payload."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.queue import delays
from dispatcher.queue.keys import Keys
from tests.helpers import stream_entries

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from dispatcher.queue.store import Store

_META = '"w":"wh_0123456789abcdefghjk","t":"acme","e":"a.b","q":"default","a":1,"k":0,"c":1'
_CJSON_WRITE = (
    "local meta = {w = 'wh_0123456789abcdefghjk', t = 'acme', e = 'a.b', q = 'default',"
    " s = 'queued', a = 1, k = 0, c = 1, sid = '1-0'}\n"
    "redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(meta) .. '\\n' .. ARGV[2])\n"
)


async def test_queued_records_are_requeued_and_finished_ones_left(
    store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """Queued records (orjson's and cjson's) whose entry is gone go back in their stream; a
    delivered record whose payload holds '"s":"queued"' and the meta of a queued job stays."""
    keys = Keys(prefix)
    orjson_id, cjson_id, done_id = "job_a.1", "job_b.1", "job_c.1"
    queued = f'{{{_META},"s":"queued","sid":"1-0"}}\n{{}}'
    await redis.hset(keys.jobs, orjson_id, queued)
    await redis.eval(_CJSON_WRITE, 1, keys.jobs, cjson_id, '{"n":1}')
    done = f'{{{_META},"s":"delivered","sid":"1-0"}}\n{{"x":"\\"s\\":\\"queued\\"","s":"queued"}}'
    await redis.hset(keys.jobs, done_id, done)
    found = await delays.find_orphans(store, cursor="0", count=1000)
    assert (sorted(found.requeued), found.dead) == ([orjson_id, cjson_id], [])
    assert await redis.hget(keys.jobs, done_id) == done.encode()
    entries = await stream_entries(redis, keys.ready("default"))
    assert sorted(fields[b"j"] for _, fields in entries) == [orjson_id.encode(), cjson_id.encode()]


async def test_locators_of_the_earlier_form_are_scanned_as_before(
    store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A locator an earlier release wrote ("@<stream> <entry id>") is left alone while its
    entry exists, and dead-lettered as entry_missing once it is gone."""
    keys = Keys(prefix)
    sid = await redis.xadd(keys.ready("default:high"), {"j": "job_a.1"})
    assert isinstance(sid, bytes)
    await redis.hset(keys.jobs, "job_a.1", b"@default:high " + sid)
    await redis.hset(keys.jobs, "job_b.1", b"@default:low 1-0")
    found = await delays.find_orphans(store, cursor="0", count=1000)
    assert (found.dead, found.requeued) == (["job_b.1"], [])
    assert await redis.hget(keys.jobs, "job_a.1") == b"@default:high " + sid

"""The publish fan-out: one job per matching webhook, per shard one script, idempotency keys
with a fingerprint of the request, hash-based deduplication of identical events, and the answer
assembled from the shards' parts."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import orjson
import redis.exceptions as rex

from dispatcher.errors import DispatcherError, IdempotencyKeyReused
from dispatcher.ids import shard_job_prefix, stream_of
from dispatcher.queue.control import STATS_TTL_S, minute_of
from dispatcher.queue.records import DEFAULT_QUEUE, redis_errors, translate

if TYPE_CHECKING:
    from dispatcher.queue.store import Store

IDEMPOTENCY_TTL_S = 24 * 3600
MAX_DEDUP_WINDOW_S = 86_400


@dataclass(frozen=True, slots=True)
class Publication:
    """One event to enqueue, already validated, with its ids chosen."""

    tenant_id: str
    event_type: str
    payload: bytes
    event_id: str
    job_prefix: str
    idempotency_key: str | None = None
    deliver_at_ms: int | None = None
    priority: str = "normal"
    only_webhook: str | None = None
    #: True for another shard's part of an event whose id shard 0's part decided (``_of_event``).
    decided: bool = False
    #: Seconds within which an identical event (same tenant, event type and canonical payload)
    #: answers this one's answer and enqueues nothing; 0 is off. A publish with an idempotency
    #: key is decided by its key alone: it neither checks nor claims the hash.
    dedup_window_s: int = 0
    #: A FIFO webhook's lane for this event's job (None: the webhook's keyless lane); other
    #: webhooks ignore it.
    ordering_key: str | None = None
    #: The hex hash an identical event shares ('' when dedup is off); computed once, here.
    dedup_hash: str = ""
    #: What a repeat of the idempotency key must match ('' without a key).
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", self._fingerprint())  # frozen: set once, here
        if self.dedup_window_s and self.idempotency_key is None and not self.dedup_hash:
            object.__setattr__(self, "dedup_hash", self._dedup_hash())

    @property
    def ordered(self) -> bool:
        """Whether shard 0's part must decide the event before the other shards' parts run."""
        return self.idempotency_key is not None or bool(self.dedup_hash)

    def _dedup_hash(self) -> str:
        """What identical events share: the event type and the payload as the JSON value it is
        (the tenant is in the key's name, as for fingerprints). An event type holds no white
        space (``model.check_event_type``), so the space ends it unambiguously."""
        identity = b"%s %s" % (self.event_type.encode(), _canonical(self.payload))
        return hashlib.blake2b(identity, digest_size=16).hexdigest()

    def _fingerprint(self) -> str:
        """A hash of the request's parts; the key's scope (tenant, webhook) is in its name."""
        if self.idempotency_key is None:
            return ""
        digest = hashlib.blake2b(digest_size=16)
        for part in (
            self.event_type.encode(),
            _canonical(self.payload),
            str(self.deliver_at_ms or "").encode(),
            self.priority.encode(),
            (self.only_webhook or "").encode(),
        ):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        if self.ordering_key is not None:  # only then: keys stored before keep their fingerprint
            digest.update(b"ordering_key " + self.ordering_key.encode())
        return digest.hexdigest()


def _canonical(payload: bytes) -> bytes:
    """The payload as the JSON value it is: objects' keys sorted (a retry that rebuilt its
    object in another order is the same request), strings and numbers written one way
    (``"\\u00e9"`` is ``"é"``, ``1.50`` is ``1.5``; ``1`` and ``1.0`` stay different)."""
    try:
        return orjson.dumps(orjson.loads(payload), option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):  # not JSON: its bytes, then
        return payload


def _publish_call(
    store: Store, pub: Publication, names: list[str]
) -> tuple[list[str], list[bytes | str | int]]:
    """publish.lua's keys and arguments for ``pub``'s part in ``store``'s shard, with the keys
    of the queues ``names`` (at least one: the script builds any other queue's keys from it).
    The last word is the region of the layout last read (``read_layout``, which every publish
    calls first), '-' without regions: with one, job ids end in ``~<region>`` and another
    region's webhooks get outbox entries (publish.lua)."""
    keys = store.keys
    names = names or [DEFAULT_QUEUE]
    streams = [stream_of(name, pub.priority) for name in names]
    queue_keys = [k for stream in streams for k in (keys.ready(stream), keys.delayed(stream))]
    idem = (pub.tenant_id, pub.idempotency_key or "", pub.only_webhook)
    now_ms = store.clock.now_ms()
    window = pub.dedup_window_s if pub.dedup_hash else 0
    event = " ".join(
        (
            shard_job_prefix(pub.job_prefix, keys.shard),
            pub.event_id,
            pub.tenant_id,
            pub.event_type,
            str(now_ms),
            str(pub.deliver_at_ms or 0),
            str(IDEMPOTENCY_TTL_S if pub.idempotency_key else 0),
            pub.only_webhook or "-",
            pub.fingerprint or "-",
            "1" if pub.decided else "-",
            str(window),
            "-" if pub.ordering_key is None else f"={pub.ordering_key}",
            store.layout.region or "-",
        )
    )
    args: list[bytes | str | int] = [event, " ".join(names), " ".join(streams), pub.payload]
    idem_keys = [keys.idempotency(*idem), keys.fingerprint(*idem)]
    call_keys = [keys.tenant(pub.tenant_id), keys.jobs, *idem_keys, *queue_keys]
    if window:
        call_keys += [keys.dedup(pub.tenant_id, pub.dedup_hash), keys.stats(minute_of(now_ms))]
        args += [STATS_TTL_S, f"{pub.priority} {pub.deliver_at_ms or 0}"]
    return call_keys, args


async def _shards_of(store: Store, pub: Publication) -> list[Store]:
    """Where an event's jobs may go: its one webhook's shard, or every shard (each holds the
    routes of its own webhooks)."""
    if pub.only_webhook is not None:
        return [store.of_webhook(pub.only_webhook)]
    with redis_errors():
        return await store.all_shards()


async def publish(
    store: Store, pub: Publication, queues: set[str] | None = None
) -> tuple[bool, dict[str, Any]]:
    """Enqueue one job per matching webhook; returns (new, answer).

    A repeated key answers the first answer if the request is the same (its ``fingerprint``),
    else raises ``IdempotencyKeyReused`` and enqueues nothing; the answer's ``matched`` counts
    the webhooks the event was fanned out to (one job each). With a dedup window, an event
    identical to one accepted within it answers that one's answer with ``deduplicated`` true
    (and new False) and enqueues nothing; every other answer has ``deduplicated`` false.

    Each shard's part is one script, all its jobs or none; with several shards the parts run
    side by side and an error in one is raised after all have answered (a retry with the same
    idempotency key completes what is missing). With a key, shard 0's part runs first and
    decides the event id (this call's, or the one an earlier try stored), which the other
    shards' jobs then carry: every job of one key belongs to one event, retries included.
    Shard 0 alone also decides new, repeat or refused: another shard's record of an earlier
    event (shard 0's record expired first: each has its own TTL) is replaced, not obeyed.
    A dedup hash works the same way: a duplicate, or a retry of an event a shard failed,
    completes the first event's missing parts (that retry answers ``deduplicated`` true, the
    first event's, and new True, as it enqueued jobs: 202 from the API, as a key's retry).
    ``queues`` names the queues whose keys are passed to the script; it builds the keys of any
    other queue a matching webhook uses (in the same shard), so no part is ever redone for one.
    """
    known = queues if queues is not None else {DEFAULT_QUEUE}
    # The region (a word of each part) and Redis's clock (now_ms decides whether deliver_at is
    # due): both cached, read again only when old.
    with redis_errors():
        await store.read_layout()
    shards = await _shards_of(store, pub)
    done: list[tuple[int, str]] = []
    if len(shards) > 1 and pub.ordered:
        done.append(await _publish_in(shards[0], pub, known))
        pub, shards = _of_event(pub, done[0][1]), shards[1:]
    parts = await asyncio.gather(
        *(_publish_in(shard, pub, known) for shard in shards), return_exceptions=True
    )
    for part in parts:
        if isinstance(part, BaseException):
            raise part
    done += cast("list[tuple[int, str]]", parts)
    new = any(status == _NEW for status, _ in done)
    return new, _answer([answer for _, answer in done], deduplicated=done[0][0] == _DUPLICATE)


def _of_event(pub: Publication, answer: str) -> Publication:
    """The publication as another shard's part of the event shard 0's answer
    (``event_id ...``) names; a dedup key's answer also gives that event's priority and due
    time (after a newline), which a duplicate completing its parts must keep."""
    answer, _, first = answer.partition("\n")
    event_id = answer.partition(" ")[0]
    job_prefix = f"job_{event_id.removeprefix('evt_')}."
    pub = replace(pub, event_id=event_id, job_prefix=job_prefix, decided=True)
    if first:
        priority, due_ms = first.split(" ")
        pub = replace(pub, priority=priority, deliver_at_ms=int(due_ms) or None)
    return pub


# publish.lua's answers: a new event, a repeated idempotency key (or another shard's part
# already written), an identical event's answer (its dedup key), a key first used with another
# request.
_NEW, _REPEAT, _DUPLICATE, _REUSED = 1, 0, 2, -2


async def _publish_in(store: Store, pub: Publication, known: set[str]) -> tuple[int, str]:
    """(publish.lua's status, its answer) of ``pub``'s part in ``store``'s shard."""
    keys, args = _publish_call(store, pub, sorted(known))
    with redis_errors():
        status, answer = await store.scripts.publish(keys=keys, args=args)
    if status == _REUSED:
        raise IdempotencyKeyReused(pub.idempotency_key or "")
    return int(status), answer.decode()


@dataclass(slots=True)
class _Part:
    """What one event of a batch got so far: its shards' answers, or its error."""

    pub: Publication
    shards: list[Store]
    answers: list[str] = field(default_factory=list)
    new: bool = False
    #: The deciding part (not ``decided``) found an identical event's answer.
    deduplicated: bool = False
    #: The first error met: a DispatcherError, or a Redis error ``translate`` does not map
    #: (``publish_many`` wraps it, ``Publisher`` raises it as ``publish`` would).
    error: Exception | None = None


async def publish_many(
    store: Store, pubs: list[Publication], queues: set[str] | None = None
) -> list[dict[str, Any] | DispatcherError]:
    """Enqueue several events in one round trip; each stays all-or-nothing on its own (per
    shard, see ``publish``).

    The answer list matches ``pubs``: an answer dict, or the error that event met (Redis
    unavailable or out of memory, say) while the others may have been accepted. With several
    shards, events with an idempotency key take a second round trip: shard 0's parts first,
    which decide their event ids (see ``publish``), then the other shards' parts, with the
    later events' parts on those shards (so a FIFO lane gets the events in the order given).
    On a cluster the events' scripts go one by one instead of pipelined (``_in_turn``).
    """
    known = queues if queues is not None else {DEFAULT_QUEUE}
    return [
        result[1] if isinstance(result, tuple) else _as_dispatcher_error(result)
        for result in await _publish_batch(store, pubs, known)
    ]


async def _publish_batch(
    store: Store, pubs: list[Publication], known: set[str]
) -> list[tuple[bool, dict[str, Any]] | Exception]:
    """``publish`` of each event, pipelined: (new, answer) or the error each one met."""
    with redis_errors():
        await store.read_layout()  # the region and the clock, as ``publish``
    parts, later = await _rounds(store, pubs)
    await _pipelined(store, parts, known)
    decided = []
    for first, rest in zip(parts, later, strict=True):
        if rest.shards and first.pub.ordered and first.shards:  # shard 0's part decided it
            if first.error is not None:
                continue
            rest.pub = _of_event(rest.pub, first.answers[0])
        if rest.shards:
            decided.append(rest)
    await _pipelined(store, decided, known)
    results: list[tuple[bool, dict[str, Any]] | Exception] = []
    for first, rest in zip(parts, later, strict=True):
        error = first.error or rest.error
        if error is not None:
            results.append(error)
        else:
            deduplicated = first.deduplicated or rest.deduplicated
            answer = _answer(first.answers + rest.answers, deduplicated=deduplicated)
            results.append((first.new or rest.new, answer))
    return results


async def _rounds(store: Store, pubs: list[Publication]) -> tuple[list[_Part], list[_Part]]:
    """Each event's parts of the first round trip and of the second: an event with an
    idempotency key or dedup hash on several shards runs on shard 0 first (which decides it),
    and a shard with a part put off takes the later events' parts there too, so the events of
    one FIFO lane join it in the order given."""
    parts: list[_Part] = []
    later: list[_Part] = []
    put_off: set[int] = set()
    for pub in pubs:
        shards = await _shards_of(store, pub)
        if len(shards) > 1 and pub.ordered:
            parts.append(_Part(pub, shards[:1]))
            later.append(_Part(pub, shards[1:]))
            put_off.update(id(shard) for shard in shards[1:])
        elif not put_off:
            parts.append(_Part(pub, shards))
            later.append(_Part(pub, []))
        else:
            parts.append(_Part(pub, [s for s in shards if id(s) not in put_off]))
            later.append(_Part(pub, [s for s in shards if id(s) in put_off]))
    return parts, later


async def _pipelined(store: Store, parts: list[_Part], known: set[str]) -> None:
    """Run each part's shards' scripts in one pipeline, noting answers and errors on it."""
    if not parts:
        return
    if store.cluster is not None:  # redis-py's cluster pipeline refuses EVALSHA
        await _in_turn(parts, known)
        return
    script = store.scripts.publish
    pipe = store.redis.pipeline(transaction=False)
    for part in parts:
        for shard in part.shards:
            keys, args = _publish_call(shard, part.pub, sorted(known))
            pipe.evalsha(script.sha, len(keys), *keys, *args)
    with redis_errors():
        replies = iter(await pipe.execute(raise_on_error=False))
    for part in parts:
        for shard, reply in zip(part.shards, replies, strict=False):
            await _note(part, shard, reply, known)


async def _in_turn(parts: list[_Part], known: set[str]) -> None:
    """Each part's shards' scripts one by one, noting answers and errors on it: the parts
    that may reach one FIFO lane (one shard, tenant and ordering key) one after the other in
    the order given, the others side by side."""
    chains: dict[tuple[int, str, str | None], list[tuple[_Part, Store]]] = {}
    for part in parts:
        for shard in part.shards:
            lane = (shard.keys.shard, part.pub.tenant_id, part.pub.ordering_key)
            chains.setdefault(lane, []).append((part, shard))

    async def chain(links: list[tuple[_Part, Store]]) -> None:
        for part, shard in links:
            await _alone(part, shard, known)

    await asyncio.gather(*(chain(links) for links in chains.values()))


async def _alone(part: _Part, shard: Store, known: set[str]) -> None:
    """``part``'s script in ``shard`` on its own (loading the script if needed), noted on it."""
    try:
        status, answer = await _publish_in(shard, part.pub, known)
    except (DispatcherError, rex.RedisError) as exc:
        part.error = part.error or exc
    else:
        _count(part, status, answer)


async def _note(part: _Part, shard: Store, reply: Any, known: set[str]) -> None:
    """What one shard's script answered for ``part``, as ``publish`` would take it."""
    if isinstance(reply, rex.NoScriptError):
        await _alone(part, shard, known)  # the script is not loaded yet: this loads it
    elif isinstance(reply, Exception):
        part.error = part.error or translate(reply) or reply
    elif reply[0] == _REUSED:
        part.error = part.error or IdempotencyKeyReused(part.pub.idempotency_key or "")
    else:
        _count(part, int(reply[0]), reply[1].decode())


def _count(part: _Part, status: int, answer: str) -> None:
    part.new = part.new or status == _NEW
    part.deduplicated = part.deduplicated or (status == _DUPLICATE and not part.pub.decided)
    part.answers.append(answer)


class Publisher:
    """Single publishes, sent together: the events ``publish`` is asked for while a loop
    iteration runs go to Redis in one pipeline (as ``publish_many`` sends them), each still
    its own script, all or nothing, with the answer or error ``publish`` gives.

    With many publishes in flight this saves the per-command cost of the Redis client, the
    bulk of a publish. A cluster (whose pipeline refuses scripts) publishes one by one.
    """

    MAX_BATCH = 256

    def __init__(self, store: Store, queues: set[str]) -> None:
        self.store = store
        self.queues = queues
        self._waiting: list[tuple[Publication, asyncio.Future[tuple[bool, dict[str, Any]]]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish(self, pub: Publication) -> tuple[bool, dict[str, Any]]:
        """As ``publish(store, pub, queues)``."""
        if self.store.cluster is not None:
            return await publish(self.store, pub, self.queues)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[bool, dict[str, Any]]] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.append((pub, future))
        return await future

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        for start in range(0, len(waiting), self.MAX_BATCH):
            task = asyncio.ensure_future(self._send(waiting[start : start + self.MAX_BATCH]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(
        self, batch: list[tuple[Publication, asyncio.Future[tuple[bool, dict[str, Any]]]]]
    ) -> None:
        try:
            results = await _publish_batch(self.store, [pub for pub, _ in batch], self.queues)
        except BaseException as exc:  # the round trip failed: every event of it meets the error
            for _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


def _as_dispatcher_error(exc: Exception) -> DispatcherError:
    if isinstance(exc, DispatcherError):
        return exc
    return translate(exc) or DispatcherError(f"publish failed: {exc}")


def _answer(parts: list[str], *, deduplicated: bool) -> dict[str, Any]:
    """One answer from the shards' ``event_id job_id webhook_id ...``, jobs by webhook id;
    ``matched`` is the number of webhooks the event went to (one job each, so stored answers
    need not keep it); ``deduplicated`` says it is an identical event's answer."""
    event_id = ""
    jobs = []
    for stored in parts:
        first, *pairs = stored.partition("\n")[0].split(" ")  # a dedup key's: answer first
        event_id = event_id or first
        jobs += [{"id": pairs[i], "webhook_id": pairs[i + 1]} for i in range(0, len(pairs), 2)]
    if len(parts) > 1:
        jobs.sort(key=lambda job: job["webhook_id"])
    return {"event_id": event_id, "jobs": jobs, "matched": len(jobs), "deduplicated": deduplicated}

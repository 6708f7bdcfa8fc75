"""Every Redis key dispatcher uses, and the layout behind them.

All keys of one deployment start with ``redis.prefix``. They are split into ``redis.shards``
shards, each a complete copy of the layout below under its own hash tag (``{0}`` for shard 0),
so every script touches keys of one shard only and the same code runs on Redis Cluster, where
the shards spread over the nodes. A webhook lives in one shard, chosen when it is created and
written into its id (``wh_<core>`` is shard 0, ``wh_<core>.<k>`` shard k); its jobs live in the
same shard (``job_<core>.<n>`` and ``job_<core>.<k>.<n>``), so the id alone finds any record;
so do its delivery stats (``wstats:``).
Shard 0 also holds what belongs to the deployment as a whole: ``layout``, ``paused``,
``workers``, ``stats``, the task registry and every task job (``tasks``). Nothing outside
this module formats a key.

A shard's hash tag is its number for shard 0 and, for shard k > 0, the string ``k-i`` (the
smallest ``i`` below 256 whose slot lies closest to shard 0's slot plus k times the golden
ratio of the 16384 slots): slots spread evenly whatever the number of shards, so an evenly
split cluster puts consecutive shards on different nodes. Tags never change once chosen.

Layout (``P`` is the prefix, ``Q`` a queue name, ``S`` one of a queue's three priority streams,
``Q:high``, ``Q`` or ``Q:low``, ``T`` a tenant id, ``W`` a webhook id):

Names are unambiguous: two different inputs never give one key. After the fixed family name
(``tenant:``, ``q:``, ``lease:``, ...), a part a user chooses freely either comes last
(``tenant:T``) or is preceded by its length (``idempotency:N:T:K``). Tenant ids are 1 to 256
characters without white space (``model.check_tenant_id``), so they may hold ``:``, ``{`` and
``}``; a ``{`` cannot move the hash tag, which is the first ``{...}`` of a name and comes
before. Queue names are ``[a-z0-9][a-z0-9_-]*`` (``model.check_queue``), so the ``:`` in ``S``
and before ``ready``/``delayed`` never comes from a queue name. Webhook ids (``W``) are ``wh_``
ids the server chooses, and come last; ``M`` is a number.

``P:{0}:webhooks``        hash  webhook id -> webhook JSON (secrets included)
``P:{0}:tenant:T``        hash  webhook id -> routing JSON ``{"e": [types], "on": 1, "q": Q}``
``P:{0}:jobs``            hash  job id -> record: meta JSON, a newline, then the payload bytes
``P:{0}:q:S:ready``       stream of jobs ready to send, entries ``{j: job id, w: webhook id}``,
                          read by the consumer group ``dispatch``; an entry is XDELed when its
                          job leaves the queue, so the stream holds only unfinished work
``P:{0}:q:S:delayed``     zset  job id -> due time (ms, Redis clock): retries and scheduled jobs
``P:{0}:done``            zset  job id -> finished time (ms): finished records, swept after
                          ``jobs.retention_s``
``P:{0}:payload:J``       string, the payload of delivered job J, kept ``jobs.payload_retention_s``
                          (its TTL) for a retry (settle.lua writes it, retry_job.lua takes it)
``P:{0}:lane:W``          list  a FIFO webhook's keyless lane: the ids of its unfinished jobs in
``P:{0}:lane:W:N:K``      publish order, for ordering key K (N its length in bytes). Only the
                          first, the head, is in a ready stream or a delayed zset; settle.lua
                          pops it when it is delivered or dead and queues the next
``P:{0}:lanes:heads``     hash  job id -> its lane's key, for each lane's head: a head whose
                          record is unreadable or gone still releases its lane (``_lane.lua``)
``P:{0}:lanes:since``     zset  job id -> since when its lane waits for this head (ms: when it
                          became the head, or its due time if later)
``P:{0}:lanes:waiting``   hash  webhook id -> its jobs waiting behind a lane's head (the sum of
                          its lanes' lengths minus one each; no field at 0)
``P:{0}:dlq``             stream of dead jobs ``{j: job id, r: reason}`` (or ``{raw, r}`` for an
                          entry that could not be parsed); entry ids give a stable cursor
``P:{0}:idempotency:N:T:K`` string, the first answer to tenant T's publish with idempotency key
                          K (24 h); N is T's length in characters, so the name is unambiguous
                          although T and K may both hold ``:`` (``org:1`` with ``k`` is
                          ``idempotency:5:org:1:k``, ``org`` with ``1:k`` is
                          ``idempotency:3:org:1:k``). It used to be ``idem:T:K``, where both
                          were one key; the new family name keeps an old key from ever
                          being read as a new one (old keys expire unread within 24 h)
``P:{0}:idempotency:W:N:T:K`` string, the same for a delivery to webhook W alone
                          (``deliver``), so the same key used for two webhooks, or for a
                          delivery and a publish, names two keys (W starts ``wh_``, never a
                          digit, and holds no ``:``)
``P:{0}:fingerprint:N:T:K`` string, beside ``idempotency:N:T:K`` (same TTL, written with it):
                          the hex fingerprint of the request that first used the key, which a
                          repeat must match; a record without one (written before fingerprints,
                          or by a release that does not write them) is a repeat of any request.
                          The record itself keeps its format, so every release reads it
``P:{0}:fingerprint:W:N:T:K`` string, the same for ``idempotency:W:N:T:K``
``P:{0}:dedup:N:T:H``     string, the answer (``event_id job_id webhook_id ...``) of tenant T's
                          event whose hash is H (hex: its event type and canonical payload,
                          ``publishing.Publication``), for ``events.dedup_window_s`` (its TTL):
                          an identical event within it answers this and enqueues nothing. N is
                          T's length, as in ``idempotency:N:T:K``; H is hex and comes last.
                          Every shard an event reaches holds one, naming its jobs there
                          (shard 0's decides; another shard's names the newest identical event
                          written there; ``publish.lua``). After the answer, a newline and
                          the event's priority and due ms (``high 0``), which a duplicate that
                          completes a failed shard's part keeps
``P:{0}:stats:M``         hash  counters for minute M (delivered, failed, dead, ms_sum; and
                          deduplicated, the publishes answered from a ``dedup`` key), 1 h TTL
``P:{0}:wstats:m:W:M``    hash  webhook W's delivery counts of minute M (``tally.py`` names the
                          fields: attempts, delivered, failed, latency and lag histogram
                          buckets; ``r`` once rolled into its hour), 2 h TTL
``P:{0}:wstats:h:W:H``    hash  the same counts of hour H (the minutes rolled into it), 7 days
                          and an hour TTL; W holds no ``:``, so the number after it is M or H
``P:{0}:wstats:pending``  zset  ``W:M`` -> M: the minutes with counts not yet rolled into their
                          hour (``queue/stats.py``); members older than the minutes' TTL are
                          trimmed by each flush
``P:{0}:layout``          hash  ``shards``: how many shards new webhooks are spread over;
                          ``served``: how many may hold work (the most there ever were)
``P:{0}:encryption``      string, the canary of ``security.encryption_keys`` (``encryption.py``):
                          JSON ``{"kid", "check"}``, a known text sealed with the key that seals
                          webhook secrets, so a process with a wrong or no key refuses to start
``P:{0}:paused``          set   paused queue names
``P:{0}:queues``          set   the queue names this shard's webhooks name or named (written with
                          each webhook's record; never shrinks), so pausing a queue that
                          nothing names or serves can be refused as a likely typo
``P:{0}:queues:indexed``  string, the number of webhooks (HLEN) when ``queues`` was last known
                          to hold the queue of every webhook: set by the backfill scan
                          (``index_queues.lua``, 15 min TTL), then kept in step by each
                          create and delete (the first create of a new install sets it to 1); a
                          webhook hash of another length (one an older release wrote) or no
                          marker means the next unknown-queue miss scans again
``P:{0}:queues:scan``     string, the HSCAN cursor where an unfinished backfill goes on (1 h TTL)
``P:{0}:queues:lock``     string, the token of the one process running the backfill (SET NX PX)
``P:{0}:workers``         hash  consumer name -> heartbeat JSON
``P:{0}:rates``           hash  webhook id -> "<tat> <sent>": GCRA theoretical arrival times (ms)
                          of its rate limit's slots handed out and of its sends (admit.lua)
``P:{0}:lease:W``         zset  job id -> lease expiry (ms): attempts in flight to webhook W, for
                          its ``max_in_flight`` across processes; a dead holder's lease expires
``P:{0}:breakers``        hash  webhook id -> circuit breaker JSON (only webhooks that failed)
``P:{0}:parked:W``        zset  job id -> parked time (ms): jobs waiting for W's breaker to close
``P:{0}:waiting:W``       zset  job id -> created time (ms): W's jobs waiting for room (its
                          ``max_in_flight`` full, or a process's share of the endpoint), put
                          back in their queue as W's attempts end (settle.lua), or by the tick
                          when room frees otherwise (waiting_tick.lua)
``P:{0}:waiters``         zset  webhook id -> last release (ms): the webhooks with waiting jobs
``P:{0}:testsend:W``      string, set (NX, PX 1000) by a test send to webhook W: at most one a
                          second across every process (``queue/resend.py``)
``P:{0}:q:W|S:ready``     stream of W's jobs never attempted held while W is paused, from ready
                          stream S: each entry as it was in S (same id), less ``w``; the
                          locator of its job names stream ``W|S`` (lua/_held.lua). No group
``P:{0}:held:W``          zset  job id -> accepted order (created ms * 1000 + entry seq): W's
                          other held jobs (full records). Both are put back in their queue in
                          accepted order once W is resumed, disabled or deleted
                          (pause_release.lua)
``P:{0}:resumed:W``       hash  ready stream -> id of the last of W's held jobs put back there
                          since W's resume: W drains until each stream's group claimed past it
                          (lua/_held.lua); gone with the drain mark
``P:{0}:holders``         set   the webhooks with a held zset (or whose resume is still draining)
``P:{0}:holders:streams`` set   the held streams ``W|S``; apart from ``holders``, which the
                          release before this one walks (and would empty of these names).
                          Both are what pause_release.lua's safety net walks, a few a call
``P:{0}:releasing``       set   the webhooks whose held jobs the tick puts back or whose drain it
                          ends: added by their resume, disable or delete (and by a hold while
                          they drain), left once paused again or drained (pause_release.lua)
``P:{0}:holders:scan``    string, ``N:cursor``: where the safety net goes on (``N`` 1 for
                          ``holders``, 5 for ``holders:streams``, the script's KEYS index)
``P:{0}:failing``         hash  webhook id -> failing since (ms): the start of its run of failures
                          with no success since; outlives its breaker, so a webhook failing
                          now and then is still disabled after ``delivery.disable_after_s``
``P:{0}:tasks``           hash  task name -> ``{"q": queue, "every_s": s or null, "seen": ms}``:
                          the tasks the daemons registered (tasks.py), which ``enqueue_task``
                          checks; each daemon registers its own again every minute
``P:{0}:tasks:due``       zset  periodic task name -> its next run (ms, Redis clock)
``P:{0}:tasks:runs``      hash  task name -> ``{"at": ms, "status": ...}``: its last settled run
``P:{0}:tasks:last``      hash  periodic task name -> the job id of its last run (no overlap)
``P:{0}:op:O``            hash  a background DLQ operation's state (replay or purge; shard 0)
``P:{0}:ops``             zset  operation id -> last sign of life (ms) of the running operations

Regions (docs/regions.md; only with ``[regions]``: a deployment without them writes none of
these). ``R`` and ``S`` are region names (``ids.REGION_PATTERN``); every family below is per
shard, in the shard of the webhooks or jobs it concerns:

``P:{0}:versions``        hash  webhook id -> ``"<v> <origin>"``, or ``"<v> <origin> -"`` for a
                          deleted one (a tombstone): the version of each webhook record of this
                          shard, ``v`` = max(previous v + 1, Redis TIME ms) at each write, and
                          the region the write was made in. ``(v, origin)`` orders writes: the
                          larger wins everywhere (last writer wins)
``P:{0}:registry``        stream of this region's own webhook writes, read by every other
                          region's replicator: ``{w: webhook id, v: version, o: origin, rec:
                          record JSON}`` (and ``fresh: 1`` when the write enabled the
                          webhook: its own region closes its breaker), or ``{w, v, o, del:
                          1}`` for a delete. Written in the same MULTI or script as the write;
                          trimmed by age (MINID, 7 days), its last entry always kept
``P:{0}:registry:from:S`` string, the id of region S's last registry entry applied here (the
                          replicator's cursor); none: resync from S's whole ``webhooks`` hash
``P:{0}:registry:lock:S`` string, the token of the one process here replicating from S
                          (SET NX PX, renewed)
``P:{0}:outbox:R``        stream of jobs published here for region R's webhooks, written by
                          publish.lua in the same call as this region's own jobs (all or
                          none), read by the consumer group ``relay``; an entry is acked and
                          XDELed once R's Redis has the job. Entry ``{j: job id (~R), w:
                          webhook id, t: tenant, e: event type, q: the stream of its queue and
                          priority (``Q``, ``Q:high``), c: created ms, n: due ms (0: now),
                          p: payload}``, and ``o: '-'`` or ``o: '=' .. ordering key`` when the
                          route is FIFO (no ``o``: not FIFO)
``P:{0}:outboxes``        set   the regions this shard's publishes wrote an outbox entry for:
                          status and the backlog alerts measure each one's outbox, so one
                          for a region no longer in ``[regions]`` (which nothing relays) shows
``P:{0}:outbox:R:relay``  string, the token of the one process relaying this outbox (SET NX
                          PX, renewed): ``<incarnation>:<epoch>``
``P:{0}:outbox:R:epoch``  string, a counter INCRed by each new relay holder (the fence's epoch)
``P:{0}:relay:S``         string (in region R's Redis), the highest relay token of region S
                          applied here: an apply carrying a lower epoch of the same
                          incarnation is refused (a paused old holder can never apply after
                          its successor)
``P:{0}:relay:S:line``    string (in region R's Redis), the generation of region S's relay
                          batches pipelined on one connection: set by a generation's first
                          batch, deleted by an apply that stops short (a webhook missing, an
                          error) or sent alone; a later batch of a generation not set here is
                          refused (so batches after one that stopped never apply out of order)
``P:{0}:layout``          (the hash above) also holds, with regions, ``region``: the region
                          this Redis is (a daemon of another region refuses to start on it),
                          ``regions``: the deployment's region names, space-separated, and
                          ``incarnation``: a random token written once (a wiped Redis gets a
                          new one)

``breaker_tick.lua`` builds the ``parked`` and ``delayed`` names itself from ``Keys.base``, since
which it needs depends on the data, and so do ``settle.lua`` and ``waiting_tick.lua`` for the
``ready``, ``waiting`` and ``lease`` names (and settle.lua for ``releasing``, as a draining
webhook's job is held); they share the hash tag, so this stays cluster-safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from dispatcher.ids import (
    MAX_SHARDS,
    PRIORITIES,
    priority_of,
    queue_of,
    shard_for,
    shard_of,
    stream_of,
    streams_of,
)

# The naming helpers live in ids.py (the model uses them too); they stay importable from here.
__all__ = [
    "GROUP",
    "MAX_SHARDS",
    "PRIORITIES",
    "RELAY_GROUP",
    "Keys",
    "priority_of",
    "queue_of",
    "shard_for",
    "shard_of",
    "shard_tag",
    "stream_of",
    "streams_of",
]

GROUP = "dispatch"
#: The consumer group of every outbox stream (``outbox``): the region's relays.
RELAY_GROUP = "relay"
_GOLDEN = 0.6180339887498949


@cache
def shard_tag(shard: int) -> str:
    """The hash tag of a shard's keys (without braces); see the module's docstring."""
    if shard == 0:
        return "0"
    slots = REDIS_CLUSTER_HASH_SLOTS
    target = (key_slot(b"{0}") + round(shard * _GOLDEN * slots)) % slots

    def distance(tag: str) -> int:
        gap = abs(key_slot(f"{{{tag}}}".encode()) - target)
        return min(gap, slots - gap)

    return min((f"{shard}-{i}" for i in range(256)), key=distance)


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "dispatcher"
    shard: int = 0

    @property
    def _base(self) -> str:
        return f"{self.prefix}:{{{shard_tag(self.shard)}}}"

    @property
    def base(self) -> str:
        """The start every key of this shard shares, for scripts that build key names."""
        return f"{self._base}:"

    @property
    def webhooks(self) -> str:
        return f"{self._base}:webhooks"

    def tenant(self, tenant_id: str) -> str:
        return f"{self._base}:tenant:{tenant_id}"

    @property
    def jobs(self) -> str:
        return f"{self._base}:jobs"

    def ready(self, queue: str) -> str:
        return f"{self._base}:q:{queue}:ready"

    def delayed(self, queue: str) -> str:
        return f"{self._base}:q:{queue}:delayed"

    @property
    def done(self) -> str:
        return f"{self._base}:done"

    def payload(self, job_id: str) -> str:
        """Where a delivered job's payload waits for a retry (settle.lua writes the same name)."""
        return f"{self._base}:payload:{job_id}"

    @property
    def dlq(self) -> str:
        return f"{self._base}:dlq"

    def idempotency(self, tenant_id: str, key: str, webhook_id: str | None = None) -> str:
        """Tenant and key both may hold ``:``: the tenant's length says where it ends. A
        delivery to one webhook is scoped to it: its id comes first."""
        scope = f"{webhook_id}:" if webhook_id else ""
        return f"{self._base}:idempotency:{scope}{len(tenant_id)}:{tenant_id}:{key}"

    def fingerprint(self, tenant_id: str, key: str, webhook_id: str | None = None) -> str:
        """The fingerprint beside ``idempotency(tenant_id, key, webhook_id)``, named alike."""
        scope = f"{webhook_id}:" if webhook_id else ""
        return f"{self._base}:fingerprint:{scope}{len(tenant_id)}:{tenant_id}:{key}"

    def dedup(self, tenant_id: str, event_hash: str) -> str:
        """The tenant's length says where it ends, as in ``idempotency``; the hash is hex."""
        return f"{self._base}:dedup:{len(tenant_id)}:{tenant_id}:{event_hash}"

    def stats(self, minute: int) -> str:
        return f"{self._base}:stats:{minute}"

    def hook_minute(self, webhook_id: str, minute: int) -> str:
        return f"{self._base}:wstats:m:{webhook_id}:{minute}"

    def hook_hour(self, webhook_id: str, hour: int) -> str:
        return f"{self._base}:wstats:h:{webhook_id}:{hour}"

    def lane(self, webhook_id: str, ordering_key: str | None = None) -> str:
        """A FIFO webhook's lane for ``ordering_key`` (None: the webhook's one keyless lane);
        the key's length in bytes says it is a key (publish.lua builds the same name)."""
        if ordering_key is None:
            return f"{self._base}:lane:{webhook_id}"
        return f"{self._base}:lane:{webhook_id}:{len(ordering_key.encode())}:{ordering_key}"

    @property
    def hook_pending(self) -> str:
        return f"{self._base}:wstats:pending"

    @property
    def layout(self) -> str:
        return f"{self._base}:layout"

    @property
    def encryption(self) -> str:
        return f"{self._base}:encryption"

    @property
    def paused(self) -> str:
        return f"{self._base}:paused"

    @property
    def queues(self) -> str:
        return f"{self._base}:queues"

    @property
    def queues_indexed(self) -> str:
        return f"{self._base}:queues:indexed"

    @property
    def queues_scan(self) -> str:
        return f"{self._base}:queues:scan"

    @property
    def queues_lock(self) -> str:
        return f"{self._base}:queues:lock"

    @property
    def workers(self) -> str:
        return f"{self._base}:workers"

    @property
    def rates(self) -> str:
        return f"{self._base}:rates"

    def lease(self, webhook_id: str) -> str:
        return f"{self._base}:lease:{webhook_id}"

    @property
    def breakers(self) -> str:
        return f"{self._base}:breakers"

    @property
    def failing(self) -> str:
        return f"{self._base}:failing"

    def parked(self, webhook_id: str) -> str:
        return f"{self._base}:parked:{webhook_id}"

    def waiting(self, webhook_id: str) -> str:
        return f"{self._base}:waiting:{webhook_id}"

    @property
    def waiters(self) -> str:
        return f"{self._base}:waiters"

    def test_send(self, webhook_id: str) -> str:
        return f"{self._base}:testsend:{webhook_id}"

    @property
    def lane_heads(self) -> str:
        return f"{self._base}:lanes:heads"

    @property
    def lane_since(self) -> str:
        return f"{self._base}:lanes:since"

    @property
    def lanes_waiting(self) -> str:
        return f"{self._base}:lanes:waiting"

    def held(self, webhook_id: str) -> str:
        return f"{self._base}:held:{webhook_id}"

    @property
    def holders(self) -> str:
        return f"{self._base}:holders"

    @property
    def held_streams(self) -> str:
        return f"{self._base}:holders:streams"

    @property
    def releasing(self) -> str:
        return f"{self._base}:releasing"

    @property
    def holders_scan(self) -> str:
        return f"{self._base}:holders:scan"

    @property
    def tasks(self) -> str:
        return f"{self._base}:tasks"

    @property
    def tasks_due(self) -> str:
        return f"{self._base}:tasks:due"

    @property
    def tasks_runs(self) -> str:
        return f"{self._base}:tasks:runs"

    @property
    def tasks_last(self) -> str:
        return f"{self._base}:tasks:last"

    def operation(self, op_id: str) -> str:
        return f"{self._base}:op:{op_id}"

    @property
    def operations(self) -> str:
        return f"{self._base}:ops"

    # --- regions (docs/regions.md) ----------------------------------------------------------

    @property
    def versions(self) -> str:
        return f"{self._base}:versions"

    @property
    def registry(self) -> str:
        return f"{self._base}:registry"

    def registry_from(self, source: str) -> str:
        return f"{self._base}:registry:from:{source}"

    def registry_lock(self, source: str) -> str:
        return f"{self._base}:registry:lock:{source}"

    def outbox(self, region: str) -> str:
        return f"{self._base}:outbox:{region}"

    @property
    def outboxes(self) -> str:
        return f"{self._base}:outboxes"

    def outbox_lease(self, region: str) -> str:
        return f"{self._base}:outbox:{region}:relay"

    def outbox_epoch(self, region: str) -> str:
        return f"{self._base}:outbox:{region}:epoch"

    def relay_fence(self, source: str) -> str:
        return f"{self._base}:relay:{source}"

    def relay_line(self, source: str) -> str:
        return f"{self._base}:relay:{source}:line"

    @property
    def pattern(self) -> str:
        """A SCAN pattern that matches every key of this deployment."""
        return f"{self.prefix}:*"

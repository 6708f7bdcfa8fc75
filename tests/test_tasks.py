"""Task jobs on the maintenance and analytics queues, run by real ``dispatcher run`` processes
with ``tasks.modules = ["tests.task_examples"]``: user tasks with JSON arguments, retries and
the DLQ, periodic runs across daemons, the tasks API, and ``dlq.auto_purge``."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any, cast

import orjson
import pytest

from dispatcher import Client, NotFound, maintenance
from dispatcher.errors import ConfigError, InvalidField
from dispatcher.ids import TASK_WEBHOOK, new_event_ids, shard_of
from dispatcher.model import Job, JobState, time_ms
from dispatcher.queue import codec, stats
from dispatcher.queue import tasks as queue_tasks
from dispatcher.tally import Tally
from dispatcher.tasks import load_modules
from tests.admin_api import start_api
from tests.helpers import Daemon, daemon_env, eventually, hooks_in_every_shard, seed_dead_jobs
from tests.target import Reply

if TYPE_CHECKING:
    from pathlib import Path

    import redis.asyncio as aioredis

    from dispatcher.queue.store import Store
    from tests.target import Target

FAST = {
    "delivery_timeout_s": "1",
    "delivery_stall_timeout_s": "2",
    "delivery_backoff_base_s": "0.05",
    "delivery_backoff_cap_s": "0.5",
    "tasks_modules": "tests.task_examples",
}


def _daemon(redis_url: str, prefix: str, log: Path, **settings: str) -> Daemon:
    env = daemon_env(redis_url, prefix, **{**FAST, **settings})
    env["TASK_TEST_DIR"] = str(log.parent)
    return Daemon(env, log).start()


async def _registered(client: Client, name: str) -> bool:
    return any(t["name"] == name for t in (await client.list_tasks())["items"])


async def _state(client: Client, job_id: str, state: str) -> dict[str, Any] | None:
    job = await client.get_job(job_id)
    return dict(job) if job and job["state"] == state else None


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_user_task_runs_with_its_json_args(
    client: Client, redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """A task of a tasks.modules module runs once with its JSON args; its job shows kind task."""
    daemon = _daemon(redis_url, prefix, logs_dir / "d.log")
    try:
        await eventually(lambda: _registered(client, "tests.record"), timeout_s=10)
        value = {"n": 1, "nested": [1.5, None, "é"]}
        answer = await client.enqueue_task(
            "tests.record", {"path": str(logs_dir / "out"), "value": value}
        )
        assert answer["name"] == "tests.record"
        assert answer["queue"] == "analytics"  # the task's own queue
        job = await eventually(lambda: _state(client, answer["id"], "delivered"), timeout_s=10)
    finally:
        daemon.stop()
    assert _lines(logs_dir / "out") == [{"job_id": answer["id"], "attempt": 1, "value": value}]
    assert job["kind"] == "task"
    assert (job["webhook_id"], job["tenant_id"], job["event_type"]) == (None, None, "tests.record")
    listed = {t["name"]: t for t in (await client.list_tasks())["items"]}
    assert listed["tests.record"]["last_status"] == "succeeded"
    assert listed["tests.record"]["last_run_at"] is not None


async def test_webhook_jobs_show_kind_webhook(client: Client) -> None:
    """A delivery's job answer says kind webhook, with its webhook and tenant."""
    hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    answer = await client.publish("acme", "order.created", {"n": 1})
    job = await client.get_job(answer["jobs"][0]["id"])
    assert job is not None
    assert (job["kind"], job["webhook_id"], job["tenant_id"]) == ("webhook", hook["id"], "acme")


async def test_failing_task_retries_dead_letters_and_replays(
    client: Client, redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """A task that raises is retried with backoff, dead-letters with its last error after its
    max attempts, and once replayed from the DLQ runs again and succeeds."""
    daemon = _daemon(redis_url, prefix, logs_dir / "d.log")
    marker = logs_dir / "ready"
    try:
        await eventually(lambda: _registered(client, "tests.flaky"), timeout_s=10)
        answer = await client.enqueue_task("tests.flaky", {"path": str(marker)})
        dead = await eventually(lambda: _state(client, answer["id"], "dead"), timeout_s=15)
        assert dead["attempt"] == 3  # the task's max_attempts
        assert dead["last_error"] == "RuntimeError: no ready yet (attempt 3)"
        assert [a["error"] for a in dead["attempts"]] == [
            f"RuntimeError: no ready yet (attempt {n})" for n in (1, 2, 3)
        ]
        assert dead["dead_reason"] == "max_attempts"
        page = await client.list_dlq()
        assert [
            (i["id"], i.get("kind"), i["webhook_id"], i["event_type"]) for i in page["items"]
        ] == [(answer["id"], "task", None, "tests.flaky")]
        inspected = await client.inspect_dlq(answer["id"])
        assert orjson.loads(orjson.dumps(inspected["payload"])) == {"path": str(marker)}
        marker.touch()
        assert (await client.replay([answer["id"]]))["replayed"] == 1
        done = await eventually(lambda: _state(client, answer["id"], "delivered"), timeout_s=10)
    finally:
        daemon.stop()
    assert done["attempts"][-1]["error"] is None
    assert (await client.list_dlq())["items"] == []


async def test_a_task_past_its_timeout_fails_the_attempt(
    client: Client, redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """A run longer than delivery.timeout_s (the task sets none) is cut and retried, its
    error saying so."""
    daemon = _daemon(redis_url, prefix, logs_dir / "d.log")
    try:
        await eventually(lambda: _registered(client, "tests.slow"), timeout_s=10)
        answer = await client.enqueue_task(
            "tests.slow", {"path": str(logs_dir / "out"), "seconds": 30}
        )

        async def first_failed() -> str | None:
            job = await client.get_job(answer["id"])
            return job["attempts"][0]["error"] if job and job["attempts"] else None

        error = await eventually(first_failed, timeout_s=10)
    finally:
        daemon.stop()
    assert error == "timed out after 1 s"


async def test_sigterm_lets_a_running_task_finish(
    client: Client, redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """A daemon stopped by SIGTERM while a task runs lets it finish and settles it."""
    daemon = _daemon(
        redis_url, prefix, logs_dir / "d.log", delivery_timeout_s="3", delivery_stall_timeout_s="4"
    )
    out = logs_dir / "out"
    try:
        await eventually(lambda: _registered(client, "tests.slow"), timeout_s=10)
        answer = await client.enqueue_task("tests.slow", {"path": str(out), "seconds": 1.5})
        await eventually(lambda: bool(_lines(out)) or None, timeout_s=10)
        daemon.stop()  # SIGTERM, then waits for the exit
    finally:
        daemon.stop()
    assert daemon.wait() == 0
    assert [line["event"] for line in _lines(out)] == ["start", "done"]
    job = await client.get_job(answer["id"])
    assert job is not None
    assert job["state"] == "delivered"


@pytest.mark.parametrize(
    ("kind", "error"), [("exit", "SystemExit: 3"), ("cancel", "CancelledError")]
)
async def test_a_task_raising_system_exit_or_cancelled_fails_its_attempt(
    client: Client, redis_url: str, prefix: str, logs_dir: Path, kind: str, error: str
) -> None:
    """A task that calls sys.exit, or raises a CancelledError of its own, fails its attempt
    (dead-lettered with that error); the daemon goes on running tasks."""
    daemon = _daemon(redis_url, prefix, logs_dir / "d.log")
    try:
        await eventually(lambda: _registered(client, "tests.escapes"), timeout_s=10)
        answer = await client.enqueue_task("tests.escapes", {"kind": kind})
        dead = await eventually(lambda: _state(client, answer["id"], "dead"), timeout_s=10)
        assert dead["last_error"].startswith(error)
        out = logs_dir / "out"
        after = await client.enqueue_task("tests.record", {"path": str(out), "value": 1})
        await eventually(lambda: _state(client, after["id"], "delivered"), timeout_s=10)
        assert daemon.process is not None
        assert daemon.process.poll() is None
    finally:
        daemon.stop()


async def test_unknown_task_names_are_refused(client: Client) -> None:
    """Enqueueing a name no daemon registered raises NotFound, and POST run answers 404."""
    with pytest.raises(NotFound, match="no task named 'nope'"):
        await client.enqueue_task("nope", {})
    with pytest.raises(InvalidField):
        await client.enqueue_task("bad name", {})
    _app, api = await start_api(client)
    try:
        answer = await api.call("POST", "/v1/tasks/nope/run")
        listed = await api.call("GET", "/v1/tasks")
    finally:
        await api.close()
    assert answer.status == 404
    assert answer.body["error"]["code"] == "not_found"
    assert listed.status == 200
    assert listed.body == {"items": []}


async def test_a_task_no_daemon_registered_for_long_is_refused(
    client: Client, store: Store, redis: aioredis.Redis
) -> None:
    """A task whose module every daemon dropped (they registered their other tasks since, not
    it, for 10 minutes) is refused at enqueue as an unknown name, rather than enqueued to
    fail on every daemon; while no daemon registers anything (all down), runs are accepted."""
    await queue_tasks.register(store, [("review.dropped", "maintenance", None)])
    stale_ms = store.clock.now_ms() - queue_tasks.REGISTRATION_TTL_MS - 1000
    spec = orjson.dumps({"q": "maintenance", "every_s": None, "seen": stale_ms})
    await redis.hset(store.keys.tasks, "review.dropped", spec)
    await client.enqueue_task("review.dropped")  # every daemon down: it waits for them
    await queue_tasks.register(store, [("review.kept", "maintenance", None)])
    with pytest.raises(NotFound, match=r"no task named 'review\.dropped'"):
        await client.enqueue_task("review.dropped")
    await client.enqueue_task("review.kept")


async def test_a_task_module_that_fails_to_import_is_a_config_error(
    redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """tasks.modules naming a module that cannot be imported stops the daemon with exit 2."""
    with pytest.raises(ConfigError, match=r"tests\.no_such_module"):
        load_modules(["tests.no_such_module"])
    daemon = _daemon(redis_url, prefix, logs_dir / "d.log", tasks_modules="tests.no_such_module")
    assert daemon.wait() == 2
    assert "cannot import 'tests.no_such_module'" in daemon.log


def test_check_config_imports_the_task_modules(redis_url: str, prefix: str) -> None:
    """dispatcher check-config reports a task module that cannot be imported, exit 2."""
    env = daemon_env(redis_url, prefix, tasks_modules="tests.no_such_module")
    checked = subprocess.run(
        [sys.executable, "-m", "dispatcher", "check-config"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 2
    assert "config error: tasks.modules: cannot import 'tests.no_such_module'" in checked.stderr


async def test_webhooks_cannot_name_a_task_queue(client: Client) -> None:
    """A webhook on the maintenance or analytics queue is refused: those run tasks."""
    with pytest.raises(InvalidField, match="task queue"):
        await client.create_webhook("acme", "https://hooks.example.com/x", queue="maintenance")


def test_run_refuses_a_task_queue_in_its_queues_flag(
    redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """dispatcher run --queues naming a task queue exits 2, as delivery.queues does: its
    delivery worker would otherwise claim task jobs as deliveries."""
    env = daemon_env(redis_url, prefix)
    daemon = Daemon(env, logs_dir / "d.log", args=("--queues", "default,maintenance")).start()
    try:
        code = daemon.wait(timeout_s=10)
    finally:
        daemon.stop()
    assert code == 2
    assert "--queues: maintenance: the task queues are served by" in daemon.log


async def test_status_shows_the_task_queues(client: Client, store: Store) -> None:
    """GET /v1/status counts the task jobs waiting on maintenance and analytics."""
    await queue_tasks.register(store, [("review.noop", "maintenance", None)])
    await client.enqueue_task("review.noop", {})
    queues = {q["name"]: q for q in (await client.status())["queues"]}
    assert set(queues) >= {"default", "maintenance", "analytics"}
    assert (queues["maintenance"]["queued"], queues["analytics"]["queued"]) == (1, 0)


async def test_a_run_enqueued_by_hand_holds_the_periodic_runs_until_it_finishes(
    client: Client, store: Store
) -> None:
    """Runs never overlap: while a run of a periodic task enqueued by hand (POST run) is
    unfinished, the tick enqueues no other run; once it finished, the next period runs."""
    await queue_tasks.register(store, [("review.periodic", "maintenance", 60.0)])
    manual = await client.enqueue_task("review.periodic")
    runs, skipped = await queue_tasks.tick(store)  # the first period is due now
    assert (runs, skipped) == ([], ["review.periodic"])
    await store.redis.hdel(store.keys.jobs, manual["id"])  # finished and swept
    await store.redis.zadd(store.keys.tasks_due, {"review.periodic": 0})  # the next period
    runs, skipped = await queue_tasks.tick(store)
    assert ([name for name, _ in runs], skipped) == (["review.periodic"], [])


def _dead_task(
    job_id: str, name: str, now_ms: int, *, attempt: int = 1, dlq_id: str | None = None
) -> Job:
    """The record of a task run dead after its attempts, as the runner settles one."""
    return Job(
        id=job_id,
        webhook_id=TASK_WEBHOOK,
        tenant_id="",
        event_type=name,
        stream="maintenance",
        event_id="",
        state=JobState.DEAD,
        attempt=attempt,
        stalls=0,
        created_at_ms=now_ms,
        payload=b"{}",
        finished_at_ms=now_ms,
        last_error="RuntimeError: boom",
        dlq_id=dlq_id,
        reason="max_attempts",
    )


async def test_a_periodic_run_that_dead_letters_does_not_stop_the_schedule(
    client: Client, store: Store, redis: aioredis.Redis
) -> None:
    """The next period runs after the last run dead-lettered, and after its record was
    purged: neither holds the schedule forever."""
    await queue_tasks.register(store, [("review.periodic", "maintenance", 60.0)])
    [(_, first)] = (await queue_tasks.tick(store))[0]
    dead = _dead_task(first, "review.periodic", store.clock.now_ms(), attempt=8)
    await redis.hset(store.keys.jobs, first, codec.encode(dead))
    await redis.zadd(store.keys.tasks_due, {"review.periodic": 0})
    [(_, second)] = (await queue_tasks.tick(store))[0]
    await redis.hdel(store.keys.jobs, second)  # purged
    await redis.zadd(store.keys.tasks_due, {"review.periodic": 0})
    assert [name for name, _ in (await queue_tasks.tick(store))[0]] == ["review.periodic"]


async def test_dlq_filters_by_webhook_or_tenant_never_match_task_entries(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A dead task shows webhook_id and tenant_id null, so no webhook or tenant filter of the
    DLQ lists or replays it (not even the internal 'task' and '')."""
    [hooked] = await seed_dead_jobs(client, redis, prefix, 1)
    _event_id, job_prefix = new_event_ids()
    job_id = f"{job_prefix}1"
    entry = cast("bytes", await redis.xadd(store.keys.dlq, {"j": job_id, "r": "max_attempts"}))
    dead = _dead_task(job_id, "review.failing", store.clock.now_ms(), dlq_id=entry.decode())
    await redis.hset(store.keys.jobs, job_id, codec.encode(dead))
    listed = [(i["id"], i["kind"]) for i in (await client.list_dlq())["items"]]
    assert listed == [(hooked, "webhook"), (job_id, "task")]
    assert (await client.list_dlq(webhook_id=TASK_WEBHOOK))["items"] == []
    assert (await client.list_dlq(tenant_id=""))["items"] == []
    assert (await client.replay_matching(webhook_id=TASK_WEBHOOK))["replayed"] == 0
    job = await client.get_job(job_id)
    assert job is not None
    assert job["state"] == "dead"


async def test_periodic_task_runs_once_per_period_across_daemons_and_survives_sigkill(
    client: Client, redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """Three daemons run a 1 s periodic task once per period between them; when the daemon
    running it is SIGKILLed mid-run, that run is taken over by another and the next run
    still comes."""
    runs = logs_dir / "runs"
    daemons = [_daemon(redis_url, prefix, logs_dir / f"d{i}.log") for i in range(3)]
    try:
        await eventually(
            lambda: len({r["job_id"] for r in _lines(runs)}) >= 4 or None, timeout_s=20
        )
        (logs_dir / "hang").touch()  # the next run to start hangs in its daemon
        hung = await eventually(
            lambda: next((r for r in _lines(runs) if r["event"] == "hang"), None), timeout_s=10
        )
        victim = next(d for d in daemons if d.process and d.process.pid == hung["pid"])
        victim.kill()  # SIGKILL

        def taken_over() -> bool | None:
            done = [r for r in _lines(runs) if r["event"] == "done"]
            again = [r for r in done if r["job_id"] == hung["job_id"]]
            later = [r for r in done if r["job_id"] > hung["job_id"]]
            return bool(again and later) or None

        await eventually(taken_over, timeout_s=20)
    finally:
        for daemon in daemons:
            daemon.stop()
    lines = _lines(runs)
    done = [r["job_id"] for r in lines if r["event"] == "done"]
    assert len(done) == len(set(done)), "each run completed once"
    assert hung["job_id"] in done
    assert all(
        r["pid"] != hung["pid"]
        for r in lines
        if r["job_id"] == hung["job_id"] and r["event"] == "done"
    )
    # One enqueue per period: the runs' creation times are at least a period apart, less the
    # tick's lag on the first one (three daemons racing would enqueue up to three per period).
    times = sorted(
        time_ms("created_at", job["created_at"] if job else None) or 0
        for job in [await client.get_job(job_id) for job_id in {r["job_id"] for r in lines}]
    )
    assert all(times)
    span_s = (times[-1] - times[0]) / 1000
    assert len(times) <= span_s / 1 + 2, f"{len(times)} runs in {span_s:.1f} s"


async def test_periodic_runs_come_back_after_redis_loses_its_keys(
    client: Client, redis: aioredis.Redis, redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """When Redis loses the deployment's keys (restarted without persistence, or flushed),
    the running daemon registers its tasks again at once and its periodic runs go on."""
    runs = logs_dir / "runs"
    daemon = _daemon(redis_url, prefix, logs_dir / "d.log")
    try:
        await eventually(lambda: len(_lines(runs)) >= 2 or None, timeout_s=20)
        await redis.delete(*[k async for k in redis.scan_iter(f"{prefix}*")])
        before = {r["job_id"] for r in _lines(runs)}

        def resumed() -> bool | None:
            later = {r["job_id"] for r in _lines(runs) if r["event"] == "done"} - before
            return len(later) >= 2 or None

        await eventually(resumed, timeout_s=20)
        assert await _registered(client, "tests.record")
    finally:
        daemon.stop()


@pytest.mark.parametrize("auto_purge", [True, False])
async def test_dlq_auto_purge(
    client: Client,
    redis: aioredis.Redis,
    redis_url: str,
    prefix: str,
    logs_dir: Path,
    auto_purge: bool,
) -> None:
    """The built-in dispatcher.purge_dlq deletes DLQ entries past dlq.retention_s only with
    dlq.auto_purge = true; entries within the retention stay either way."""
    old = await seed_dead_jobs(client, redis, prefix, 3, entry_ids=["1000-1", "1000-2", "1000-3"])
    young = await seed_dead_jobs(client, redis, prefix, 2)
    daemon = _daemon(
        redis_url,
        prefix,
        logs_dir / "d.log",
        dlq_retention_s="3600",
        dlq_auto_purge="true" if auto_purge else "false",
    )
    try:
        await eventually(lambda: _registered(client, "dispatcher.purge_dlq"), timeout_s=10)
        answer = await client.enqueue_task("dispatcher.purge_dlq")
        await eventually(lambda: _state(client, answer["id"], "delivered"), timeout_s=10)
    finally:
        daemon.stop()
    left = {item["id"] for item in (await client.list_dlq(limit=100))["items"]}
    assert left == (set(young) if auto_purge else set(old) | set(young))


async def test_pausing_a_task_queue_holds_its_runs(
    client: Client, redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """A paused task queue keeps accepting runs and runs none until it is resumed."""
    assert await client.pause("analytics") == {"queue": "analytics", "paused": True}
    daemon = _daemon(redis_url, prefix, logs_dir / "d.log")
    out = logs_dir / "out"
    try:
        await eventually(lambda: _registered(client, "tests.record"), timeout_s=10)
        held = await client.enqueue_task("tests.record", {"path": str(out), "value": 1})
        first = await client.enqueue_task(
            "tests.record", {"path": str(out), "value": 2}, queue="maintenance"
        )
        await eventually(lambda: _state(client, first["id"], "delivered"), timeout_s=10)
        job = await client.get_job(held["id"])
        assert job is not None
        assert job["state"] == "queued"
        await client.resume("analytics")
        await eventually(lambda: _state(client, held["id"], "delivered"), timeout_s=10)
    finally:
        daemon.stop()
    assert [line["value"] for line in _lines(out)] == [2, 1]


async def test_sweep_finished_forgets_records_past_the_retention(
    client: Client, redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """The built-in dispatcher.sweep_finished forgets finished job records past
    jobs.retention_s (it used to be a loop of every worker)."""
    daemon = _daemon(redis_url, prefix, logs_dir / "d.log", jobs_retention_s="1")
    try:
        await eventually(lambda: _registered(client, "tests.record"), timeout_s=10)
        answer = await client.enqueue_task(
            "tests.record", {"path": str(logs_dir / "o"), "value": 1}
        )
        await eventually(lambda: _state(client, answer["id"], "delivered"), timeout_s=10)

        async def swept() -> bool | None:
            run = await client.enqueue_task("dispatcher.sweep_finished")
            await eventually(lambda: _state(client, run["id"], "delivered"), timeout_s=10)
            return await client.get_job(answer["id"]) is None or None

        await eventually(swept, timeout_s=15)
    finally:
        daemon.stop()


async def test_built_in_sweep_and_purge_reach_every_shard(
    client: Client,
    redis: aioredis.Redis,
    redis_url: str,
    prefix: str,
    logs_dir: Path,
    target: Target,
) -> None:
    """With redis.shards = 3, dispatcher.sweep_finished forgets the delivered records past
    jobs.retention_s in every shard, and dispatcher.purge_dlq (dlq.auto_purge) the DLQ entries
    past dlq.retention_s in every shard."""
    await client.store.adopt_layout(3)
    hooks = await hooks_in_every_shard(client, target, 3, per_shard=1)
    published = await client.publish("acme", "a.b", {"n": 1})
    delivered = [job["id"] for job in published["jobs"]]
    assert {shard_of(j) for j in delivered} == {0, 1, 2}
    daemon = _daemon(
        redis_url,
        prefix,
        logs_dir / "d.log",
        redis_shards="3",
        jobs_retention_s="1",
        dlq_retention_s="1",
        dlq_auto_purge="true",
        delivery_max_attempts="1",
    )
    try:
        for job_id in delivered:
            await eventually(lambda j=job_id: _state(client, j, "delivered"), timeout_s=10)
        target.script("/gone", Reply(500))
        for hook in hooks:
            await client.update_webhook(hook["id"], url=target.url("/gone"))
        dead = [j["id"] for j in (await client.publish("acme", "a.b", {"n": 2}))["jobs"]]
        for job_id in dead:
            await eventually(lambda j=job_id: _state(client, j, "dead"), timeout_s=10)

        async def cleaned() -> bool | None:
            for name in ("dispatcher.sweep_finished", "dispatcher.purge_dlq"):
                run = await client.enqueue_task(name)
                await eventually(lambda r=run["id"]: _state(client, r, "delivered"), timeout_s=10)
            jobs = [await client.get_job(j) for j in delivered + dead]
            size = (await client.status())["dlq_size"]
            return (jobs == [None] * len(jobs) and size == 0) or None

        await eventually(cleaned, timeout_s=20)
    finally:
        daemon.stop()


async def test_the_stats_rollup_task_rolls_minutes_into_hours(
    client: Client, store: Store, redis: aioredis.Redis, redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """The built-in dispatcher.stats_rollup runs on the analytics queue and rolls a webhook's
    closed minutes into their hours, so the 7d window keeps them after the minutes expire."""
    hook = (await client.create_webhook("acme", "https://hooks.example.com/x"))["id"]
    now_ms = store.clock.now_ms()
    counts = Tally()
    for minute in range(now_ms // 60_000 - 30, now_ms // 60_000 - 10):
        counts.attempt(hook, minute, 40.0, 90.0)
    await stats.add(store, counts.take(), now_ms)
    assert await redis.zcard(store.keys.hook_pending) == 20
    daemon = _daemon(redis_url, prefix, logs_dir / "d.log")
    try:
        await eventually(lambda: _registered(client, "dispatcher.stats_rollup"), timeout_s=10)
        listed = {t["name"]: t for t in (await client.list_tasks())["items"]}
        assert (
            listed["dispatcher.stats_rollup"]["queue"],
            listed["dispatcher.stats_rollup"]["every_s"],
        ) == ("analytics", 60.0)
        run = await client.enqueue_task("dispatcher.stats_rollup")
        assert run["queue"] == "analytics"
        await eventually(lambda: _state(client, run["id"], "delivered"), timeout_s=10)
    finally:
        daemon.stop()
    assert await redis.zcard(store.keys.hook_pending) == 0
    await redis.delete(*[k async for k in redis.scan_iter(f"{prefix}:*wstats:m:*")])
    week = await client.webhook_stats(hook, "7d")
    assert (week["attempts"], week["delivered"], week["failed"]) == (20, 20, 0)


def test_the_stats_rollup_run_ends_before_its_timeout() -> None:
    """A rollup catching up a backlog stops after maintenance.ROLLUP_RUN_S, before its task's
    timeout whatever delivery.timeout_s (default 15 s), so it succeeds rather than timing out,
    retrying and dead-lettering."""
    rollup = load_modules([])["dispatcher.stats_rollup"]
    assert rollup.timeout_s is not None
    assert rollup.timeout_s > maintenance.ROLLUP_RUN_S

"""The egress proxy (``delivery.proxy_url``) with both HTTP clients: every delivery goes
through it, the address policy still refuses private literals first, and a failure of the
proxy itself is the proxy's (its text, ``blame``), leaving the endpoint's breaker closed."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest

from dispatcher import Client, InvalidField, config
from dispatcher.errors import ConfigError
from dispatcher.proxy import BLAME, FAILURES_METRIC
from dispatcher.ssrf import AddressPolicy
from tests.helpers import Daemon, daemon_env, eventually, free_port, log_events, stop_daemons
from tests.pki import Authority, server_context
from tests.proxy import ConnectProxy, unaccepting_port
from tests.target import Target

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import redis.asyncio as aioredis

    from dispatcher.sender import Outcome
    from tests.conftest import WorkerHarness
    from tests.helpers import AnySender, MakeSender

BODY = b'{"n": 1}'
HEADERS = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000", "webhook-signature": "v1,x"}
USER, PASSWORD = "dispatcher", "s3cr:et@pw"  # a colon and an at sign: percent-encoded in the URL


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority.new("dispatcher test CA")


@pytest.fixture
async def https_target(ca: Authority) -> AsyncIterator[Target]:
    """An https target on 127.0.0.1 whose certificate (for localhost) the test CA signed."""
    async with Target(ssl_context=server_context(ca.issue("localhost"))) as t:
        yield t


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    async with ConnectProxy() as p:
        yield p


def _sender(
    make_sender: MakeSender,
    proxy_url: str | None,
    ca: Authority | None,
    *,
    timeout_s: float = 2.0,
) -> AnySender:
    """A sender with the default address policy (public addresses only) and the test CA."""
    return make_sender(
        timeout_s=timeout_s,
        concurrency=8,
        policy=AddressPolicy(),
        user_agent="dispatcher/test",
        proxy_url=proxy_url,
        ssl_context=ca.client_context() if ca is not None else None,
    )


def _by_name(target: Target, path: str = "/hook") -> str:
    """The target's URL with the name localhost: resolved by the proxy, never by the policy."""
    return target.url(path).replace("127.0.0.1", "localhost")


async def _post(sender: AnySender, url: str) -> Outcome:
    return await sender.attempt(url, BODY, HEADERS)


async def test_every_delivery_goes_through_the_proxy(
    make_sender: MakeSender,
    ca: Authority,
    proxy: ConnectProxy,
    https_target: Target,
    target: Target,
) -> None:
    """https targets through a CONNECT tunnel (TLS with the target), http targets in
    absolute form: all delivered, and every connection the targets accepted came from the
    proxy. The names resolve at the proxy: the policy would refuse localhost's address."""
    async with _sender(make_sender, proxy.url, ca) as sender:
        for _ in range(10):
            assert (await _post(sender, _by_name(https_target))).error is None
            assert (await _post(sender, _by_name(target))).error is None
    for t in (https_target, target):
        received = await t.wait_for(10)
        assert {r.body for r in received} == {BODY}
        assert received[0].headers["webhook-id"] == "msg_1"
    assert https_target.connections + target.connections == proxy.upstream
    assert proxy.connects >= 1
    assert proxy.forwards == 10
    assert f"CONNECT localhost:{https_target.port} HTTP/1.1" in proxy.request_lines
    assert f"POST http://localhost:{target.port}/hook HTTP/1.1" in proxy.request_lines


async def test_proxy_credentials_are_sent_and_a_407_is_the_proxys(
    make_sender: MakeSender, ca: Authority, https_target: Target, target: Target
) -> None:
    """With the proxy's credentials in proxy_url both kinds of target are reached; with
    wrong ones the attempt fails as the proxy's (407), not the endpoint's."""
    async with ConnectProxy(credentials=(USER, PASSWORD)) as proxy:
        async with _sender(make_sender, proxy.url_with(USER, PASSWORD), ca) as sender:
            assert (await _post(sender, _by_name(https_target))).error is None
            assert (await _post(sender, _by_name(target))).error is None
        assert proxy.connects == proxy.forwards == 1
        async with _sender(make_sender, proxy.url_with(USER, "wrong"), ca) as sender:
            for url in (_by_name(https_target), _by_name(target)):
                outcome = await _post(sender, url)
                assert outcome.blame == BLAME
                assert outcome.error is not None
                assert outcome.error.startswith(
                    f"egress proxy 127.0.0.1:{proxy.port}: refused the proxy credentials (HTTP 407"
                )
    assert https_target.count() == target.count() == 1


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (502, "could not reach the target"),
        (403, "refused the target (its policy)"),
        (407, "refused the target (its policy)"),  # smokescreen's refusal: no Proxy-Authenticate
    ],
)
async def test_a_connect_refused_for_the_target_is_the_endpoints(
    make_sender: MakeSender, ca: Authority, https_target: Target, status: int, text: str
) -> None:
    """A CONNECT answered 403 or 407 without a credentials challenge (the proxy's policy) or
    502 (it could not reach the target) is the endpoint's failure, as a refused address or a
    refused connection would be."""
    async with (
        ConnectProxy(connect_status=status) as proxy,
        _sender(make_sender, proxy.url, ca) as sender,
    ):
        outcome = await _post(sender, _by_name(https_target))
    assert outcome.blame is None
    assert outcome.status is None
    assert outcome.error == f"egress proxy 127.0.0.1:{proxy.port} {text}: HTTP {status}"
    assert https_target.connections == 0


@pytest.mark.parametrize(
    ("answer", "text"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed CONNECT answer"),
        (b"", "closed the connection before answering CONNECT"),
        (b"HTTP/1.1 200 OK\r\n", "closed the connection before answering CONNECT"),
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n", "CONNECT answer"),
    ],
)
async def test_a_broken_connect_answer_is_the_proxys(
    make_sender: MakeSender, ca: Authority, https_target: Target, answer: bytes, text: str
) -> None:
    """A CONNECT answer that is not HTTP, cut before its end or past the head's bound is the
    proxy's failure."""
    async with (
        ConnectProxy(connect_answer=answer) as proxy,
        _sender(make_sender, proxy.url, ca) as sender,
    ):
        outcome = await _post(sender, _by_name(https_target))
    assert outcome.blame == BLAME
    assert outcome.error is not None
    assert outcome.error.startswith(f"egress proxy 127.0.0.1:{proxy.port}: ")
    assert text in outcome.error


async def test_a_stopped_proxy_is_the_proxys_failure(
    make_sender: MakeSender, ca: Authority, https_target: Target, target: Target
) -> None:
    """Nothing listening at the proxy's address: every attempt fails as the proxy's."""
    proxy = ConnectProxy()
    async with proxy:
        pass  # its port now refuses connections
    async with _sender(make_sender, proxy.url, ca) as sender:
        for url in (_by_name(https_target), _by_name(target)):
            outcome = await _post(sender, url)
            assert outcome.blame == BLAME
            assert outcome.error == f"egress proxy 127.0.0.1:{proxy.port}: connection refused"
    assert https_target.connections == target.connections == 0


async def test_a_deadline_dialling_the_proxy_is_the_proxys(
    make_sender: MakeSender, ca: Authority, https_target: Target
) -> None:
    """The deadline running out while the TCP connection to the proxy is not yet made (its
    accept queue is full, so the handshake gets no answer) is the proxy's failure."""
    with unaccepting_port() as port:
        async with _sender(make_sender, f"http://127.0.0.1:{port}", ca, timeout_s=0.3) as sender:
            outcome = await _post(sender, _by_name(https_target))
    assert outcome.timed_out
    assert outcome.blame == BLAME
    assert outcome.error == f"egress proxy 127.0.0.1:{port}: timed out after 0.3 s"


async def test_a_deadline_after_the_proxy_accepted_is_the_endpoints(
    make_sender: MakeSender, ca: Authority, https_target: Target
) -> None:
    """A proxy that accepted the connection and is still dialling the target when the
    deadline runs out: the endpoint's timeout (proxies give up on a dead target later)."""
    async with (
        ConnectProxy(hang=True) as proxy,
        _sender(make_sender, proxy.url, ca, timeout_s=0.3) as sender,
    ):
        outcome = await _post(sender, _by_name(https_target))
    assert outcome.timed_out
    assert outcome.blame is None
    assert outcome.error == "timed out after 0.3 s"


async def test_tls_with_the_target_is_the_endpoints(
    make_sender: MakeSender, proxy: ConnectProxy, https_target: Target
) -> None:
    """Through an open tunnel, a certificate the sender does not trust fails the attempt as
    the endpoint's, naming TLS: the tunnel does not weaken the certificate check."""
    async with _sender(make_sender, proxy.url, None) as sender:  # the system's trust store
        outcome = await _post(sender, _by_name(https_target))
    assert outcome.blame is None
    assert outcome.error is not None
    assert outcome.error.startswith("TLS with localhost failed")
    assert "certificate verify failed" in outcome.error
    assert proxy.connects == 1
    assert https_target.received == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "https://169.254.169.254/latest",
        "http://[::1]:8080/",
        "http://0x7f000001:8080/",  # 127.0.0.1 to any inet_aton: a literal, not a name
        "https://0xa9.0xfe.0xa9.0xfe/latest",  # 169.254.169.254
        "TARGET",
    ],
)
async def test_private_literals_are_refused_before_the_proxy(
    make_sender: MakeSender, proxy: ConnectProxy, target: Target, url: str
) -> None:
    """IP-literal targets still pass the address policy before anything is sent: the proxy
    is never dialled for a private one."""
    url = target.url() if url == "TARGET" else url
    async with _sender(make_sender, proxy.url, None) as sender:
        outcome = await _post(sender, url)
    assert outcome.error is not None
    assert "refused" in outcome.error
    assert outcome.blame is None
    assert proxy.accepted == 0
    assert target.connections == 0


async def test_a_webhook_cannot_send_its_own_proxy_credentials(client: Client) -> None:
    """``Proxy-Authorization`` is not a webhook header: through the egress proxy an http
    target's request would carry it to the proxy beside (or instead of) dispatcher's own."""
    with pytest.raises(InvalidField, match="Proxy-Authorization"):
        await client.create_webhook(
            "acme", "http://example.com/h", headers={"Proxy-Authorization": "Basic eDp5"}
        )
    hook = await client.create_webhook("acme", "http://example.com/h")
    with pytest.raises(InvalidField, match="proxy-authorization"):
        await client.update_webhook(hook["id"], headers={"proxy-authorization": "Basic eDp5"})


async def _publish_and_wait_dead(client: Client, webhook_id: str, count: int) -> list[str]:
    jobs = [
        (await client.publish("acme", "order.created", {"n": n}))["jobs"][0]["id"]
        for n in range(count)
    ]

    async def all_dead() -> list[str] | None:
        found = [await client.get_job(job_id) for job_id in jobs]
        if all(job is not None and job["state"] == "dead" for job in found):
            return [str(job["last_error"]) for job in found if job is not None]
        return None

    errors: list[str] = await eventually(all_dead, what=f"{count} jobs dead")
    return errors


async def test_a_dead_proxy_leaves_the_endpoints_breaker_closed(
    client: Client, workers: WorkerHarness, make_sender: MakeSender
) -> None:
    """With the proxy down, 12 jobs fail with the proxy's error; the endpoint's breaker stays
    closed, its failure run and traffic share untouched (the failures are counted as the
    proxy's), where the same failures straight to the endpoint trip its breaker."""
    proxy = ConnectProxy()
    async with proxy:
        pass
    worker = await workers.start(
        max_attempts=1, proxy_url=proxy.url, sender_class=make_sender, allow_private=False
    )
    hook = await client.create_webhook("acme", "https://hooks.example.com/orders")
    errors = await _publish_and_wait_dead(client, hook["id"], 12)
    assert set(errors) == {f"egress proxy 127.0.0.1:{proxy.port}: connection refused"}
    assert workers.metrics.get(FAILURES_METRIC) == 12
    # Nothing was noted for the breaker report (note() runs as each attempt is recorded),
    # so nothing will be reported: no breaker, no failure run, a full traffic share.
    assert hook["id"] not in worker.health._health
    view = await client.get_webhook(hook["id"])
    assert (view["breaker"], view["failing_since"]) == (None, None)
    endpoint = worker.pool.endpoint(hook["id"])
    assert endpoint.limit == worker.pool.start
    assert not endpoint.started

    closed = await client.create_webhook("acme", f"http://127.0.0.1:{free_port()}/orders")
    await client.delete_webhook(hook["id"])
    await workers.stop()
    await workers.start(max_attempts=1, sender_class=make_sender)  # no proxy: straight there
    for n in range(12):
        await client.publish("acme", "order.created", {"n": n})

    async def tripped() -> bool:
        breaker = (await client.get_webhook(closed["id"]))["breaker"]
        return breaker is not None and breaker["state"] == "open"

    await eventually(tripped, what="the control webhook's breaker open")


async def test_the_daemon_delivers_through_its_proxy_and_never_logs_the_password(
    redis_url: str, prefix: str, client: Client, target: Target, logs_dir: Path
) -> None:
    """``dispatcher run`` with DISPATCHER_DELIVERY_PROXY_URL delivers through the proxy (with
    its credentials) under the default address policy, and its log shows the URL redacted."""
    async with ConnectProxy(credentials=(USER, PASSWORD)) as proxy:
        env = daemon_env(
            redis_url,
            prefix,
            delivery_proxy_url=proxy.url_with(USER, PASSWORD),
            security_allow_private_targets="false",
        )
        daemon = Daemon(env, logs_dir / "proxied.log").start()
        try:
            await client.create_webhook("acme", _by_name(target))
            await client.publish("acme", "order.created", {"n": 1})
            [request] = await target.wait_for(1)
        finally:
            await stop_daemons(daemon)
    assert request.headers["webhook-id"].startswith("job_")
    assert "proxy-authorization" not in request.headers
    assert proxy.forwards == 1
    assert proxy.authorizations[-1] is not None
    [started] = log_events(daemon, "daemon.started")
    assert started["proxy"] == f"http://{USER}:***@127.0.0.1:{proxy.port}"
    assert quote(PASSWORD, safe="") not in daemon.log
    assert PASSWORD not in daemon.log


async def test_a_test_send_goes_through_the_clients_proxy(
    redis_url: str, prefix: str, redis: aioredis.Redis, proxy: ConnectProxy, target: Target
) -> None:
    """``Client(proxy_url=...)`` sends its test sends through the proxy; a malformed
    proxy_url is refused when the Client is made."""
    async with Client.from_url(redis_url, prefix=prefix, proxy_url=proxy.url) as client:
        hook = await client.create_webhook("acme", _by_name(target))
        answer = await client.test_webhook(hook["id"])
    assert answer["delivered"], answer
    assert proxy.forwards == 1
    assert target.count() == 1
    with pytest.raises(ValueError, match="no port"):
        Client.from_url(redis_url, prefix=prefix, proxy_url="http://proxy.internal")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://proxy:3128", "an https:// or socks proxy is not supported"),
        ("socks5://proxy:1080", "an https:// or socks proxy is not supported"),
        ("http://user:hunter2@proxy", "no port in http://user:***@proxy"),
        ("http://proxy:3128/path", "a proxy URL has no path"),
        ("http://proxy:99999", "invalid port"),
        ("proxy:3128", "must be http://[user:pass@]host:port"),
        ("http://proxy:0", "invalid port"),
        ("http://u:hunter2/x@proxy:3128", "percent-encode / ? # in the password"),
        ("http://egress%3Aa:hunter2@proxy:3128", "holds a ':' (only the password may)"),
    ],
)
def test_a_bad_proxy_url_is_a_config_error_naming_the_key(value: str, expected: str) -> None:
    """A malformed delivery.proxy_url is a start-up error naming the key and where it came
    from, and never shows the password."""
    with pytest.raises(ConfigError) as raised:
        config.load(None, {"DISPATCHER_DELIVERY_PROXY_URL": value})
    [problem] = raised.value.problems
    assert problem.startswith("delivery.proxy_url: ")
    assert expected in problem
    assert problem.endswith("(from DISPATCHER_DELIVERY_PROXY_URL)")
    assert "hunter2" not in problem


def test_check_config_hides_the_proxy_password(tmp_path: os.PathLike[str]) -> None:
    """``dispatcher check-config`` shows the proxy URL with its password as ***."""
    env = {
        **os.environ,
        "DISPATCHER_DELIVERY_PROXY_URL": "http://egress:hunter2@proxy.internal:3128",
    }
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher", "check-config"],
        env=env,
        capture_output=True,
        check=True,
        cwd=tmp_path,
    )
    assert b'"proxy_url": "http://egress:***@proxy.internal:3128"' in done.stdout
    assert b"hunter2" not in done.stdout + done.stderr

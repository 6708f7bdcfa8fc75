"""OAuth2 client credentials per webhook (oauth.py): one token for many deliveries, one refresh
after a 401, token failures that name the token server, never a secret in an answer or a log."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

import orjson
import pytest
from structlog.testing import capture_logs

from dispatcher import Client, InvalidField
from dispatcher.channel import Channel, OAuthSpec
from dispatcher.config import SecurityConfig
from dispatcher.metrics import Metrics
from dispatcher.model import MASK
from dispatcher.oauth import (
    FAILURE_MEMORY_S,
    TOKEN_REQUESTS_METRIC,
    AuthorizingSender,
    Token,
    TokenCache,
)
from dispatcher.proxy import BLAME
from dispatcher.queue.keys import Keys
from dispatcher.sender import Sender
from dispatcher.ssrf import AddressPolicy
from tests.helpers import eventually
from tests.proxy import ConnectProxy, unaccepting_port
from tests.token_server import CLIENT_ID, CLIENT_SECRET, BearerTarget, Fail, Hang, TokenServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio as aioredis

    from dispatcher.sender import Outcome
    from tests.conftest import WorkerHarness
    from tests.helpers import MakeSender

LOCAL = AddressPolicy(allow_private=True)
#: The Basic credentials of CLIENT_ID and CLIENT_SECRET (RFC 6749 §2.3.1), as sent.
BASIC_CREDENTIALS = base64.b64encode(
    f"{quote_plus(CLIENT_ID, safe='')}:{quote_plus(CLIENT_SECRET, safe='')}".encode()
)


class Clock:
    """A monotonic clock the test moves by hand (no sleeps)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def tokens() -> AsyncIterator[TokenServer]:
    async with TokenServer() as server:
        yield server


@pytest.fixture
async def bearer(tokens: TokenServer) -> AsyncIterator[BearerTarget]:
    async with BearerTarget(tokens) as target:
        yield target


def oauth(tokens: TokenServer, *, secret: str = CLIENT_SECRET) -> Channel:
    """The channel of a webhook whose auth names ``tokens`` (and this client's id)."""
    spec = OAuthSpec(
        key=f"wh_1:{hashlib.sha256(secret.encode()).hexdigest()[:16]}",  # as channel.py's
        token_url=tokens.url,
        client_id=CLIENT_ID,
        client_secret=secret,
        scope=tokens.scope,
    )
    return Channel(oauth=spec)


@asynccontextmanager
async def authorizing(
    make_sender: MakeSender,
    *,
    clock: Clock | None = None,
    policy: AddressPolicy = LOCAL,
    timeout_s: float = 2.0,
    metrics: Metrics | None = None,
    proxy_url: str | None = None,
    cache: TokenCache | None = None,
) -> AsyncIterator[AuthorizingSender]:
    """The daemon's sender: ``make_sender`` wrapped for OAuth2, tokens kept on ``clock`` (or
    in ``cache``)."""
    inner = make_sender(
        timeout_s=timeout_s,
        concurrency=32,
        policy=policy,
        user_agent="dispatcher/test",
        proxy_url=proxy_url,
    )
    if cache is None:
        cache = TokenCache() if clock is None else TokenCache(now=clock)
    async with AuthorizingSender(inner, cache, timeout_s=timeout_s, metrics=metrics) as sender:
        yield sender


async def deliver(
    sender: AuthorizingSender,
    target: BearerTarget,
    channel: Channel,
    n: int = 1,
    **more: str,
) -> list[Outcome]:
    """``n`` deliveries to ``target``, at most 16 at once, with ``more`` headers."""
    room = asyncio.Semaphore(16)

    async def one(i: int) -> Outcome:
        async with room:
            headers = {"webhook-id": f"msg_{i}", "webhook-signature": f"v1,sig{i}", **more}
            return await sender.attempt(target.url(), b'{"n": 1}', headers, channel=channel)

    return await asyncio.gather(*(one(i) for i in range(n)))


async def test_one_token_serves_many_concurrent_deliveries(
    make_sender: MakeSender, tokens: TokenServer, bearer: BearerTarget
) -> None:
    """50 deliveries, 16 at a time, cost one token request, and every one carries that token."""
    metrics = Metrics()
    async with authorizing(make_sender, metrics=metrics) as sender:
        outcomes = await deliver(sender, bearer, oauth(tokens), 50)
    assert [o.error for o in outcomes] == [None] * 50
    assert tokens.requests == 1
    assert tokens.refusals == []  # Basic credentials (RFC 6749 §2.3.1) and the form were right
    assert bearer.bearers == ["tok-1"] * 50
    assert metrics.get(TOKEN_REQUESTS_METRIC, result="ok") == 1


async def test_a_revoked_token_is_refreshed_within_the_attempt(
    make_sender: MakeSender, tokens: TokenServer, bearer: BearerTarget
) -> None:
    """After the target stops taking the token, each delivery still succeeds in its one attempt,
    resent with a new token and its own headers, and the parallel 401s cause one token request."""
    async with authorizing(make_sender) as sender:
        await deliver(sender, bearer, oauth(tokens))
        tokens.revoke("tok-1")
        outcomes = await deliver(sender, bearer, oauth(tokens), 20)
    assert [o.error for o in outcomes] == [None] * 20
    assert tokens.requests == 2
    assert set(bearer.bearers) == {"tok-1", "tok-2"}
    resent = [r for r in bearer.received[1:] if r.headers["authorization"] == "Bearer tok-2"]
    assert len(resent) == 20
    first_tries = {r.headers["webhook-id"]: r for r in bearer.received[1:] if r not in resent}
    for again in resent:  # a resend is the same delivery: same id and signature
        refused = first_tries.get(again.headers["webhook-id"])
        if refused is not None:
            assert refused.headers["webhook-signature"] == again.headers["webhook-signature"]
            assert refused.body == again.body


async def test_a_target_refusing_every_token_gets_one_refresh(
    make_sender: MakeSender, tokens: TokenServer
) -> None:
    """A 401 refreshes the token once; a 401 to the new token is the attempt's outcome."""
    async with BearerTarget(tokens, refuse_all=True) as target, authorizing(make_sender) as sender:
        [outcome] = await deliver(sender, target, oauth(tokens))
    assert outcome.status == 401
    assert outcome.error is not None
    assert outcome.error.startswith("HTTP 401")
    assert tokens.requests == 2
    assert target.bearers == ["tok-1", "tok-2"]


@pytest.mark.parametrize(
    ("expires_in", "fresh_s"),
    [(3600, 3540), (120, 60), (30, 15), (None, 240)],  # absent: 300 s
    ids=["hour", "two-minutes", "half-minute", "absent"],
)
async def test_a_token_is_kept_until_shortly_before_it_expires(
    expires_in: int | None, fresh_s: float, bearer: BearerTarget
) -> None:
    """A token is reused until less than min(60 s, half its lifetime) is left, then refetched."""
    async with TokenServer(expires_in=expires_in) as tokens:
        bearer.tokens = tokens
        clock = Clock()
        start = clock.now
        async with authorizing(Sender, clock=clock) as sender:
            await deliver(sender, bearer, oauth(tokens))
            clock.now = start + fresh_s - 0.01
            await deliver(sender, bearer, oauth(tokens))
            assert tokens.requests == 1
            clock.now = start + fresh_s
            [outcome] = await deliver(sender, bearer, oauth(tokens))
    assert outcome.error is None
    assert tokens.requests == 2
    assert bearer.bearers == ["tok-1", "tok-1", "tok-2"]


async def test_a_token_error_names_the_token_url_and_sends_nothing(
    make_sender: MakeSender, tokens: TokenServer, bearer: BearerTarget
) -> None:
    """A token server's RFC 6749 error answer is the attempt's error, naming the token URL and
    what the server said; the target gets nothing."""
    tokens.script(Fail(400, {"error": "invalid_client", "error_description": "Unknown client"}))
    metrics = Metrics()
    async with authorizing(make_sender, metrics=metrics) as sender:
        [outcome] = await deliver(sender, bearer, oauth(tokens))
        tokens.script()  # tokens issued again, but the client secret below is wrong
        [wrong] = await deliver(sender, bearer, oauth(tokens, secret="wrong"))  # noqa: S106
    assert (outcome.status, outcome.error) == (
        None,
        f"OAuth2 token request to {tokens.url} failed: HTTP 400: invalid_client (Unknown client)",
    )
    assert wrong.error is not None
    assert wrong.error.startswith(f"OAuth2 token request to {tokens.url} failed: HTTP 401: ")
    assert "invalid_client" in wrong.error
    assert bearer.received == []
    assert metrics.get(TOKEN_REQUESTS_METRIC, result="rejected") == 2


async def test_a_failing_token_server_gets_one_request_for_many_attempts(
    tokens: TokenServer, bearer: BearerTarget
) -> None:
    """20 parallel attempts while the token server fails make one token request, and the failure
    is the answer for FAILURE_MEMORY_S after it; then a new request is made."""
    tokens.script(Fail(500, b"token store down"))
    clock = Clock()
    async with authorizing(Sender, clock=clock) as sender:
        outcomes = await deliver(sender, bearer, oauth(tokens), 20)
        clock.now += FAILURE_MEMORY_S - 0.01
        [remembered] = await deliver(sender, bearer, oauth(tokens))
        assert tokens.requests == 1
        tokens.script()
        clock.now += 0.01
        [later] = await deliver(sender, bearer, oauth(tokens))
    error = f"OAuth2 token request to {tokens.url} failed: HTTP 500: token store down"
    assert {o.error for o in [*outcomes, remembered]} == {error}
    assert later.error is None
    assert tokens.requests == 2
    assert bearer.bearers == ["tok-1"]


async def test_a_token_url_refused_by_the_address_policy(
    make_sender: MakeSender, bearer: BearerTarget
) -> None:
    """The token URL passes the deliveries' address policy: outside it, nothing is requested."""
    only_target = AddressPolicy(allowed_cidrs=(ipaddress.ip_network("127.0.0.1/32"),))
    async with (
        TokenServer(host="127.0.0.2") as tokens,
        authorizing(make_sender, policy=only_target) as sender,
    ):
        [outcome] = await deliver(sender, bearer, oauth(tokens))
    assert outcome.error is not None
    assert outcome.error.startswith(f"OAuth2 token request to {tokens.url} failed: ")
    assert "refused" in outcome.error
    assert tokens.requests == 0
    assert bearer.received == []


async def test_a_hanging_token_server_ends_the_attempt_at_its_deadline(
    tokens: TokenServer, bearer: BearerTarget
) -> None:
    """Token and delivery share the attempt's one deadline; the error says what it waited for;
    an attempt that joined the token request later is not cut short by the first one's end."""
    tokens.script(Hang())
    async with authorizing(Sender, timeout_s=0.3) as sender:
        first = asyncio.create_task(deliver(sender, bearer, oauth(tokens)))
        await eventually(lambda: tokens.requests == 1, what="the token requested")
        [joined] = await deliver(sender, bearer, oauth(tokens))
        [outcome] = await first
    assert outcome.timed_out
    assert outcome.error == f"timed out after 0.3 s waiting for an OAuth2 token from {tokens.url}"
    assert joined.error is not None
    assert joined.error.startswith(f"OAuth2 token request to {tokens.url} failed: timed out")
    assert tokens.requests == 1
    assert bearer.received == []


async def test_the_token_request_goes_through_the_egress_proxy(
    make_sender: MakeSender, tokens: TokenServer, bearer: BearerTarget
) -> None:
    """With delivery.proxy_url, the token request leaves through the proxy as the delivery does,
    and the token replaces a custom Authorization header."""
    async with ConnectProxy() as proxy, authorizing(make_sender, proxy_url=proxy.url) as sender:
        [outcome] = await deliver(sender, bearer, oauth(tokens), Authorization="Basic b2xk")
    assert outcome.error is None
    assert proxy.forwards == 2
    assert [line.split()[1] for line in proxy.request_lines] == [tokens.url, bearer.url()]
    assert bearer.received[0].headers.getall("authorization") == ["Bearer tok-1"]


async def test_a_deadline_dialling_the_proxy_with_a_kept_token_is_the_proxys(
    make_sender: MakeSender, tokens: TokenServer, bearer: BearerTarget
) -> None:
    """With a token kept, an attempt whose deadline runs out while the egress proxy does not
    accept is the proxy's failure (its text, blame "proxy"), as without OAuth2, so the
    endpoint's breaker stays closed."""
    async with authorizing(make_sender) as direct:
        await deliver(direct, bearer, oauth(tokens))  # the token is kept
    with unaccepting_port() as port:
        proxy_url = f"http://127.0.0.1:{port}"
        async with authorizing(
            make_sender, timeout_s=0.3, proxy_url=proxy_url, cache=direct.tokens
        ) as sender:
            [outcome] = await deliver(sender, bearer, oauth(tokens))
    assert outcome.timed_out
    assert (outcome.blame, outcome.error) == (
        BLAME,
        f"egress proxy 127.0.0.1:{port}: timed out after 0.3 s",
    )
    assert tokens.requests == 1
    assert len(bearer.received) == 1


async def test_a_token_request_dialling_the_proxy_too_long_is_the_proxys(
    make_sender: MakeSender, tokens: TokenServer, bearer: BearerTarget
) -> None:
    """An attempt whose deadline runs out while its token request dials an egress proxy that
    does not accept is the proxy's failure (blame "proxy"), as is the next one, so the
    endpoint's breaker stays closed."""
    with unaccepting_port() as port:
        proxy_url = f"http://127.0.0.1:{port}"
        async with authorizing(make_sender, timeout_s=0.3, proxy_url=proxy_url) as sender:
            [first] = await deliver(sender, bearer, oauth(tokens))
            [second] = await deliver(sender, bearer, oauth(tokens))
    error = f"OAuth2 token request to {tokens.url} failed: egress proxy 127.0.0.1:{port}: "
    assert (first.blame, first.error) == (BLAME, f"{error}timed out after 0.3 s")
    assert first.timed_out
    assert (second.blame, second.error) == (first.blame, first.error)
    assert (tokens.requests, bearer.received) == (0, [])


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"<html>ok</html>", "is not a JSON object"),
        ({"token_type": "Bearer"}, "has no access_token"),
        ({"access_token": "tok 1\r\nX-Evil: 1"}, "access_token is not visible ASCII text"),
        ({"access_token": "tok-1", "token_type": "mac"}, "token_type is not Bearer"),
        ({"access_token": "tok-1", "expires_in": "soon"}, "expires_in is not a number"),
    ],
    ids=["html", "no-token", "header-breaking", "mac", "expires-garbled"],
)
async def test_a_2xx_without_a_usable_token_is_a_token_failure(
    tokens: TokenServer, bearer: BearerTarget, body: dict[str, object] | bytes, said: str
) -> None:
    """A 2xx token answer without a usable bearer token fails the attempt, saying what is
    wrong without quoting the token."""
    tokens.script(Fail(200, body))
    metrics = Metrics()
    async with authorizing(Sender, metrics=metrics) as sender:
        [outcome] = await deliver(sender, bearer, oauth(tokens))
    prefix = f"OAuth2 token request to {tokens.url} failed: HTTP 200 answer"
    assert outcome.error is not None
    assert outcome.error.startswith(prefix)
    assert said in outcome.error
    assert "tok-1" not in outcome.error
    assert "tok 1" not in outcome.error
    assert bearer.received == []
    assert metrics.get(TOKEN_REQUESTS_METRIC, result="malformed") == 1


async def test_an_echoed_client_secret_is_masked_in_the_error(
    tokens: TokenServer, bearer: BearerTarget
) -> None:
    """A token server quoting the client secret back never puts it in an error or a log line."""
    said = f"client secret {CLIENT_SECRET} is wrong"
    tokens.script(Fail(401, {"error": "invalid_client", "error_description": said}))
    with capture_logs() as logs:
        async with authorizing(Sender) as sender:
            [outcome] = await deliver(sender, bearer, oauth(tokens))
    assert outcome.error is not None
    assert outcome.error.endswith("invalid_client (client secret *** is wrong)")
    assert [entry["event"] for entry in logs] == ["oauth.token_failed"]
    assert CLIENT_SECRET not in repr(logs)


@pytest.mark.parametrize(
    "answer",
    [
        Fail(
            401, {"error": "invalid_client", "error_description": "x" * 190 + " " + CLIENT_SECRET}
        ),
        Fail(400, b"<pre>you sent Authorization: Basic " + BASIC_CREDENTIALS + b"</pre>"),
    ],
    ids=["secret-at-the-cut", "echoed-basic-credentials"],
)
async def test_no_part_of_an_echoed_secret_reaches_the_error(
    tokens: TokenServer, bearer: BearerTarget, answer: Fail
) -> None:
    """A token server echoing the client secret where the error text is cut short, or the Basic
    credentials made of it, leaves no part of either in the error or the log."""
    tokens.script(answer)
    with capture_logs() as logs:
        async with authorizing(Sender) as sender:
            [outcome] = await deliver(sender, bearer, oauth(tokens))
    assert outcome.error is not None
    assert "***" in outcome.error
    for text in (outcome.error, repr(logs)):
        assert CLIENT_SECRET[:4] not in text
        assert BASIC_CREDENTIALS.decode()[:16] not in text


class Issuer:
    """A TokenCache fetch without a server: issues tok-1, tok-2, ... for an hour each."""

    def __init__(self) -> None:
        self.issued: list[str] = []

    async def __call__(self, _spec: OAuthSpec) -> Token:
        self.issued.append(f"tok-{len(self.issued) + 1}")
        return Token(self.issued[-1], 3600)


#: A webhook's credentials for the TokenCache alone (no request is made with them).
SPEC = OAuthSpec("wh_1:k", "https://tokens.example.com/", "id", "secret")


async def test_a_late_401_for_a_replaced_token_keeps_the_new_one() -> None:
    """A 401 for a token already replaced (the answer came in after another attempt refreshed
    it) does not throw the new token away."""
    fetch, cache = Issuer(), TokenCache()
    assert await cache.get(SPEC, fetch) == "tok-1"
    cache.invalidate(SPEC, "tok-1")
    assert await cache.get(SPEC, fetch) == "tok-2"
    cache.invalidate(SPEC, "tok-1")  # late
    assert await cache.get(SPEC, fetch) == "tok-2"
    assert fetch.issued == ["tok-1", "tok-2"]


async def test_a_fetch_cancelled_before_it_ran_is_not_left_under_way() -> None:
    """A token fetch cancelled by ``close`` before it ever ran is not kept as the webhook's
    fetch under way: the next ``get`` fetches anew instead of raising CancelledError (which
    would end the delivery lane that asked)."""
    fetch, cache = Issuer(), TokenCache()
    waiting = asyncio.create_task(cache.get(SPEC, fetch))
    await asyncio.sleep(0)  # it starts the fetch, which has not run yet
    await cache.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await cache.get(SPEC, fetch) == "tok-1"
    assert fetch.issued == ["tok-1"]


def auth_of(tokens: TokenServer, **changes: Any) -> dict[str, Any]:
    return {
        "type": "oauth2_client_credentials",
        "token_url": tokens.url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        **changes,
    }


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"type": "oauth2_password"}, "auth.type"),
        ({"token_url": "ftp://tokens.example.com/"}, "auth.token_url"),
        ({"token_url": None}, "auth.token_url"),
        ({"client_id": "x" * 257}, "auth.client_id"),
        ({"client_secret": None}, "auth.client_secret"),
        ({"client_secret": "s" * 4097}, "auth.client_secret"),
        ({"scope": "s" * 1025}, "auth.scope"),
        ({"scope": 7}, "auth.scope"),
        ({"audience": "api"}, "auth.audience"),
    ],
)
async def test_auth_is_checked_field_by_field(
    client: Client, tokens: TokenServer, changes: dict[str, Any], field: str
) -> None:
    """A bad auth is a 422 naming the field, never quoting the secret."""
    auth = {k: v for k, v in auth_of(tokens, **changes).items() if v is not None}
    with pytest.raises(InvalidField) as caught:
        await client.create_webhook("acme", "https://hooks.example.com/h", auth=auth)
    assert caught.value.field == field
    assert CLIENT_SECRET not in str(caught.value)


async def test_a_worker_delivers_with_the_webhooks_token(
    workers: WorkerHarness,
    client: Client,
    redis_url: str,
    prefix: str,
    tokens: TokenServer,
    bearer: BearerTarget,
) -> None:
    """End to end: deliveries carry one token fetched once; a revoked token is replaced within
    the attempt; the secret is answered "***", kept through a PATCH of the answer, and appears
    in no log line; a Client's test send fetches its own token."""
    with capture_logs() as logs:
        await workers.start(tokens=TokenCache(), max_attempts=1)
        hook = await client.create_webhook("acme", bearer.url(), auth=auth_of(tokens, scope="a b"))
        assert hook["auth"] == auth_of(tokens, scope="a b", client_secret=MASK)
        tokens.scope = "a b"  # the server now insists on it
        for n in range(10):
            await client.publish("acme", "order.created", {"n": n})
        await eventually(lambda: len(bearer.received) == 10, what="10 deliveries")
        assert (tokens.requests, set(bearer.bearers)) == (1, {"tok-1"})

        tokens.revoke("tok-1")
        answer = await client.get_webhook(hook["id"])
        await client.update_webhook(hook["id"], auth=answer["auth"])  # "***" keeps the secret
        published = await client.publish("acme", "order.created", {"n": 10})
        job_id = published["jobs"][0]["id"]

        await eventually(lambda: in_state(client, job_id, "delivered"), what="the job delivered")
        job = await client.get_job(job_id)
        assert job is not None
        assert [a["status"] for a in job["attempts"]] == [200]  # one attempt
        assert tokens.requests == 2
        assert bearer.bearers[-2:] == ["tok-1", "tok-2"]

        async with Client.from_url(
            redis_url, prefix=prefix, security=SecurityConfig(allow_private_targets=True)
        ) as local:
            verdict = await local.test_webhook(hook["id"])
        assert verdict["delivered"] is True
        assert (tokens.requests, bearer.bearers[-1]) == (3, "tok-3")
        assert tokens.refusals == []

        tokens.revoke("tok-2")
        said = f"secret {CLIENT_SECRET} was revoked"
        tokens.script(Fail(401, {"error": "invalid_client", "error_description": said}))
        published = await client.publish("acme", "order.created", {"n": 11})
        job_id = published["jobs"][0]["id"]
        await eventually(lambda: in_state(client, job_id, "dead"), what="the job dead")
        job = await client.get_job(job_id)
        assert job is not None
        error = f"OAuth2 token request to {tokens.url} failed: HTTP 401: invalid_client"
        assert job["attempts"][-1]["error"] == f"{error} (secret *** was revoked)"
    assert {"oauth.token_failed", "delivery.failed"} <= {entry["event"] for entry in logs}
    text = repr(logs)
    assert CLIENT_SECRET not in text
    assert "tok-" not in text


async def test_an_auth_this_release_does_not_know_fails_its_attempts(
    workers: WorkerHarness,
    client: Client,
    redis: aioredis.Redis,
    prefix: str,
    tokens: TokenServer,
    bearer: BearerTarget,
) -> None:
    """A stored auth of a type this release does not know (a newer release wrote it during an
    upgrade) fails each attempt with a text saying so, until the job is dead: no crash into a
    reclaim loop, and never taken for client credentials."""
    await workers.start(tokens=TokenCache(), max_attempts=1)
    hook = await client.create_webhook("acme", bearer.url(), auth=auth_of(tokens))
    record = orjson.loads(await redis.hget(Keys(prefix).webhooks, hook["id"]) or b"{}")
    record["auth"]["type"] = "oauth2_jwt_bearer"
    await redis.hset(Keys(prefix).webhooks, hook["id"], orjson.dumps(record))
    published = await client.publish("acme", "order.created", {"n": 1})
    job_id = published["jobs"][0]["id"]
    await eventually(lambda: in_state(client, job_id, "dead"), what="the job dead")
    job = await client.get_job(job_id)
    assert job is not None
    error = "the webhook's auth type 'oauth2_jwt_bearer' is not known here"
    assert [a["error"] for a in job["attempts"]] == [error]
    assert (tokens.requests, bearer.received) == (0, [])


async def in_state(client: Client, job_id: str, state: str) -> bool:
    job = await client.get_job(job_id)
    return job is not None and job["state"] == state

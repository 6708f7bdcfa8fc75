"""The sender against a real HTTP target: answers, faults, deadlines and bounded reads."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from typing import TYPE_CHECKING

import pytest

from dispatcher.retry import parse_retry_after
from dispatcher.ssrf import AddressPolicy
from tests.target import Drip, Garbage, Hang, Huge, Redirect, Reply, Reset, Target, gzip_bomb

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from dispatcher.sender import Outcome
    from tests.helpers import AnySender, MakeSender

TIMEOUT_S = 0.5
DEADLINE_BOUND_S = 3.0  # generous: a hang with a 0.5 s timeout returns well within this
HEADERS = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000", "webhook-signature": "v1,x"}


@pytest.fixture
async def sender(make_sender: MakeSender) -> AsyncIterator[AnySender]:
    """A sender (each HTTP client in turn) with a short deadline, allowed to reach loopback."""
    async with make_sender(
        timeout_s=TIMEOUT_S,
        concurrency=8,
        policy=AddressPolicy(allow_private=True),
        user_agent="dispatcher/test",
    ) as s:
        yield s


async def _post(sender: AnySender, target: Target, path: str = "/hook") -> Outcome:
    return await sender.attempt(target.url(path), b'{"n": 1}', HEADERS)


async def test_2xx_is_delivered_with_the_wire_headers(sender: AnySender, target: Target) -> None:
    """A 200 is a delivery and the target got the body and the contract's headers."""
    outcome = await _post(sender, target)
    assert outcome.status == 200
    assert outcome.error is None
    assert outcome.delivered
    assert outcome.duration_ms > 0
    [request] = await target.wait_for(1)
    assert request.method == "POST"
    assert request.body == b'{"n": 1}'
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "dispatcher/test"
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["webhook-id"] == "msg_1"
    assert "cookie" not in request.headers


async def test_connections_are_reused(sender: AnySender, target: Target) -> None:
    """Consecutive attempts to one target share a kept-alive connection."""
    for _ in range(3):
        assert (await _post(sender, target)).status == 200
    assert target.connections == 1


async def test_500_keeps_a_body_snippet(sender: AnySender, target: Target) -> None:
    """A 500 is a failure whose error carries the status and the start of the body."""
    target.script("/hook", Reply(500, b"database on fire"))
    outcome = await _post(sender, target)
    assert outcome.status == 500
    assert outcome.error == "HTTP 500: database on fire"
    assert not outcome.delivered


async def test_error_snippet_is_short_and_decoded_safely(sender: AnySender, target: Target) -> None:
    """The snippet is at most 200 characters and bad UTF-8 does not break it."""
    target.script("/hook", Reply(502, b"\xff\xfe" + b"x" * 5000))
    outcome = await _post(sender, target)
    assert outcome.error is not None
    assert outcome.error.startswith("HTTP 502: \ufffd\ufffdxxx")
    assert len(outcome.error) <= len("HTTP 502: ") + 200


async def test_410_is_reported_with_its_status(sender: AnySender, target: Target) -> None:
    """A 410 comes back as status 410 for the retry policy to disable the webhook."""
    target.script("/hook", Reply(410, b""))
    outcome = await _post(sender, target)
    assert outcome.status == 410
    assert outcome.error == "HTTP 410"


async def test_429_retry_after_seconds(sender: AnySender, target: Target) -> None:
    """Retry-After in seconds is returned as retry_after_s."""
    target.script("/hook", Reply(429, b"slow down", {"Retry-After": "7"}))
    outcome = await _post(sender, target)
    assert outcome.status == 429
    assert outcome.retry_after_s == 7.0


async def test_503_retry_after_http_date(sender: AnySender, target: Target) -> None:
    """Retry-After as an HTTP date becomes the seconds from now until then."""
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    target.script("/hook", Reply(503, b"", {"Retry-After": when}))
    outcome = await _post(sender, target)
    assert outcome.status == 503
    assert outcome.retry_after_s is not None
    assert 20 <= outcome.retry_after_s <= 31


async def test_garbled_retry_after_is_ignored(sender: AnySender, target: Target) -> None:
    """An unparseable Retry-After gives None, not an error."""
    target.script("/hook", Reply(429, b"", {"Retry-After": "soonish"}))
    outcome = await _post(sender, target)
    assert outcome.status == 429
    assert outcome.retry_after_s is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        ("0", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
        ("Thu, 01 Jan 2099 00:00:10 GMT", 10.0),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("Wed, 99 Foo 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    """Delta seconds and HTTP dates parse, the past is 0, and garbage is None."""
    now_s = 4070908800.0  # 2099-01-01T00:00:00Z
    assert parse_retry_after(value, now_s=now_s) == expected


async def test_hang_times_out_at_the_deadline(sender: AnySender, target: Target) -> None:
    """A target that never answers yields a timed-out outcome at the deadline."""
    target.script("/hook", Hang())
    started = time.monotonic()
    outcome = await _post(sender, target)
    assert time.monotonic() - started < DEADLINE_BOUND_S
    assert outcome.timed_out
    assert outcome.status is None
    assert outcome.error == "timed out after 0.5 s"
    assert target.count() == 1


async def test_drip_cannot_outlive_the_deadline(sender: AnySender, target: Target) -> None:
    """A body dripping one byte at a time is cut at the overall deadline."""
    target.script("/hook", Drip(interval_s=0.05))
    started = time.monotonic()
    outcome = await _post(sender, target)
    assert time.monotonic() - started < DEADLINE_BOUND_S
    assert outcome.timed_out
    assert outcome.status is None


async def test_slow_but_timely_answer_is_delivered(sender: AnySender, target: Target) -> None:
    """An answer within the deadline is a delivery."""
    target.script("/hook", Reply(200, delay_s=0.1))
    outcome = await _post(sender, target)
    assert outcome.status == 200
    assert not outcome.timed_out


async def test_huge_body_is_read_only_up_to_the_cap(
    make_sender: MakeSender, target: Target
) -> None:
    """A 50 MiB answer is cut after the cap, so the attempt ends long before it could stream."""
    target.script("/hook", Huge(), Reply(500, b"x" * (10 * 1024 * 1024)))
    policy = AddressPolicy(allow_private=True)
    async with make_sender(timeout_s=10, concurrency=2, policy=policy, user_agent="t") as sender:
        started = time.monotonic()
        delivered = await _post(sender, target)
        failed = await _post(sender, target)
        elapsed_s = time.monotonic() - started
    assert delivered.status == 200
    assert delivered.error is None
    assert failed.status == 500
    assert failed.error is not None
    assert len(failed.error) < 300
    assert elapsed_s < 5.0
    assert target.connections == 2  # the cut-off connection was closed, not reused


async def test_redirect_is_not_followed(sender: AnySender, target: Target) -> None:
    """A 302 is a failure naming the location, and the location is never requested."""
    target.script("/hook", Redirect(target.url("/elsewhere")))
    outcome = await _post(sender, target)
    assert outcome.status == 302
    assert outcome.error == f"redirect to {target.url('/elsewhere')} not followed (HTTP 302)"
    assert target.count("/elsewhere") == 0


async def test_compressed_answer_is_never_inflated(sender: AnySender, target: Target) -> None:
    """A gzip answer is kept as the bytes that came, so a bomb cannot inflate in the sender."""
    target.script("/hook", gzip_bomb(status=500))
    outcome = await _post(sender, target)
    assert outcome.status == 500
    assert outcome.error is not None
    assert "BOOM" not in outcome.error


async def test_cookies_are_never_sent_back(sender: AnySender, target: Target) -> None:
    """A Set-Cookie from a target is not stored: the next request carries no cookie."""
    target.script("/hook", Reply(200, b"ok", {"Set-Cookie": "session=abc; Path=/"}))
    url = f"http://localhost:{target.port}/hook"  # a name: cookie jars skip IP hosts
    for _ in range(2):
        assert (await sender.attempt(url, b"{}", HEADERS)).status == 200
    assert all("cookie" not in request.headers for request in await target.wait_for(2))


async def test_url_credentials_are_not_sent(sender: AnySender, target: Target) -> None:
    """User and password in a webhook URL are not turned into an Authorization header."""
    url = target.url("/hook").replace("http://", "http://user:secret@")
    assert (await sender.attempt(url, b"{}", HEADERS)).status == 200
    [request] = await target.wait_for(1)
    assert "authorization" not in request.headers


async def test_proxy_variables_are_ignored(
    make_sender: MakeSender, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY and friends in the environment are not used: the POST goes to the target."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # the discard port: nothing listens
    policy = AddressPolicy(allow_private=True)
    async with make_sender(timeout_s=2, concurrency=2, policy=policy, user_agent="t") as sender:
        outcome = await _post(sender, target)
    assert outcome.status == 200
    assert target.count() == 1


@pytest.mark.parametrize("rst", [True, False])
async def test_dropped_connection_is_a_failure(
    sender: AnySender, target: Target, rst: bool
) -> None:
    """A connection reset or closed without an answer is a failure, not an exception."""
    target.script("/hook", Reset(rst=rst))
    outcome = await _post(sender, target)
    assert outcome.status is None
    assert outcome.error in {
        "connection reset by the target",
        "the target closed the connection without a complete response",
    }
    assert not outcome.timed_out
    assert target.count() == 1


async def test_garbage_answer_is_a_failure(sender: AnySender, target: Target) -> None:
    """Bytes that are not HTTP are a malformed-response failure."""
    target.script("/hook", Garbage())
    outcome = await _post(sender, target)
    assert outcome.status is None
    assert outcome.error is not None
    assert outcome.error.startswith("malformed response")


async def test_truncated_body_is_a_failure(sender: AnySender, target: Target) -> None:
    """A body shorter than its Content-Length is a failure without a status."""
    target.script("/hook", Garbage(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"))
    outcome = await _post(sender, target)
    assert outcome.status is None
    assert outcome.error == "the response body was cut short or malformed"


async def test_closed_port_is_connection_refused(sender: AnySender) -> None:
    """A port with no listener gives "connection refused"."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    outcome = await sender.attempt(f"http://127.0.0.1:{port}/hook", b"{}", {})
    assert outcome.status is None
    assert outcome.error == "connection refused"


async def test_unknown_host_is_a_dns_failure(sender: AnySender) -> None:
    """A name that does not resolve is a failure naming the host."""
    outcome = await sender.attempt("http://does-not-exist.invalid/hook", b"{}", {})
    assert outcome.status is None
    assert outcome.error == "DNS lookup of does-not-exist.invalid failed"


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/hook", "not a url", "http:///nohost", "http://[::1/hook", "file:///etc"],
)
async def test_invalid_urls_are_failures(sender: AnySender, url: str) -> None:
    """A malformed URL or a scheme other than http(s) is an invalid-URL outcome."""
    outcome = await sender.attempt(url, b"{}", {})
    assert outcome.status is None
    assert outcome.error is not None
    assert outcome.error.startswith("invalid URL")


async def test_header_injection_is_a_failure(sender: AnySender, target: Target) -> None:
    """A header value with a line break is refused as an invalid request, never sent."""
    outcome = await sender.attempt(target.url(), b"{}", {"x-custom": "a\r\nx-evil: 1"})
    assert outcome.status is None
    assert outcome.error is not None
    assert outcome.error.startswith("invalid request")
    assert target.count() == 0


async def test_header_outside_latin_1_is_a_failure(sender: AnySender, target: Target) -> None:
    """A header value that HTTP/1.1 cannot carry as Latin-1 is an invalid request, never sent."""
    outcome = await sender.attempt(target.url(), b"{}", {"x-custom": "snow \u2603"})
    assert outcome.status is None
    assert outcome.error is not None
    assert outcome.error.startswith("invalid request")
    assert target.count() == 0


async def test_cancellation_propagates(sender: AnySender, target: Target) -> None:
    """Cancelling an attempt raises CancelledError instead of returning an outcome."""
    target.script("/hook", Hang())
    task = asyncio.create_task(_post(sender, target))
    await target.wait_for(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_target_scripts_play_in_order_and_repeat_the_last(
    sender: AnySender, target: Target
) -> None:
    """The target plays its script in order per path and repeats the last behaviour."""
    target.script("/a", Reply(500), Reply(201))
    statuses = [(await _post(sender, target, "/a")).status for _ in range(3)]
    assert statuses == [500, 201, 201]
    assert (await _post(sender, target, "/b")).status == 200
    assert target.count("/a") == 3
    assert target.count() == 4


async def test_wait_for_names_what_arrived(target: Target) -> None:
    """wait_for fails with an AssertionError listing the requests that did arrive."""
    with pytest.raises(AssertionError, match=r"expected 1 requests to /x within 0.1 s"):
        await target.wait_for(1, "/x", timeout_s=0.1)


async def test_a_timed_out_attempt_leaves_its_task_uncancelled(
    sender: AnySender, target: Target
) -> None:
    """After an attempt times out, the task that made it carries no cancellation: its next
    await completes, and a deadline of its own still works (a delivery lane goes on)."""
    target.script("/hook", Reply(200), Hang())
    task = asyncio.current_task()
    assert task is not None
    assert (await _post(sender, target)).delivered
    outcome = await _post(sender, target)
    assert outcome.timed_out
    assert task.cancelling() == 0
    await asyncio.sleep(TIMEOUT_S * 2)  # the first attempt's deadline, had it leaked, fires here
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await asyncio.Event().wait()
    assert task.cancelling() == 0


async def test_an_outer_deadline_is_not_taken_for_the_attempts(
    sender: AnySender, target: Target
) -> None:
    """A caller's own shorter deadline around an attempt raises the caller's TimeoutError,
    not a timed-out outcome: the caller's cancellation is never swallowed."""
    target.script("/hook", Hang())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(TIMEOUT_S / 5):
            await _post(sender, target)

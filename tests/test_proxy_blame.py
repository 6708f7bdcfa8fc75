"""Whose is a refusal by the egress proxy: one destination refused is the endpoint's however
often, a proxy refusing every destination is the proxy's (so it opens no breaker), and an http
endpoint answering 407 like a proxy does not escape its breaker once the proxy is seen working.
Both HTTP clients, a real CONNECT proxy and real targets on loopback."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.proxy import (
    BLAME,
    BROAD_REFUSALS,
    Proxy,
    ProxyFailure,
    TunnelRefused,
    connect_refusal,
    http_answer,
)
from tests.proxy import ConnectProxy
from tests.target import Reply, Target
from tests.test_proxy import BODY, HEADERS, _by_name, _sender, ca, https_target

if TYPE_CHECKING:
    from dispatcher.sender import Outcome
    from tests.helpers import AnySender, MakeSender
    from tests.pki import Authority

__all__ = ["ca", "https_target"]  # the fixtures this module shares with test_proxy

REFUSED = "egress proxy 127.0.0.1:{port} refused the target (its policy): HTTP {status}"
REFUSES_ALL = (
    "egress proxy 127.0.0.1:{port}: refused the target (HTTP {status}) as it did 3 destinations "
    "in a row, none let through since: taken as refusing everything (its policy or configuration)"
)


async def _to(sender: AnySender, host: str) -> Outcome:
    """An https delivery to ``host``: the proxy refuses its CONNECT without resolving it."""
    return await sender.attempt(f"https://{host}/hook", BODY, HEADERS)


async def test_a_proxy_refusing_every_destination_is_the_proxys_failure(
    make_sender: MakeSender, ca: Authority, https_target: Target
) -> None:
    """CONNECTs refused 403 (squid's deny) or 407 without a challenge (smokescreen's): one
    destination refused is the endpoint's however often (the policy will never let it
    through); once three distinct destinations are refused with none let through between,
    each refusal is the proxy's until it opens a tunnel again."""
    assert BROAD_REFUSALS == 3
    for status in (403, 407):
        async with (
            ConnectProxy(connect_status=status) as proxy,
            _sender(make_sender, proxy.url, ca) as sender,
        ):
            endpoints = REFUSED.format(port=proxy.port, status=status)
            proxys = REFUSES_ALL.format(port=proxy.port, status=status)
            for _ in range(12):
                outcome = await _to(sender, "denied.example")
                assert (outcome.error, outcome.blame) == (endpoints, None)
            assert (await _to(sender, "second.example")).blame is None
            for host in ("third.example", "denied.example", "fourth.example"):
                outcome = await _to(sender, host)
                assert (outcome.error, outcome.blame) == (proxys, BLAME)
            proxy.connect_status = 200  # it lets a delivery through again
            assert (await sender.attempt(_by_name(https_target), BODY, HEADERS)).error is None
            proxy.connect_status = status
            for host in ("third.example", "fourth.example"):
                assert (await _to(sender, host)).blame is None
    assert https_target.count() == 2


async def test_an_http_endpoint_answering_407_is_the_endpoints_once_the_proxy_works(
    make_sender: MakeSender, ca: Authority, target: Target
) -> None:
    """Through the proxy an http endpoint's 407 with Proxy-Authenticate looks like the proxy
    asking for credentials: it is the proxy's only while the proxy has let nothing through
    (or challenges several destinations in a row); once the proxy carried a delivery, the
    endpoint answering 407 fails as itself, its breaker counting it."""
    challenge = Reply(407, headers={"Proxy-Authenticate": 'Basic realm="x"'})
    target.script("/poser", *[challenge] * 4)
    async with ConnectProxy() as proxy, _sender(make_sender, proxy.url, ca) as sender:
        first = await sender.attempt(_by_name(target, "/poser"), BODY, HEADERS)
        assert first.blame == BLAME  # nothing let through yet: it may be the proxy's
        assert first.error == (
            f"egress proxy 127.0.0.1:{proxy.port}: wants credentials "
            "(HTTP 407; delivery.proxy_url user:pass@)"
        )
        assert (await sender.attempt(_by_name(target, "/ok"), BODY, HEADERS)).error is None
        for _ in range(3):
            outcome = await sender.attempt(_by_name(target, "/poser"), BODY, HEADERS)
            assert (outcome.status, outcome.blame) == (407, None)
            assert outcome.error == "HTTP 407: ok"
    assert proxy.forwards == 5


def test_http_endpoints_answering_407_under_many_names_stay_the_endpoints() -> None:
    """Once the proxy carried a delivery, http endpoints answering 407 with Proxy-Authenticate
    under any number of host names (free to whoever owns a domain) fail as themselves, and
    feed no CONNECT refusal's blame; they are the proxy's again only after the proxy itself
    asked for credentials on a CONNECT (an answer no endpoint can give)."""
    proxy = Proxy.parse("http://127.0.0.1:3128")
    assert http_answer(proxy, 200, challenge=False) is None
    for _ in range(2 * BROAD_REFUSALS):  # whatever names they answer under
        assert http_answer(proxy, 407, challenge=True) is None
    refusal = connect_refusal(proxy, 403, "Forbidden", challenge=False, host="denied.example")
    assert isinstance(refusal, TunnelRefused)  # one destination refused: the endpoint's
    asked = connect_refusal(proxy, 407, "", challenge=True, host="any.example")
    assert isinstance(asked, ProxyFailure)
    assert http_answer(proxy, 407, challenge=True) is not None
    assert http_answer(proxy, 200, challenge=False) is None
    assert http_answer(proxy, 407, challenge=True) is None


async def test_a_delivery_over_a_kept_tunnel_counts_as_let_through(
    make_sender: MakeSender, ca: Authority, https_target: Target
) -> None:
    """A delivery answered through a tunnel kept open from before is one the proxy let
    through: three endpoints the proxy's policy refuses (three names whose owner points them
    wherever the proxy will not go) are the proxy's only until then, not for as long as the
    other webhooks' traffic rides on kept connections and no new tunnel opens."""
    async with (
        ConnectProxy() as proxy,
        _sender(make_sender, proxy.url, ca) as sender,
    ):
        assert (await sender.attempt(_by_name(https_target), BODY, HEADERS)).error is None
        proxy.connect_status = 403
        for host in ("a.denied.example", "b.denied.example", "c.denied.example"):
            outcome = await _to(sender, host)
        assert outcome.blame == BLAME  # three destinations in a row: the proxy's, so far
        assert (await sender.attempt(_by_name(https_target), BODY, HEADERS)).error is None
        assert proxy.connects == 1  # the kept tunnel carried it
        for host in ("a.denied.example", "b.denied.example"):
            assert (await _to(sender, host)).blame is None

"""/metrics through prometheus_client (issue 16): escaping, OpenMetrics on request, process
metrics, and families that keep their names, types and help text in both formats."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.metrics import _HELP, Metrics
from tests.admin_api import start_api

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from dispatcher import Client
    from tests.target import Target

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
HOSTILE = 'say "hi"\\back\nslash'  # a quote, a backslash and a newline


def _every_family() -> Metrics:
    """A Metrics with a sample in every family of `_HELP`, the way the daemon fills them."""
    metrics = Metrics()
    for name in _HELP:
        if name.endswith("_total"):
            metrics.inc(name, 2, reason="breaker")
        elif name != "dispatcher_attempt_duration_seconds":
            metrics.set(name, 3, webhook_id="wh_1")
    for seconds in (0.004, 0.2, 1.0, 99.0):
        metrics.durations.observe(seconds)
    return metrics


def _by_name(families: list[Metric]) -> dict[str, Metric]:
    named = {f.name: f for f in families}
    assert len(named) == len(families), "a family is declared twice"
    return named


def _text(text: str) -> dict[str, Metric]:
    """The families of the classic text format, parsed by prometheus_client."""
    return _by_name(list(text_string_to_metric_families(text)))


def _openmetrics(text: str) -> dict[str, Metric]:
    """The families of an OpenMetrics text, parsed by prometheus_client's strict parser."""
    return _by_name(list(openmetrics_families(text)))  # type: ignore[no-untyped-call]


def test_label_values_are_escaped() -> None:
    """Quotes, backslashes and newlines in a label value are escaped in the text, and a parser
    reads the value back whole."""
    metrics = Metrics()
    metrics.set("dispatcher_alert_active", 1, name=HOSTILE)
    metrics.inc("dispatcher_deferred_total", reason=HOSTILE)
    text = metrics.render()
    assert 'name="say \\"hi\\"\\\\back\\nslash"' in text
    families = _text(text)
    [alert] = families["dispatcher_alert_active"].samples
    assert alert.labels == {"name": HOSTILE}
    [deferred] = families["dispatcher_deferred"].samples
    assert (deferred.name, deferred.labels, deferred.value) == (
        "dispatcher_deferred_total",
        {"reason": HOSTILE},
        1.0,
    )
    om = _openmetrics(metrics.exposition(OPENMETRICS)[0].decode())
    assert om["dispatcher_alert_active"].samples[0].labels == {"name": HOSTILE}


def test_the_text_format_parses_with_every_name_type_and_help() -> None:
    """The classic text parses with prometheus_client's parser; each family keeps its name, its
    type and its help text, and the histogram its buckets."""
    metrics = _every_family()
    text = metrics.render()
    families = _text(text)
    for name, help_text in _HELP.items():
        family = families[name.removesuffix("_total")]
        assert family.documentation == help_text
        if name.endswith("_total"):
            assert family.type == "counter"
            assert f"# TYPE {name} counter\n" in text
            assert [s.name for s in family.samples] == [name]
            assert family.samples[0].value == 2
        elif name == "dispatcher_attempt_duration_seconds":
            assert family.type == "histogram"
        else:
            assert family.type == "gauge"
            assert family.samples[0].labels == {"webhook_id": "wh_1"}
    hist = {
        (s.name, s.labels.get("le")): s.value
        for s in families["dispatcher_attempt_duration_seconds"].samples
    }
    assert hist["dispatcher_attempt_duration_seconds_bucket", "0.005"] == 1
    assert hist["dispatcher_attempt_duration_seconds_bucket", "1.0"] == 3
    assert hist["dispatcher_attempt_duration_seconds_bucket", "30.0"] == 3
    assert hist["dispatcher_attempt_duration_seconds_bucket", "+Inf"] == 4
    assert hist["dispatcher_attempt_duration_seconds_count", None] == 4
    assert hist["dispatcher_attempt_duration_seconds_sum", None] == pytest.approx(100.204)


def test_openmetrics_parses_with_every_family() -> None:
    """Asked for OpenMetrics, a Metrics answers in it: the strict parser accepts every family
    (the counters named without ``_total``, as OpenMetrics wants), and the text ends in # EOF."""
    body, content_type = _every_family().exposition(OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = _openmetrics(text)
    for name, help_text in _HELP.items():
        family = families[name.removesuffix("_total")]
        assert family.documentation == help_text
        assert family.type == (
            "counter"
            if name.endswith("_total")
            else "histogram"
            if name == "dispatcher_attempt_duration_seconds"
            else "gauge"
        )


@pytest.mark.skipif(sys.platform != "linux", reason="the process collector reads /proc")
def test_process_metrics_are_present() -> None:
    """Memory, CPU and open fds of the process, from prometheus_client's process collector."""
    families = _text(Metrics().render())
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert families["process_cpu_seconds"].type == "counter"
    assert families["process_open_fds"].samples[0].value > 0
    assert families["process_max_fds"].samples[0].value > 0


def test_each_metrics_has_its_own_registry() -> None:
    """Two Metrics in one process neither collide nor share counts."""
    first, second = Metrics(), Metrics()
    first.inc("dispatcher_promoted_total", 5)
    assert first.registry is not second.registry
    assert "dispatcher_promoted_total 5.0" in first.render()
    assert "dispatcher_promoted_total" not in second.render()


async def test_metrics_route_negotiates_the_format(client: Client, target: Target) -> None:
    """/metrics serves OpenMetrics when the scraper's Accept asks for it (what Prometheus sends
    by default), the text format otherwise; the queue gauges read at scrape time come in the
    same format, and both parse."""
    await client.create_webhook("acme", target.url())
    await client.publish("acme", "e", {})
    metrics = Metrics()
    metrics.inc("dispatcher_deliveries_total", outcome="delivered", status="2xx")
    _app, api = await start_api(client, metrics=metrics)
    try:
        prometheus_accept = (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )
        om = await api.call("GET", "/metrics", token=None, headers={"Accept": prometheus_accept})
        plain = await api.call("GET", "/metrics", token=None)
    finally:
        await api.close()
    assert om.status == plain.status == 200
    assert om.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    for families in (_openmetrics(om.text), _text(plain.text)):
        assert families["dispatcher_deliveries"].type == "counter"
        [up] = families["dispatcher_redis_up"].samples
        assert up.value == 1
        assert {s.labels["queue"] for s in families["dispatcher_queue_depth"].samples} == {
            "default"
        }
        assert "process_resident_memory_bytes" in families or sys.platform != "linux"
    assert om.text.count("# EOF") == 1

"""The panel's browser tests share one daemon (seeded once) and one headless Chromium; each
test gets the panel afresh in it, and fails if the page broke its CSP or threw."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
import redis

from tests.helpers import Daemon, daemon_env, free_port
from tests.ui import demo
from tests.ui.browser import Page, start

if TYPE_CHECKING:
    from collections.abc import Iterator

    from selenium.webdriver import Chrome


@dataclass(frozen=True, slots=True)
class Panel:
    """The seeded daemon: its admin API (``api``) and what ``demo.seed`` made (``seeded``)."""

    base_url: str
    token: str
    api: demo.Api
    target: demo.Target
    seeded: demo.Seeded
    daemon: Daemon


@pytest.fixture(scope="package")
def panel(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Panel]:
    """``dispatcher run`` with its admin API on a free port (2 attempts, short back-off), a
    local target, and the demo seeded into a prefix of its own."""
    prefix = f"ui{uuid.uuid4().hex[:8]}"
    token = secrets.token_hex(16)
    base_url = f"http://127.0.0.1:{free_port()}"
    env = daemon_env(
        redis_url,
        prefix,
        admin_listen=base_url.removeprefix("http://"),
        admin_token=token,
        delivery_max_attempts="2",
        delivery_backoff_base_s="0.05",
        delivery_backoff_cap_s="0.2",
    )
    target = demo.Target().start()
    daemon = Daemon(env, tmp_path_factory.mktemp("ui") / "daemon.log").start()
    api = demo.Api(base_url, token)
    try:
        demo.wait_until(
            lambda: api.ready() or daemon.process is None or daemon.process.poll() is not None,
            "the daemon's /readyz",
        )
        assert api.ready(), f"the daemon stopped:\n{daemon.log[-3000:]}"
        seeded = demo.seed(api, redis_url, prefix, target)
        yield Panel(base_url, token, api, target, seeded, daemon)
    finally:
        daemon.stop()
        target.stop()
        conn = redis.Redis.from_url(redis_url)
        try:
            keys = list(conn.scan_iter(f"{prefix}:*", count=1000))
            if keys:
                conn.delete(*keys)
        finally:
            conn.close()


@pytest.fixture(scope="package")
def browser() -> Iterator[Chrome]:
    """One headless Chromium for every browser test (it takes over a second to start)."""
    driver = start()
    yield driver
    driver.quit()


@pytest.fixture
def page(panel: Panel, browser: Chrome) -> Iterator[Page]:
    """The panel afresh (logged out); after the test, no CSP violation and no uncaught error
    may be in the browser's log (a refused request, such as an expected 401, is no failure)."""
    page = Page(browser, panel.base_url, panel.token)
    page.problems()  # what an earlier test left was its own
    page.open()
    yield page
    problems = page.problems()
    assert not problems, f"the browser logged: {problems}"

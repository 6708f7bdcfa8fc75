"""The operator panel in a real headless Chromium, against a real daemon and Redis.

The tests share one seeded daemon (conftest ``panel``), so each works on objects of its own
and compares what the page shows with live API answers. Shown values are read from their
``data-value`` attributes (the raw API value), never from formatted text.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.ui.demo import HOSTILE, RETENTION_S, SEEDED_COUNTS

#: One worker runs the panel tests (under make test's xdist): one daemon and one browser.
pytestmark = pytest.mark.xdist_group("panel")

if TYPE_CHECKING:
    from selenium.webdriver.remote.webelement import WebElement

    from tests.ui.browser import Page
    from tests.ui.conftest import Panel

#: The UI's bytes as sent (compressed), everything it loads included: the issue's budget.
PAGE_BUDGET = 150_000
TILES = ("queued", "active", "scheduled", "failed_recent", "dlq_size", "avg_processing_ms")
CHARTS = ("delivered", "failed", "dead")
JOB_FIELDS = (
    "state",
    "created_at",
    "processed_at",
    "finished_at",
    "next_attempt_at",
    "waiting_for",
    "breaker",
    "last_error",
    "dead_reason",
)
_UI_FILES = """
return performance.getEntriesByType("navigation")
  .concat(performance.getEntriesByType("resource"))
  .filter((entry) => new URL(entry.name).pathname.startsWith("/ui"))
  .map((entry) => [new URL(entry.name).pathname, entry.encodedBodySize]);
"""


def same(shown: str | None, expected: Any) -> bool:
    """Whether a ``data-value`` is the API value ``expected`` ("" for null; numbers compared
    as numbers, since JavaScript writes 5.0 as "5")."""
    if shown is None:
        return False
    if expected is None:
        return shown == ""
    if isinstance(expected, bool):
        return shown == ("true" if expected else "false")
    if isinstance(expected, int | float):
        try:
            return float(shown) == float(expected)
        except ValueError:
            return False
    return shown == str(expected)


def shown_value(page: Page, css: str) -> str | None:
    """The ``data-value`` of ``css``, on the element itself or the one value inside it."""
    found = page.finds(f"{css}[data-value], {css} [data-value]")
    return found[0].get_attribute("data-value") if found else None


def row_ids(page: Page) -> list[str]:
    return [row.get_attribute("data-job") or "" for row in page.finds("main#view tr[data-job]")]


def said(page: Page, *wordings: str) -> bool:
    """Whether the toast says one of ``wordings`` (case and a colon aside)."""
    text = page.find("#toast[role=status]").text.lower().replace(":", "")
    return any(re.search(rf"(^|\W){w}($|\W)", text) for w in wordings)


def hour_of_bars(page: Page, chart: str) -> list[WebElement] | None:
    """The bars of ``chart``, once it has one per minute of the hour."""
    bars = page.finds(f'svg[data-chart="{chart}"] rect[data-minute]')
    return bars if len(bars) == 60 else None


def minute_ms(rfc3339: str | None) -> int | None:
    return int(datetime.fromisoformat(rfc3339).timestamp() * 1000) if rfc3339 else None


def test_the_token_logs_in_and_stays_in_session_storage_only(page: Page, panel: Panel) -> None:
    """The token typed into the login opens the dashboard and is kept in the tab's
    sessionStorage only (no cookie), and the whole UI weighs under 150 KB as sent."""
    page.driver.execute_cdp_cmd("Network.clearBrowserCache", {})
    page.driver.refresh()  # every file sent whole, as to a first visitor (not a 304)
    token = page.wait_for("form#login input#token", what="the login form")
    assert page.driver.switch_to.active_element == token, "the token field has the focus"
    token.send_keys(panel.token, Keys.ENTER)
    page.wait_ready("dashboard")
    assert page.stored_token() == panel.token
    assert page.driver.get_cookies() == []
    for route, view in (("#/webhooks", "webhooks"), ("#/dlq", "dlq"), ("#/jobs", "job")):
        page.go(route, view)  # every view's module loaded, so counted
    files = dict(page.driver.execute_script(_UI_FILES))
    assert {"/ui/", "/ui/app.js", "/ui/dashboard.js"} <= files.keys()
    assert all(files.values()), f"each file's bytes counted: {files}"
    assert sum(files.values()) < PAGE_BUDGET, files


def test_the_tiles_and_charts_show_what_v1_status_and_v1_stats_answer(
    page: Page, panel: Panel
) -> None:
    """Every tile shows its /v1/status value, each chart has the hour's 60 minutes with the
    seeded minute's counts, and the workers table lists the daemon's worker."""
    page.login()

    last: dict[str, Any] = {}

    def tiles_match() -> dict[str, Any] | None:
        status = panel.api("GET", "/v1/status")
        last["api"] = {name: status[name] for name in TILES}
        last["api"]["failed_recent"] = status["failed_recent"]["count"]
        last["shown"] = {name: shown_value(page, f'[data-tile="{name}"]') for name in TILES}
        matched = all(same(last["shown"][n], last["api"][n]) for n in TILES)
        return status if matched else None

    status = page.wait(tiles_match, lambda: f"tiles equal to /v1/status (last: {last})")
    seeded = panel.seeded.seeded_minute_ms
    for chart in CHARTS:
        bars = page.wait(partial(hour_of_bars, page, chart), f"60 bars in the {chart} chart")
        [bar] = [b for b in bars if minute_ms(b.get_attribute("data-minute")) == seeded]
        assert same(bar.get_attribute("data-value"), SEEDED_COUNTS[chart]), chart
    for worker in status["workers"]:
        assert page.finds(f'#workers tr[data-worker="{worker["id"]}"]'), worker["id"]


def test_a_queue_is_paused_and_resumed_from_the_queues_table(page: Page, panel: Panel) -> None:
    """Pause (by keyboard) and Resume (by click) on the default queue's row pause and resume
    it for the daemon, and the row shows which it is."""
    row = 'tr[data-queue="default"]'
    page.login()
    try:
        pause = page.wait_for(f'{row} button[data-action="pause"]')
        page.driver.execute_script("arguments[0].focus()", pause)
        assert page.driver.switch_to.active_element == pause
        ActionChains(page.driver).send_keys(Keys.ENTER).perform()
        page.wait(lambda: shown_value(page, f'{row} [data-field="paused"]') == "true", "paused")
        page.wait(lambda: "default" in panel.api("GET", "/v1/status")["paused"], "paused in API")
        page.wait_for(f'{row} button[data-action="resume"]').click()
        page.wait(lambda: shown_value(page, f'{row} [data-field="paused"]') == "false", "resumed")
        page.wait(lambda: panel.api("GET", "/v1/status")["paused"] == [], "resumed in the API")
    finally:
        panel.api("POST", "/v1/queues/default/resume")


def test_a_dead_job_is_inspected_and_replayed_then_old_entries_purged_after_confirmation(
    page: Page, panel: Panel
) -> None:
    """The DLQ pages 50 at a time; a dead job's payload and hostile last error are shown as
    text; a selected job is replayed and delivered; a purge says what it would delete and
    deletes the entries older than the retention only once confirmed."""
    page.login()
    page.go("#/dlq", "dlq")
    first = page.wait(lambda: set(row_ids(page)) if len(row_ids(page)) == 50 else None, "50 rows")

    def next_page() -> set[str] | None:
        ids = set(row_ids(page))
        return ids if ids and not ids & first else None

    page.find("button#dlq-next").click()
    page.wait(next_page, "the next page, other jobs")
    page.find("button#dlq-prev").click()
    page.wait(lambda: set(row_ids(page)) == first, "page 1 again")

    flaky = panel.seeded.flaky_jobs
    webhook = page.find('form#dlq-filter [name="webhook_id"]')
    webhook.send_keys(panel.seeded.hooks["flaky"]["id"], Keys.ENTER)
    page.wait(lambda: set(row_ids(page)) == set(flaky), "the /flaky webhook's dead jobs")
    job = flaky[0]
    row = f'main#view tr[data-job="{job}"]'
    page.find(f"{row} a[href], {row} button").click()
    page.wait_for("section#inspect pre#payload", what="the inspector")
    shown = page.wait(partial(page.text, "section#inspect pre#payload"), "the payload")
    dead = panel.api("GET", f"/v1/dlq/{job}")
    assert json.loads(shown) == dead["payload"]
    assert "\n  " in shown, "the payload is indented"
    assert page.find("section#inspect #last-error").text == dead["last_error"]
    assert HOSTILE in dead["last_error"]
    assert page.finds("section#inspect img") == [], "the last error was not parsed as HTML"

    panel.target.heal()
    tick = page.wait_for(f'{row} input[type="checkbox"]')
    tick.send_keys(Keys.SPACE)
    assert tick.is_selected()
    page.find("button#replay-selected").click()
    page.wait(lambda: said(page, "1 replayed", "replayed 1"), "the toast: 1 replayed")
    page.wait(lambda: panel.api("GET", f"/v1/jobs/{job}")["state"] == "delivered", "delivered")

    size = panel.api("GET", "/v1/status")["dlq_size"]
    facts = _purge_dialog(page, panel)
    assert (facts["would_purge"], facts["retention_s"]) == (3, RETENTION_S)
    assert page.driver.switch_to.active_element == page.find("button#purge-cancel")
    page.find("button#purge-cancel").click()
    page.wait(lambda: not page.finds("dialog#purge-dialog[open]"), "the dialog closed")
    assert panel.api("GET", "/v1/status")["dlq_size"] == size

    assert _purge_dialog(page, panel)["would_purge"] == 3, "Cancel deleted nothing"
    page.find("button#purge-confirm").click()
    page.wait(lambda: said(page, "3 purged", "purged 3"), "the toast: 3 purged")
    assert panel.api("GET", "/v1/status")["dlq_size"] == size - 3
    status, after = panel.api.call("DELETE", "/v1/dlq?older_than_s=0")
    assert (status, after["would_purge"]) == (409, 0)
    assert after["within_retention"] == facts["within_retention"]


def _purge_dialog(page: Page, panel: Panel) -> dict[str, Any]:
    """Open the purge dialog; the facts it shows, checked against the API's refusal."""
    page.find("button#purge").click()
    dialog = "dialog#purge-dialog[open]"
    page.wait_for(dialog)
    page.wait(lambda: shown_value(page, f'{dialog} [data-field="would_purge"]'), "would_purge")
    older_than = page.find(f"{dialog} input#older-than").get_attribute("value") or "0"
    status, facts = panel.api.call("DELETE", f"/v1/dlq?older_than_s={older_than}")
    assert status == 409, facts
    for name in ("would_purge", "retention_s", "within_retention"):
        assert same(shown_value(page, f'{dialog} [data-field="{name}"]'), facts[name]), name
    return dict(facts)


def test_a_job_shows_its_attempt_timeline_and_next_retry(page: Page, panel: Panel) -> None:
    """A job looked up by id shows its state, times, dead reason and each attempt's status,
    duration and error; a scheduled job shows when it is due."""
    page.login()
    job = panel.seeded.failed_jobs[0]
    page.go("#/jobs", "job")
    page.wait_for("input#job-id").send_keys(job, Keys.ENTER)
    field = 'main#view [data-field="{}"]'.format
    page.wait(lambda: shown_value(page, field("state")) == "dead", "the dead job")
    expected = panel.api("GET", f"/v1/jobs/{job}")
    assert expected["dead_reason"] == "max_attempts"
    for name in JOB_FIELDS:
        assert same(shown_value(page, field(name)), expected[name]), name
    attempts = page.finds("ol#attempts li[data-status]")
    assert len(attempts) == len(expected["attempts"]) == 2
    for item, attempt in zip(attempts, expected["attempts"], strict=True):
        assert attempt["status"] == 500
        assert same(item.get_attribute("data-status"), 500)
        assert same(item.get_attribute("data-duration-ms"), attempt["duration_ms"])
        assert "boom" in item.find_element(By.CSS_SELECTOR, ".error").text

    scheduled = panel.seeded.scheduled_job
    page.go(f"#/jobs/{scheduled}", "job")
    page.wait(lambda: shown_value(page, field("state")) == "scheduled", "the scheduled job")
    expected = panel.api("GET", f"/v1/jobs/{scheduled}")
    assert expected["next_attempt_at"] is not None
    assert same(shown_value(page, field("next_attempt_at")), expected["next_attempt_at"])


def test_a_wrong_token_goes_back_to_the_login(page: Page, panel: Panel) -> None:
    """A refused token is never stored and the login says why; a token refused later (401)
    is removed and the login comes back."""
    page.login("not-" + panel.token)
    page.wait(lambda: "401" in page.find("#login-error").text, "the 401 named")
    assert page.find("form#login").is_displayed()
    assert page.stored_token() is None

    page.login()
    page.driver.execute_script("window.sessionStorage.setItem('dispatcher.token', 'wrong')")
    page.find("button#refresh").click()
    page.wait_for("form#login input#token", what="the login again")
    page.wait(lambda: page.stored_token() is None, "the refused token removed")

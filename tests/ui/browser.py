"""Headless Chromium driven by Selenium, and ``Page``: the panel as its tests and
``scripts/screenshots`` see it (log in, follow a hash route, wait for a view's data).

Chromium and chromedriver come from the Debian packages (``make test`` installs them). The
driver's path is given, so Selenium Manager never runs (it would try to download one).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

if TYPE_CHECKING:
    from collections.abc import Callable

    from selenium.webdriver.remote.webelement import WebElement

#: Where the panel keeps the admin token (per tab).
TOKEN_KEY = "dispatcher.token"  # noqa: S105 - the storage key's name, not a token
#: How long a view may take to show its data.
WAIT_S = 10.0
_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests run as root in CI
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)
#: Browser log lines that fail a test: the CSP refused something, or a script threw.
PROBLEMS = ("Content Security Policy", "Uncaught")


def _binary(env: str, name: str) -> str:
    path = os.environ.get(env) or shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).is_file():
        raise RuntimeError(
            f"{name} is not installed: run make test (it installs chromium chromium-driver), "
            f"or set {env} to its path"
        )
    return path


def start(width: int = 1280, height: int = 900) -> webdriver.Chrome:
    """A headless Chromium of ``width`` x ``height`` whose console the test can read."""
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("CHROMIUM", "chromium")
    for flag in _FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(_binary("CHROMEDRIVER", "chromedriver"))
    return webdriver.Chrome(service=service, options=options)


class Page:
    """The panel at ``base_url`` + ``/ui/`` in ``driver``."""

    def __init__(self, driver: webdriver.Chrome, base_url: str, token: str) -> None:
        self.driver = driver
        self.base_url = base_url
        self.token = token

    # --- navigation -----------------------------------------------------------------------

    def open(self) -> None:
        """The panel afresh, logged out: nothing of an earlier test's tab is kept."""
        self.driver.get(self.base_url + "/ui/")
        self.driver.execute_script("window.sessionStorage.clear()")
        self.driver.refresh()

    def login(self, token: str | None = None) -> None:
        """Type the token into the login form and send it; wait for the dashboard's data."""
        field = self.wait_for("form#login input#token", what="the login form")
        field.clear()
        field.send_keys(self.token if token is None else token, Keys.ENTER)
        if token is None:
            self.wait_ready("dashboard")

    def go(self, route: str, view: str) -> WebElement:
        """Follow the hash ``route`` (``#/dlq?webhook_id=...``) and wait for ``view``'s data."""
        self.driver.execute_script("window.location.hash = arguments[0]", route)
        return self.wait_ready(view)

    # --- waiting --------------------------------------------------------------------------

    def wait(
        self, check: Callable[[], Any], what: str | Callable[[], str], timeout_s: float = WAIT_S
    ) -> Any:
        """Poll ``check`` until it returns something truthy (that value); elements that were
        replaced by a re-render while being read count as not yet. ``what`` names the wait
        in a failure's message (a callable: a message made then, say with the last values)."""

        def once(_driver: Any) -> Any:
            try:
                return check()
            except StaleElementReferenceException:
                return False

        try:
            return WebDriverWait(self.driver, timeout_s, poll_frequency=0.05).until(once)
        except TimeoutException:
            said = what if isinstance(what, str) else what()
            raise AssertionError(f"{said} not seen within {timeout_s} s; {self.where()}") from None

    def wait_for(self, css: str, *, what: str = "") -> WebElement:
        """The displayed element of ``css``, once there is one."""

        def shown() -> WebElement | None:
            found = [e for e in self.finds(css) if e.is_displayed()]
            return found[0] if found else None

        return cast("WebElement", self.wait(shown, what or css))

    def wait_ready(self, view: str) -> WebElement:
        """``main#view`` once ``view`` has loaded its data (``data-ready="true"``)."""
        css = f'main#view[data-view="{view}"][data-ready="true"]'
        return self.wait_for(css, what=f"the {view} view with its data")

    def where(self) -> str:
        """Where the browser is and what it shows, for a failure's message."""
        text = self.driver.execute_script(
            "return document.body ? document.body.innerText.slice(0, 300) : ''"
        )
        return f"at {self.driver.current_url!r}, showing {text!r}"

    # --- reading --------------------------------------------------------------------------

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def finds(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        """The text an element of ``css`` shows, stripped."""
        return str(self.find(css).text).strip()

    def value(self, css: str) -> str | None:
        """The raw API value an element of ``css`` carries (its ``data-value``)."""
        return self.find(css).get_attribute("data-value")

    def stored_token(self) -> str | None:
        return cast(
            "str | None",
            self.driver.execute_script(
                "return window.sessionStorage.getItem(arguments[0])", TOKEN_KEY
            ),
        )

    def problems(self) -> list[str]:
        """The browser log since the last call, kept to CSP violations and uncaught errors."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        return [e["message"] for e in entries if any(p in e["message"] for p in PROBLEMS)]

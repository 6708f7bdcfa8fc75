"""The operator panel's files as the admin app serves them, without a browser: the security
headers, caching and compression, the routes around /ui/, the token guard left whole, and
what the page's source may not contain (inline code, HTML built from strings)."""

from __future__ import annotations

import gzip
import re
from importlib import resources
from typing import TYPE_CHECKING

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from dispatcher import Client
from dispatcher.admin import panel
from dispatcher.admin.app import Deps, create_app
from dispatcher.metrics import Metrics
from tests.admin_api import TOKEN
from tests.spec_check import check_answer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiohttp import ClientResponse, web

    UiClient = TestClient[web.Request, web.Application]

UI = resources.files("dispatcher.admin") / "ui"
FILES = sorted(item.name for item in UI.iterdir() if item.is_file())
SECURITY = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'; object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
IDENTITY = {"Accept-Encoding": "identity"}
GZIP = {"Accept-Encoding": "gzip, deflate"}


@pytest.fixture
async def ui() -> AsyncIterator[UiClient]:
    # Nothing here reaches Redis: the panel's files are in memory, and /v1 answers 401 first.
    client = Client.from_url("redis://127.0.0.1:1/0")
    app = create_app(Deps(client, Metrics(), TOKEN))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    await client.close()


async def _get(
    ui: UiClient, raw_path: str, headers: dict[str, str] | None = None
) -> tuple[ClientResponse, bytes]:
    """GET ``raw_path`` exactly as written (no dot-segment or slash clean-up by the client),
    with no automatic decompression; the answer is checked against openapi.json."""
    url = URL(f"http://{ui.host}:{ui.port}{raw_path}", encoded=True)
    async with ui.session.get(
        url, headers=headers or IDENTITY, allow_redirects=False, auto_decompress=False
    ) as response:
        body = await response.read()
    text = body.decode() if response.headers.get("Content-Encoding") != "gzip" else "(gzip)"
    parsed = orjson.loads(body) if response.content_type == "application/json" else None
    check_answer("GET", url.path, response.status, response.content_type, text, parsed)
    return response, body


@pytest.mark.parametrize(
    ("path", "name", "content_type"),
    [
        ("/ui/", "index.html", "text/html; charset=utf-8"),
        ("/ui/app.js", "app.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "app.css", "text/css; charset=utf-8"),
        ("/ui/favicon.svg", "favicon.svg", "image/svg+xml; charset=utf-8"),
    ],
)
async def test_each_file_is_served_with_its_type_and_the_security_headers(
    ui: UiClient, path: str, name: str, content_type: str
) -> None:
    """A panel file comes as its bytes, with its type, an ETag and every security header."""
    response, body = await _get(ui, path)
    assert response.status == 200
    assert body == (UI / name).read_bytes()
    assert response.headers["Content-Type"] == content_type
    assert "Content-Encoding" not in response.headers
    assert re.fullmatch(r'"[0-9a-f]{16}"', response.headers["ETag"])
    assert response.headers["Vary"] == "Accept-Encoding"
    assert {key: response.headers.get(key) for key in SECURITY} == SECURITY


async def test_a_client_that_takes_gzip_gets_the_same_bytes_compressed(
    ui: UiClient,
) -> None:
    """With gzip accepted, the answer is the file gzipped (byte-identical on every start, so
    its ETag holds), under an ETag of its own; a q=0 refusal gets the plain file."""
    response, body = await _get(ui, "/ui/app.js", GZIP)
    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == (UI / "app.js").read_bytes()
    assert body == gzip.compress((UI / "app.js").read_bytes(), 9, mtime=0)
    plain, _ = await _get(ui, "/ui/app.js")
    assert response.headers["ETag"] != plain.headers["ETag"]
    assert {key: response.headers.get(key) for key in SECURITY} == SECURITY
    refused, body = await _get(ui, "/ui/app.js", {"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in refused.headers
    assert body == (UI / "app.js").read_bytes()


@pytest.mark.parametrize("headers", [IDENTITY, GZIP], ids=["identity", "gzip"])
async def test_a_revalidation_with_the_etag_is_answered_304_without_a_body(
    ui: UiClient, headers: dict[str, str]
) -> None:
    """A browser that sends back the ETag it holds gets a bodiless 304 with the same headers;
    an old ETag gets the file again."""
    first, _ = await _get(ui, "/ui/", headers)
    etag = first.headers["ETag"]
    again, body = await _get(ui, "/ui/", {**headers, "If-None-Match": f'"0000", W/{etag}'})
    assert again.status == 304
    assert body == b""
    assert again.headers["ETag"] == etag
    assert {key: again.headers.get(key) for key in SECURITY} == SECURITY
    stale, body = await _get(ui, "/ui/", {**headers, "If-None-Match": '"0123456789abcdef"'})
    assert stale.status == 200
    assert body


async def test_ui_without_its_slash_redirects_to_it(ui: UiClient) -> None:
    """/ui answers a permanent redirect that keeps the method and lands on /ui/, relative so
    that it also works under a reverse proxy's prefix."""
    response, body = await _get(ui, "/ui?x=1")
    assert response.status == 308
    assert body == b""
    assert response.headers["Location"] == "ui/"
    assert str(URL("http://h/ui").join(URL(response.headers["Location"]))) == "http://h/ui/"
    assert str(URL("http://h/p/ui").join(URL(response.headers["Location"]))) == "http://h/p/ui/"
    assert {key: response.headers.get(key) for key in SECURITY} == SECURITY


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nope.js",
        "/ui/..%2fopenapi.json",
        "/ui/%2e%2e%2fapp.py",
        "/ui/..%2f..%2fapp.py",
        "/ui/.index.html",
        "/ui/index.html%00",
        "/ui/app.js/",
        "/ui/sub/app.js",
    ],
)
async def test_a_name_that_is_not_a_panel_file_is_404(ui: UiClient, path: str) -> None:
    """Only the panel's own files exist under /ui/: unknown names and traversal attempts are
    a 404 (never a file from elsewhere in the package)."""
    response, body = await _get(ui, path)
    assert response.status == 404
    assert orjson.loads(body)["error"]["code"] == "not_found"


async def test_the_panel_needs_no_token_while_v1_still_does(ui: UiClient) -> None:
    """/ui/ and its files load with no token; /v1 stays 401 without one, however the path is
    spelled, and no /ui/ path reaches /v1."""
    assert (await _get(ui, "/ui/"))[0].status == 200
    assert (await _get(ui, "/ui/api.js"))[0].status == 200
    for guarded in ["/v1/status", "/v1//status", "/%761/status", "/v1/./status"]:
        response, _ = await _get(ui, guarded)
        assert response.status == 401, guarded
    for around in ["/ui/../v1/status", "/ui/%2e%2e/v1/status", "/ui/..%2fv1/status"]:
        response, _ = await _get(ui, around)
        assert response.status == 404, around
    authorized = {**IDENTITY, "Authorization": f"Bearer {TOKEN}"}
    assert (await _get(ui, "/ui/", authorized))[0].status == 200


def test_index_html_has_no_inline_script_style_or_handler() -> None:
    """The page runs under ``default-src 'self'``: every script and style comes from a file."""
    html = (UI / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.DOTALL)
    assert scripts
    assert all('src="' in attrs and not body.strip() for attrs, body in scripts)
    assert "<style" not in html
    assert not re.search(r"\sstyle\s*=", html)
    assert not re.search(r"\son[a-z]+\s*=", html)
    assert "javascript:" not in html


@pytest.mark.parametrize("name", [name for name in FILES if name.endswith(".js")])
def test_no_script_builds_html_from_strings(name: str) -> None:
    """Values reach the page as text nodes only: no script uses innerHTML, outerHTML,
    insertAdjacentHTML or document.write, which would run markup from a target's error or a
    payload (and could read the token)."""
    source = (UI / name).read_text()
    for banned in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("]:
        assert banned not in source, f"{name} uses {banned}"


def test_every_file_is_served_and_the_whole_panel_stays_under_150_kb_gzipped() -> None:
    """Every file in ui/ has a served type (nothing shipped is unreachable), and the whole
    panel, gzipped as it is sent, is under the issue's 150 KB."""
    assets = panel.load()
    assert sorted(assets) == FILES
    assert sum(len(asset.gzipped) for asset in assets.values()) < 150_000


def test_the_pagers_next_button_takes_its_cursor_once() -> None:
    """A double click on Next moves one page, not two pushes of the same cursor (which showed
    page 2 labelled "Page 3", and made Previous reload the page shown): the handler empties
    the next cursor it takes, so a second click before the page arrives does nothing."""
    source = (UI / "webhooks.js").read_text()
    handler = re.search(
        r"this\.next\.addEventListener\(\"click\", scr\.act\(\(\) => \{(.*?)\}\)\);",
        source,
        re.DOTALL,
    )
    assert handler is not None, "the Pager's Next handler moved: update this test"
    body = handler.group(1)
    assert re.search(r"this\.cursor = this\.after;\s*this\.after = null;", body), body


def test_a_malformed_escape_in_the_address_does_not_stop_the_router() -> None:
    """A link such as ``#/jobs/%E0%A4%A`` must still route: the router decodes the id with a
    fallback, since a bare decodeURIComponent throws there, after the view shown was
    stopped and before the new one starts, leaving a page that no longer updates."""
    source = (UI / "app.js").read_text()
    calls = [m.start() for m in re.finditer(r"decodeURIComponent\(", source)]
    assert calls
    for at in calls:
        before = source[max(0, at - 80) : at]
        assert re.search(r"try\s*\{[^}]*$", before), source[at - 80 : at + 40]


def test_a_read_that_never_answers_ends_so_polling_goes_on() -> None:
    """The dashboard waits for each call before the next; a GET that hangs (a stuck proxy, a
    half-open connection) must end with an error, or the tiles silently stop refreshing for
    good: api.js gives every GET a timeout (fetch has none of its own)."""
    source = (UI / "api.js").read_text()
    assert re.search(r"AbortSignal\.timeout\(", source), "api.js sets no timeout on its calls"


def test_following_an_operation_survives_a_failed_read() -> None:
    """A replay or purge running in the background is followed until it ends: one failed read
    of it (a Redis blip, a timeout) is retried, where it used to end the polling and leave
    the page saying "running" for good."""
    source = (UI / "dlq.js").read_text()
    assert "follow(await call(" not in source
    assert re.search(r"async function reread\(op\)", source)


def test_a_route_with_a_trailing_slash_and_no_id_is_the_list() -> None:
    """``#/webhooks/`` (a hand-typed or trimmed link) is the webhooks list: the router takes
    an id only when one follows the slash. It routed to the detail view with an empty id,
    whose list then never drew (data-view "webhook" is not the list's "webhooks")."""
    source = (UI / "app.js").read_text()
    assert re.search(r"if \(slash >= 0 && slash < path\.length - 1\)", source)
    assert re.search(r'path\.replace\(/\\/\$/, ""\)', source)

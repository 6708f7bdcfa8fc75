"""The operator panel's files at ``/ui/``: read once from package data, served from memory.

The panel is a static page and a client of ``/v1`` like any other: it sends the bearer token
itself, so these routes need none. Each file is read once per process, gzipped once
(``mtime=0``, so the bytes and their ETag are the same every start) and answered from a dict:
a name not in the dict is a 404, whatever dots or slashes it holds, and the files work from a
wheel or a zip as well as from a checkout. The security headers are set here, on every /ui
answer, rather than in a middleware the /v1 hot path would pay for.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Final

from aiohttp import hdrs, web

from dispatcher.admin.shared import error_response

#: What a browser may do with the panel: its own files only, no inline script or style, no
#: form posts, no framing, no plugins.
CSP: Final = (
    "default-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'; object-src 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidated on every load (a 304 costs little), so an upgraded daemon never runs old JS.
    "Cache-Control": "no-cache",
}
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # module scripts need a JavaScript type
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml; charset=utf-8",
}
INDEX: Final = "index.html"


@dataclass(frozen=True, slots=True)
class Asset:
    """One file of the panel, in both encodings, each with its own strong ETag."""

    body: bytes
    gzipped: bytes
    etag: str
    gzip_etag: str
    content_type: str

    @classmethod
    def of(cls, name: str, body: bytes) -> Asset:
        digest = hashlib.sha256(body).hexdigest()[:16]
        return cls(
            body=body,
            gzipped=gzip.compress(body, 9, mtime=0),
            etag=f'"{digest}"',
            gzip_etag=f'"{digest}-gz"',
            content_type=CONTENT_TYPES[posixpath.splitext(name)[1]],
        )


PANEL: Final = web.AppKey("panel", Mapping[str, Asset])


@functools.cache
def load() -> Mapping[str, Asset]:
    """Every file of ``dispatcher/admin/ui`` (a flat folder) whose type the table knows, read
    and gzipped once per process (package data does not change under a running process)."""
    folder = resources.files("dispatcher.admin") / "ui"
    return MappingProxyType(
        {
            item.name: Asset.of(item.name, item.read_bytes())
            for item in folder.iterdir()
            if item.is_file() and posixpath.splitext(item.name)[1] in CONTENT_TYPES
        }
    )


def install(app: web.Application) -> None:
    """Load the panel's files into ``app``; ``app.py`` routes ``/ui``, ``/ui/``, ``/ui/{name}``."""
    app[PANEL] = load()


async def redirect(_request: web.Request) -> web.Response:
    """``/ui`` → ``/ui/``, so the page's relative URLs resolve under it. The Location is
    relative, so the redirect also holds behind a proxy that serves the panel under a prefix."""
    return web.Response(status=308, headers={**SECURITY_HEADERS, hdrs.LOCATION: "ui/"})


async def asset(request: web.Request) -> web.Response:
    """A file of the panel (``index.html`` for ``/ui/``): gzip when the client takes it, 304
    when its ``If-None-Match`` names what it would get."""
    name = request.match_info.get("name", INDEX)
    found = request.app[PANEL].get(name)
    if found is None:
        response = error_response(404, "not_found", f"the panel has no file {name!r}")
        response.headers.update(SECURITY_HEADERS)
        return response
    zipped = _takes_gzip(request.headers.get(hdrs.ACCEPT_ENCODING, ""))
    etag = found.gzip_etag if zipped else found.etag
    headers = {**SECURITY_HEADERS, hdrs.ETAG: etag, hdrs.VARY: hdrs.ACCEPT_ENCODING}
    if _matches(request.headers.get(hdrs.IF_NONE_MATCH, ""), etag):
        return web.Response(status=304, headers=headers)
    headers[hdrs.CONTENT_TYPE] = found.content_type
    if zipped:
        headers[hdrs.CONTENT_ENCODING] = "gzip"
        return web.Response(body=found.gzipped, headers=headers)
    return web.Response(body=found.body, headers=headers)


def _takes_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` lists ``gzip`` (or ``*``) with a q-value above 0."""
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if coding.lower() not in {"gzip", "*"}:
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110's weak comparison of ``If-None-Match`` (a list, or ``*``) with ``etag``."""
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags

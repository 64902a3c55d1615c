"""The web console: the static files of `switchd/console/`, served at `/console/`.

The files need no token (the API calls they make do). Every response the console's
routes give carries a strict Content-Security-Policy: scripts, styles and API calls from
this origin only, no inline code, no framing. Files are read once when the app is built.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from switchd.errors import ApiError

PREFIX = "/console"
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
CACHE_CONTROL = "no-cache"  # revalidate (cheap, by ETag): never stale after an upgrade


@dataclass(frozen=True)
class Asset:
    """One console file in memory."""

    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The console's files by name."""
    assets = {}
    for item in (resources.files("switchd") / "console").iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in CONTENT_TYPES:
            body = item.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            assets[item.name] = Asset(body, CONTENT_TYPES[suffix], etag)
    return assets


def add_routes(app: web.Application) -> None:
    """Serve the console on `app`: `/console` redirects to `/console/` (index.html)."""
    assets = load_assets()

    async def serve(request: web.Request) -> web.Response:
        name = request.match_info.get("name", "index.html")
        asset = assets.get(name)
        if asset is None:
            missing = ApiError(404, "not_found", f"no console file {name!r}")
            return web.json_response(missing.body(), status=404, headers=SECURITY_HEADERS)
        headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": CACHE_CONTROL}
        if asset.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers
        )

    async def redirect(request: web.Request) -> web.Response:
        # relative: right behind a path-prefixing proxy
        raise web.HTTPFound("console/", headers=SECURITY_HEADERS)

    app.router.add_get(PREFIX, redirect)
    app.router.add_get(PREFIX + "/", serve)
    app.router.add_get(PREFIX + "/{name}", serve)

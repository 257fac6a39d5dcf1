"""HTML answers of the gateway: the web file manager (one page, one script, one stylesheet in
`chunkfs/gateway/web/`: no build step, nothing from another origin; the script talks to the
REST API like any client), and small server-rendered pages (share links, their errors). Every one carries the same security headers:
a Content-Security-Policy that allows only this origin's script and style (no inline script, so
an injected tag cannot run), no framing, no MIME sniffing, no referrer (a share link's token
must not leak to another site). Text put into a page is escaped (`html.escape`) where it is
put, by `page` and its callers' `escape` calls."""

from __future__ import annotations

import html
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".html": "text/html; charset=utf-8"}
STATIC_FILES = ("index.html", "app.js", "app.css")


def escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def page(title: str, body_html: str, status: int = 200) -> HTMLResponse:
    """A small page around `body_html` (already escaped by the caller); `title` is escaped here."""
    document = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} - chunkfs'
                f'</title><meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<link rel="stylesheet" href="/static/app.css"></head><body class="plain">'
                f'<main class="card"><h1>{escape(title)}</h1>{body_html}</main></body></html>')
    return HTMLResponse(document, status_code=status, headers=SECURITY_HEADERS)


def _static(name: str) -> bytes:
    return (resources.files("chunkfs.gateway") / "web" / name).read_bytes()


async def index(request: Request) -> Response:
    return Response(_static("index.html"), media_type=STATIC_TYPES[".html"], headers=SECURITY_HEADERS)


async def static_file(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC_FILES:  # a fixed list: no path from the URL reaches the disk
        return page("Not found", "<p>There is no such file.</p>", 404)
    return Response(_static(name), media_type=STATIC_TYPES[name[name.rindex("."):]],
                    headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

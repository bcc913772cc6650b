"""The browser page at ``GET /`` and its static files, with the security headers every response gets.

The page is plain HTML + one JavaScript file + one stylesheet from ``service/http/static/`` (package data),
so it works offline. It holds no data: everything it shows comes from the JSON API with the user's
bearer token, which is why ``/`` and ``/static/*`` are the only routes besides ``/healthz`` that need
no token (a browser cannot send one before the page that asks for it has loaded).

Safety: the Content-Security-Policy allows scripts, styles and connections from this origin only, no
inline script or style, images from here and from ``blob:`` (thumbnails are fetched with the token
and shown as object URLs), and requires Trusted Types, so an ``innerHTML`` assignment of a string
throws instead of parsing a server string as HTML. The script renders every server string with
``textContent``.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask, Response

STATIC_DIR = Path(__file__).with_name("static")
# name -> content type: the only files served (nothing is looked up from the request path)
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
PAGE_FILE = "index.html"
PUBLIC_ENDPOINTS = frozenset({"page", "page_static"})  # besides /healthz: no token needed

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _read(name: str) -> bytes:
    path = STATIC_DIR / name
    try:
        return path.read_bytes()
    except OSError as e:  # a broken install (package data left out) fails at start-up, not per request
        raise RuntimeError(f"the browser page's file {path} is missing ({e}); reinstall facemem") from None


def install(app: Flask, no_params) -> None:
    """Register ``GET /`` and ``GET /static/<name>``, and the security headers on every response.

    ``no_params`` is the app's check that a route got no query parameters (400 otherwise).
    """
    from ..params import ApiError

    files = {name: _read(name) for name in (PAGE_FILE, *STATIC_FILES)}

    def _static(body: bytes, content_type: str) -> Response:
        resp = Response(body, content_type=content_type)
        resp.headers["Cache-Control"] = "no-cache"  # revalidate: a new server version may change the script
        return resp

    @app.get("/")
    def page() -> Response:
        no_params()
        return _static(files[PAGE_FILE], "text/html; charset=utf-8")

    @app.get("/static/<name>")
    def page_static(name: str) -> Response:
        no_params()
        if name not in STATIC_FILES:
            raise ApiError(404, "not_found", f"no static file {name[:60]!r}; there are {', '.join(STATIC_FILES)}")
        return _static(files[name], STATIC_FILES[name])

    @app.after_request
    def _security_headers(resp: Response) -> Response:
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        return resp

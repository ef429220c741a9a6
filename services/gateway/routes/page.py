"""The web page: one HTML file and its static assets, no build step."""

from __future__ import annotations

from pathlib import Path

from litestar import Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

from services.gateway.headers import PAGE_POLICY

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


@get("/", include_in_schema=False, media_type="text/html")
async def index() -> Response[bytes]:
    """The single page; the generation it shows lives in the URL (`/#/g/<id>`)."""
    return Response(
        (STATIC_DIR / "index.html").read_bytes(),
        media_type="text/html; charset=utf-8",
        headers={
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": PAGE_POLICY,
            "Referrer-Policy": "no-referrer",
        },
    )


# Revalidated on every load, so a page never runs scripts older than the gateway serving it.
static_files = create_static_files_router(
    path="/static",
    directories=[STATIC_DIR],
    include_in_schema=False,
    name="static",
    cache_control=CacheControlHeader(no_cache=True),
)

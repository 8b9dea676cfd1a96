"""The web playground: `/` serves the page, `/static/...` its script and styles.

Plain files shipped as package data (`api/static/`), no build step and nothing fetched from
elsewhere, so the page works offline. Kept out of the OpenAPI schema: it is not part of the API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from videoserve import errors

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# The page runs only its own script and styles. Thumbnails, videos and downloads may come from
# presigned S3 URLs on another host, so media and fetches may reach any http(s) origin.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob: http: https:; media-src 'self' blob: http: https:; "
    "connect-src 'self' http: https:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

_HEADERS = {
    # Revalidate every time: an upgraded server must never run with a stale script.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _file(name: str) -> FileResponse:
    try:
        path = (STATIC_DIR / name).resolve()
        found = path.is_relative_to(STATIC_DIR) and path.is_file()
    except (OSError, ValueError):  # a NUL in the name, a name too long for the file system
        found = False
    if not found:
        raise errors.NotFound("not found: no such static file")
    media_type = _MEDIA_TYPES.get(path.suffix, "application/octet-stream")
    headers = dict(_HEADERS)
    if path.suffix == ".html":
        headers["Content-Security-Policy"] = _CSP
    return FileResponse(path, media_type=media_type, headers=headers)


@router.head("/")
@router.get("/")
async def playground() -> FileResponse:
    return _file("index.html")


@router.head("/static/{name:path}")
@router.get("/static/{name:path}")
async def static(name: str) -> FileResponse:
    return _file(name)

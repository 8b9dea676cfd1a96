"""Signed, expiring links to stored outputs: no API key needed, HTTP Range supported."""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter
from fastapi.responses import FileResponse

from videoserve import errors
from videoserve.api.deps import FilesDep

router = APIRouter(tags=["Files"])


@router.head("/files/{key:path}", include_in_schema=False)
@router.get("/files/{key:path}", summary="Download an output (no API key: the link is signed)")
async def download(key: str, expires: int, signature: str, files: FilesDep) -> FileResponse:
    if not files.verify(key, expires, signature):
        # Tampered and expired links get the same answer: nothing to learn from the difference.
        raise errors.Forbidden("invalid or expired file link")
    try:
        path = files.local_path(key)
    except ValueError:
        path = None
    if path is None or not path.is_file():
        raise errors.NotFound("file not found (it may have expired)")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type)

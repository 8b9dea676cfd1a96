"""A job's stored files as the HTTP layer hands them out: links that need no API key, and the
bytes (or the local file) behind a link or a content download.

Why a service: routes and views reached the blob store and the URL signer themselves; this is
the one place that decides how a stored file leaves the server.
"""

from __future__ import annotations

from pathlib import Path

from videoserve import clock
from videoserve.storage import signing
from videoserve.storage.base import BlobStore
from videoserve.storage.signing import UrlSigner


class Files:
    def __init__(self, blobs: BlobStore, signer: UrlSigner) -> None:
        self._blobs = blobs
        self._signer = signer

    async def url(self, base: str, key: str, expires_at: float) -> str:
        """A link to a stored file that needs no API key and dies with the retention."""
        return await signing.file_url(self._blobs, self._signer, base, key, expires_at)

    def verify(self, key: str, expires: int, signature: str) -> bool:
        """Whether a `/files/` link is one we signed and has not expired."""
        return self._signer.verify(key, expires, signature, now=clock.now())

    def local_path(self, key: str) -> Path | None:
        """The file itself where the store is a local folder (served with Range support)."""
        return self._blobs.local_path(key)

    async def read(self, key: str) -> bytes:
        """The bytes of a stored file; `BlobNotFound` when it is gone."""
        return await self._blobs.get_bytes(key)

"""Where outputs are stored: `open_blob_store(url, settings)` picks the store for a storage URL."""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from videoserve.storage.base import BlobNotFound, BlobStore
from videoserve.storage.local import LocalBlobStore
from videoserve.storage.s3 import MAX_PRESIGN_SECONDS, S3BlobStore
from videoserve.storage.signing import UrlSigner

if TYPE_CHECKING:
    from videoserve.settings import Settings

__all__ = [
    "BlobNotFound",
    "BlobStore",
    "LocalBlobStore",
    "S3BlobStore",
    "UrlSigner",
    "open_blob_store",
]

log = logging.getLogger("videoserve.storage")


def open_blob_store(url: str, settings: Settings | None = None) -> BlobStore:
    """The store for `url`: `file:///absolute/path` (local folder) or `s3://bucket/prefix`
    (S3-compatible, configured by the `s3_*` fields of `settings`; without settings, the
    standard AWS environment and credential chain)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"storage URL {url!r}: file URLs take no host; use file:///abs/path")
        path = Path(urllib.parse.unquote(parsed.path))
        if not path.is_absolute():
            raise ValueError(f"storage URL {url!r} must name an absolute path")
        return LocalBlobStore(path)
    if parsed.scheme == "s3":
        if settings is None:
            return S3BlobStore.from_url(url)
        if settings.retention_seconds > MAX_PRESIGN_SECONDS:
            log.warning(
                "retention of %.0f s exceeds the 7-day limit of S3 presigned URLs: output links "
                "will expire after 7 days, before the videos are deleted",
                settings.retention_seconds,
            )
        return S3BlobStore.from_url(
            url,
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
        )
    raise ValueError(
        f"unsupported storage URL {url!r}; use file:///absolute/path or s3://bucket/prefix"
    )

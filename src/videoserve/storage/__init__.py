"""Where outputs are stored: `open_blob_store(url)` picks the store for a storage URL."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from videoserve.storage.base import BlobNotFound, BlobStore
from videoserve.storage.local import LocalBlobStore
from videoserve.storage.signing import UrlSigner

__all__ = ["BlobNotFound", "BlobStore", "LocalBlobStore", "UrlSigner", "open_blob_store"]


def open_blob_store(url: str) -> BlobStore:
    """The store for `url`: `file:///absolute/path` (local folder) or `s3://bucket/prefix`."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"storage URL {url!r}: file URLs take no host; use file:///abs/path")
        path = Path(urllib.parse.unquote(parsed.path))
        if not path.is_absolute():
            raise ValueError(f"storage URL {url!r} must name an absolute path")
        return LocalBlobStore(path)
    if parsed.scheme == "s3":
        raise NotImplementedError("S3 storage arrives with the scale-out work")
    raise ValueError(
        f"unsupported storage URL {url!r}; use file:///absolute/path or s3://bucket/prefix"
    )

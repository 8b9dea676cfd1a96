"""A blob store in an S3-compatible bucket (AWS S3, MinIO, Garage, R2...), through obstore.

This is the scale-out store: API servers and workers on many hosts share one bucket, and output
URLs are presigned GETs that the bucket serves itself (with Range), so video bytes never pass
through the API.
"""

from __future__ import annotations

import asyncio
import math
import urllib.parse
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import NotFoundError
from obstore.store import S3Store

if TYPE_CHECKING:
    from obstore.store import S3Config  # in the stubs only

from videoserve.storage.base import BlobNotFound
from videoserve.storage.local import validate_key

# S3 refuses parts under 5 MiB (all but the last), so that is the floor for a part size.
MIN_PART_BYTES = 5 * 1024 * 1024
# Objects larger than this are uploaded in parts of this size (the AWS CLI's default threshold).
# One part in flight per slot is held in memory, so an upload costs up to PART x CONCURRENCY.
MULTIPART_CHUNK_BYTES = 8 * 1024 * 1024
MULTIPART_CONCURRENCY = 4
# SigV4 presigned URLs may live at most 7 days (X-Amz-Expires <= 604800); S3 refuses longer.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
# One list page and one DeleteObjects request (its limit is 1000 keys).
_DELETE_BATCH = 1000
_NOT_FOUND = (FileNotFoundError, NotFoundError)


class S3BlobStore:
    """Objects live in `bucket` under `prefix/`; every key maps to `prefix/key`.

    Credentials not given here come from the standard AWS chain (`AWS_ACCESS_KEY_ID`...,
    web identity, ECS or instance metadata), which obstore resolves; so does the region
    (`AWS_REGION`, else us-east-1). Nothing is contacted until the first operation.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        multipart_chunk_bytes: int = MULTIPART_CHUNK_BYTES,
    ) -> None:
        if not bucket:
            raise ValueError("S3 storage needs a bucket: s3://bucket/prefix")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("give both the S3 access key id and the secret access key, or neither")
        if multipart_chunk_bytes < MIN_PART_BYTES:
            raise ValueError(
                f"multipart_chunk_bytes must be at least {MIN_PART_BYTES} (S3's minimum part size)"
            )
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.multipart_chunk_bytes = multipart_chunk_bytes
        config: S3Config = {}
        if endpoint:
            config["endpoint"] = endpoint
        if region:
            config["region"] = region
        if access_key_id is not None and secret_access_key is not None:
            config["access_key_id"] = access_key_id
            config["secret_access_key"] = secret_access_key
        # MinIO, Garage and moto usually listen on plain http; obstore refuses it unless told.
        allow_http = endpoint is not None and urllib.parse.urlsplit(endpoint).scheme == "http"
        self._store: S3Store | None = S3Store(
            bucket, config=config, client_options={"allow_http": allow_http}
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3BlobStore:
        """The store for `s3://bucket/prefix`; `options` are the constructor's keywords."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"storage URL {url!r} is not of the form s3://bucket/prefix")
        if parsed.query or parsed.fragment:
            raise ValueError(f"storage URL {url!r}: settings go in VIDEOSERVE_S3_*, not the URL")
        prefix = urllib.parse.unquote(parsed.path)
        return cls(parsed.netloc, prefix=prefix, **options)

    def __repr__(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"S3BlobStore({where!r}, endpoint={self.endpoint!r})"

    def _s3(self) -> S3Store:
        if self._store is None:
            raise RuntimeError(f"{self!r} is closed")
        return self._store

    def _path(self, key: str) -> str:
        """The object's path in the bucket."""
        return f"{self.prefix}/{key}" if self.prefix else key

    async def put_file(self, key: str, source: Path, content_type: str) -> None:
        """Upload `source`, streamed from disk, in parts above `multipart_chunk_bytes`.

        S3 makes the object visible only when the PUT (or CompleteMultipartUpload) succeeds,
        so readers see all of it or nothing. A failed multipart upload can leave its parts
        behind (invisible, but billed): the bucket needs a rule that aborts incomplete uploads.
        """
        path = self._path(validate_key(key))
        source = Path(source)
        size = (await asyncio.to_thread(source.stat)).st_size
        await self._put(path, source, size, content_type)

    def prepare_move(self, source: Path) -> None:
        pass  # an upload reads the file as it is: no fsync needed

    async def move_file(
        self, key: str, source: Path, content_type: str, *, prepared: bool = False
    ) -> None:
        await self.put_file(key, source, content_type)
        await asyncio.to_thread(Path(source).unlink)

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(validate_key(key))
        await self._put(path, data, len(data), content_type)

    async def _put(self, path: str, body: Path | bytes, size: int, content_type: str) -> None:
        await obstore.put_async(
            self._s3(),
            path,
            body,
            # Stored with the object, so a presigned GET answers with the right Content-Type.
            attributes={"Content-Type": content_type},
            use_multipart=size > self.multipart_chunk_bytes,
            chunk_size=self.multipart_chunk_bytes,
            max_concurrency=MULTIPART_CONCURRENCY,
        )

    async def get_bytes(self, key: str) -> bytes:
        path = self._path(validate_key(key))
        try:
            result = await obstore.get_async(self._s3(), path)
            return bytes(await result.bytes_async())
        except _NOT_FOUND:
            raise BlobNotFound(key) from None

    async def exists(self, key: str) -> bool:
        path = self._path(validate_key(key))
        try:
            await obstore.head_async(self._s3(), path)
        except _NOT_FOUND:
            return False
        return True

    async def delete_prefix(self, prefix: str) -> int:
        """Delete the objects whose key starts with `prefix` (plain string match, as in the
        local store: `a/b` matches `a/bc/d`), in batches of up to 1000 keys per request.
        An empty prefix is refused, so a bug cannot empty the bucket."""
        validate_key(prefix, prefix=True)
        store = self._s3()
        wanted = self._path(prefix)
        # obstore lists whole path segments (`a/b` would miss `a/bc`), so list the parent
        # segment and match the string ourselves.
        parent = wanted.rpartition("/")[0]
        deleted = 0
        async for page in obstore.list(store, parent or None, chunk_size=_DELETE_BATCH):
            paths = [meta["path"] for meta in page if meta["path"].startswith(wanted)]
            if paths:
                await obstore.delete_async(store, paths)
                deleted += len(paths)
        return deleted

    def local_path(self, key: str) -> Path | None:
        """None: objects are not files here; clients fetch them with a presigned URL."""
        return None

    async def presigned_get_url(self, key: str, expires_in: float) -> str:
        """A SigV4 presigned GET for `key`, valid for `expires_in` seconds (whole seconds,
        at least 1), clamped to SigV4's 7-day maximum.

        The bucket answers it itself, with Range. URLs signed with temporary credentials
        (instance roles, STS) stop working when those credentials expire, whatever the URL's
        own expiry says.
        """
        path = self._path(validate_key(key))
        seconds = min(MAX_PRESIGN_SECONDS, max(1, math.ceil(expires_in)))
        return await obstore.sign_async(self._s3(), "GET", path, timedelta(seconds=seconds))

    async def close(self) -> None:
        # obstore holds only a connection pool, released when the store is dropped.
        self._store = None

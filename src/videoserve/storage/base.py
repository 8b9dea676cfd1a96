"""The blob store interface: where finished videos and thumbnails live, written once, read many.

Keys are `/`-separated relative paths such as `videos/<request_id>/video.mp4`. A key that is
valid here is valid for every store (local folder or S3-compatible), so callers never care
which one they hold.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Protocol, runtime_checkable

from videoserve import errors


class BlobNotFound(errors.VideoserveError, KeyError):
    """No object under that key; also a `KeyError`, so mapping-style callers can catch it."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no blob under key {key!r}")
        self.key = key

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all
        return self.message


# A write that found no room: the filesystem is full, or the user's disk quota is spent.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def out_of_space(exc: BaseException | None) -> bool:
    """True when `exc`, or what it was raised from (as a traceback shows the chain), is a
    write that found no space: `StorageFull`, or an `OSError` with ENOSPC or EDQUOT (PyAV's
    and Pillow's errors are `OSError`s too). Read from the errno, never from the message."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, errors.StorageFull):
            return True
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return True
        seen.add(id(exc))
        exc = (
            exc.__cause__
            if exc.__cause__ is not None
            else (None if exc.__suppress_context__ else exc.__context__)
        )
    return False


@runtime_checkable
class BlobStore(Protocol):
    """Object storage for outputs. Every write is atomic: readers see all of an object or none,
    and a write that finds no space raises `errors.StorageFull` with nothing left behind."""

    async def put_file(self, key: str, source: Path, content_type: str) -> None:
        """Store a copy of the file `source` under `key`, replacing any previous object."""
        ...

    def prepare_move(self, source: Path) -> None:
        """Get the file `source` ready for `move_file(..., prepared=True)`. Blocking: call it
        on the thread that wrote the file. A local folder fsyncs it here, so that its move is
        only a rename and the fsync is off the caller's event loop; a store that uploads has
        nothing to do."""
        ...

    async def move_file(
        self, key: str, source: Path, content_type: str, *, prepared: bool = False
    ) -> None:
        """Store the file `source` under `key` and take it: `source` is gone afterwards, the
        object replacing any previous one. A local folder renames it in where it can (no
        copy); other stores upload it and delete it. `prepared`: `prepare_move(source)` ran
        since the file was last written."""
        ...

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Store `data` under `key`, replacing any previous object."""
        ...

    async def get_bytes(self, key: str) -> bytes:
        """The whole object under `key`; `BlobNotFound` when there is none."""
        ...

    async def exists(self, key: str) -> bool:
        """True when an object is stored under `key`."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with `prefix`; the number deleted."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The file holding `key` in a local-folder store (served with Range); else None."""
        ...

    async def presigned_get_url(self, key: str, expires_in: float) -> str | None:
        """A URL the store itself serves for `expires_in` seconds, or None if it has none."""
        ...

    async def close(self) -> None:
        """Release connections and handles; the store is unusable afterwards."""
        ...

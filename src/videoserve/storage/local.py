"""A blob store in a local folder: the embedded default, served by the API with HTTP Range."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from videoserve import errors
from videoserve.storage.base import NO_SPACE_ERRNOS, BlobNotFound

log = logging.getLogger("videoserve.storage")

# Temporary files start with a dot, and keys may not, so a half-written temp file can never be
# mistaken for an object (by exists, get_bytes or delete_prefix).
_TEMP_PREFIX = "."


def validate_key(key: str, *, prefix: bool = False) -> str:
    """Return `key` if it is a clean relative `/`-separated path; ValueError otherwise.

    Refused: empty keys, absolute paths, backslashes, NUL, empty segments (`a//b`, a trailing
    `/`), `.` and `..` segments, and segments starting with `.`. A prefix may end with `/`.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"blob key must be a non-empty string, got {key!r}")
    if key.startswith("/"):
        raise ValueError(f"blob key {key!r} must be relative, not absolute")
    if "\\" in key or "\x00" in key:
        raise ValueError(f"blob key {key!r} must not contain backslashes or NUL")
    segments = key.split("/")
    if prefix and segments[-1] == "" and len(segments) > 1:
        segments = segments[:-1]
    for segment in segments:
        if not segment:
            raise ValueError(f"blob key {key!r} has an empty path segment")
        if segment in (".", ".."):
            raise ValueError(f"blob key {key!r} must not contain '.' or '..' segments")
        if segment.startswith(_TEMP_PREFIX):
            raise ValueError(f"blob key {key!r} has a segment starting with '.'")
    return key


class LocalBlobStore:
    """Objects are files under `root`, one per key; content types are not kept (the API
    derives them from the key's extension)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    @contextlib.contextmanager
    def _room(self) -> Iterator[None]:
        """A write that finds the disk full raises `StorageFull`, whose message (shown to API
        callers) names no path; the log says which folder it was, for the operator."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in NO_SPACE_ERRNOS:
                raise
            log.error("storage full: no space left under %s (%s)", self.root, exc.strerror)
            raise errors.StorageFull() from exc

    async def put_file(self, key: str, source: Path, content_type: str) -> None:
        target = self._path(key)
        source = Path(source)

        def copy(out: BinaryIO) -> None:
            with source.open("rb") as src:
                shutil.copyfileobj(src, out, length=1024 * 1024)

        with self._room():
            await asyncio.to_thread(_write_atomic, target, copy)

    def prepare_move(self, source: Path) -> None:
        """fsync `source`: the data durable before it gets the object's name."""
        _fsync(Path(source))

    async def move_file(
        self, key: str, source: Path, content_type: str, *, prepared: bool = False
    ) -> None:
        """Rename `source` in, after an fsync (done already when `prepared`), when it is on
        this store's filesystem; else copy it (durably) and delete it.

        Why: the worker writes each MP4 in the data folder's scratch space, on the same
        filesystem as the blobs as a rule, and copying a video of several megabytes was
        most of the time between the encoder and the job's COMPLETED."""
        target = self._path(key)
        source = Path(source)
        with self._room():
            if prepared:
                # On the event loop: a mkdir, a chmod and a rename are metadata changes the
                # kernel makes in memory (journalled later), a few tens of microseconds; the
                # trip to a thread and back cost the worker several times that on every job.
                moved = _rename_in(source, target)
            else:
                moved = await asyncio.to_thread(_rename_durably, source, target)
        if not moved:
            await self.put_file(key, source, content_type)
            await asyncio.to_thread(source.unlink)

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        target = self._path(key)
        with self._room():
            await asyncio.to_thread(_write_atomic, target, lambda out: out.write(data))

    async def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(key) from None

    async def exists(self, key: str) -> bool:
        path = self._path(key)
        return await asyncio.to_thread(path.is_file)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete the objects whose key starts with `prefix` (S3 semantics: `a/b` matches
        `a/bc/d` too) and the directories that leaves empty. An empty prefix is refused."""
        validate_key(prefix, prefix=True)
        return await asyncio.to_thread(self._delete_prefix, prefix)

    def _delete_prefix(self, prefix: str) -> int:
        parent, _, _ = prefix.rpartition("/")
        top = self.root.joinpath(*parent.split("/")) if parent else self.root
        if not top.is_dir():
            return 0
        deleted = 0
        for dirpath, dirnames, filenames in os.walk(top, topdown=False):
            directory = Path(dirpath)
            rel_dir = directory.relative_to(self.root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            for name in filenames:
                key = rel_dir + name
                if key.startswith(prefix) and not name.startswith(_TEMP_PREFIX):
                    (directory / name).unlink(missing_ok=True)
                    deleted += 1
            for name in dirnames:
                if (rel_dir + name + "/").startswith(prefix):
                    _remove_if_empty(directory / name)
        if parent and (parent + "/").startswith(prefix):
            _remove_if_empty(top)  # the prefix names this very directory: `videos/<id>/`
        return deleted

    def local_path(self, key: str) -> Path | None:
        """The file for `key` (it may not exist yet: check `exists`)."""
        return self._path(key)

    async def presigned_get_url(self, key: str, expires_in: float) -> str | None:
        """None: a local folder serves nothing itself; the API serves it with a signed URL."""
        return None

    async def close(self) -> None:
        return None


def _write_atomic(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary sibling, fsync it, then rename it over `target`; on any
    error (a full disk) the temporary file is removed: no partial object is ever left."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f"{_TEMP_PREFIX}{target.name}.")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; objects are meant to be read by the server
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _rename_durably(source: Path, target: Path) -> bool:
    """fsync `source`, then rename it over `target`; False when it is on another filesystem
    (it is left where it is)."""
    _fsync(source)  # the data durable before it has the object's name
    return _rename_in(source, target)


def _fsync(path: Path) -> None:
    with path.open("rb") as data:
        os.fsync(data.fileno())


def _rename_in(source: Path, target: Path) -> bool:
    """Rename `source` (fsynced) over `target`; False when it is on another filesystem."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(source, 0o644)  # objects are meant to be read by the server
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return False
        raise
    return True


def _remove_if_empty(directory: Path) -> None:
    # Not empty: a concurrent put's temp file, or keys outside the prefix, still live there.
    with contextlib.suppress(OSError):
        directory.rmdir()

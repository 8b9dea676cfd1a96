"""The local-folder blob store: round trips, atomic writes, prefix deletes, key hygiene."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest

from videoserve import errors
from videoserve.storage import BlobNotFound, BlobStore, LocalBlobStore, open_blob_store
from videoserve.storage.local import validate_key


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def test_put_get_exists_round_trip(store: LocalBlobStore, tmp_path: Path) -> None:
    assert isinstance(store, BlobStore)
    await store.put_bytes("videos/a/thumb.jpg", b"jpeg bytes", "image/jpeg")
    source = tmp_path / "video.mp4"
    source.write_bytes(b"mp4 bytes" * 1000)
    await store.put_file("videos/a/video.mp4", source, "video/mp4")

    assert await store.get_bytes("videos/a/thumb.jpg") == b"jpeg bytes"
    assert await store.get_bytes("videos/a/video.mp4") == source.read_bytes()
    assert source.exists()  # put_file copies; the caller still owns its file
    assert await store.exists("videos/a/video.mp4")
    assert not await store.exists("videos/a/missing.mp4")
    assert not await store.exists("videos/a")  # a directory is not an object
    assert store.local_path("videos/a/video.mp4") == store.root / "videos" / "a" / "video.mp4"
    assert await store.presigned_get_url("videos/a/video.mp4", 60) is None
    await store.close()


async def test_move_file_renames_the_file_in_without_copying(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    source = tmp_path / "scratch" / "video.mp4"
    source.parent.mkdir()
    source.write_bytes(b"mp4 bytes" * 1000)
    inode = source.stat().st_ino
    await store.move_file("videos/a/video.mp4", source, "video/mp4")
    stored = store.root / "videos" / "a" / "video.mp4"
    assert stored.stat().st_ino == inode  # the same file, renamed: no copy was made
    assert stored.stat().st_mode & 0o777 == 0o644  # readable by the server, as puts are
    assert not source.exists()
    assert files_under(store.root) == ["videos/a/video.mp4"]


async def test_a_prepared_move_is_a_rename_and_keeps_the_file(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    source = tmp_path / "scratch" / "thumb.jpg"
    source.parent.mkdir()
    source.write_bytes(b"jpeg bytes" * 100)
    inode = source.stat().st_ino
    store.prepare_move(source)  # the fsync, on the caller's thread
    await store.move_file("videos/c/thumbnail.jpg", source, "image/jpeg", prepared=True)
    stored = store.root / "videos" / "c" / "thumbnail.jpg"
    assert stored.stat().st_ino == inode and stored.stat().st_mode & 0o777 == 0o644
    assert not source.exists()


def _on_another_filesystem(folder: Path, than: Path) -> bool:
    return folder.is_dir() and folder.stat().st_dev != than.stat().st_dev


async def test_move_file_across_filesystems_copies_then_deletes(tmp_path: Path) -> None:
    """/dev/shm is another filesystem here: the rename fails with EXDEV and the store copies."""
    shm = Path("/dev/shm")
    if not _on_another_filesystem(shm, tmp_path):
        pytest.skip("needs /dev/shm on another filesystem than the test's folder")
    store = LocalBlobStore(tmp_path / "blobs")
    with tempfile.TemporaryDirectory(dir=shm) as scratch:
        source = Path(scratch) / "video.mp4"
        source.write_bytes(b"from another filesystem" * 100)
        await store.move_file("videos/b/video.mp4", source, "video/mp4")
        assert not source.exists()
        # Prepared or not: across filesystems the move is a durable copy.
        source.write_bytes(b"prepared" * 100)
        store.prepare_move(source)
        await store.move_file("videos/b/thumbnail.jpg", source, "image/jpeg", prepared=True)
        assert not source.exists()
    assert await store.get_bytes("videos/b/video.mp4") == b"from another filesystem" * 100
    assert await store.get_bytes("videos/b/thumbnail.jpg") == b"prepared" * 100
    assert files_under(store.root) == ["videos/b/thumbnail.jpg", "videos/b/video.mp4"]


async def test_put_replaces_and_leaves_no_temp_files(store: LocalBlobStore) -> None:
    await store.put_bytes("a/b.bin", b"first", "application/octet-stream")
    await store.put_bytes("a/b.bin", b"second", "application/octet-stream")
    assert await store.get_bytes("a/b.bin") == b"second"
    assert files_under(store.root) == ["a/b.bin"]


async def test_failed_put_leaves_nothing_behind(store: LocalBlobStore, tmp_path: Path) -> None:
    await store.put_bytes("a/keep.bin", b"old", "application/octet-stream")
    with pytest.raises(FileNotFoundError):
        await store.put_file("a/keep.bin", tmp_path / "no-such-file", "application/octet-stream")
    assert await store.get_bytes("a/keep.bin") == b"old"
    assert files_under(store.root) == ["a/keep.bin"]


async def test_readers_never_see_a_partial_object(store: LocalBlobStore, tmp_path: Path) -> None:
    big, other = b"x" * (4 * 1024 * 1024), b"y" * (4 * 1024 * 1024)
    source = tmp_path / "big.bin"
    source.write_bytes(big)
    await store.put_bytes("k/big.bin", other, "application/octet-stream")
    done = asyncio.Event()

    async def writer() -> None:
        for _ in range(5):
            await store.put_file("k/big.bin", source, "application/octet-stream")
            await store.put_bytes("k/big.bin", other, "application/octet-stream")
        done.set()

    async def reader() -> set[bytes]:
        seen = set()
        while not done.is_set():
            seen.add(await store.get_bytes("k/big.bin"))
        return seen

    _, seen = await asyncio.gather(writer(), reader())
    assert seen <= {big, other}


async def test_missing_blob_raises_blob_not_found(store: LocalBlobStore) -> None:
    with pytest.raises(BlobNotFound) as caught:
        await store.get_bytes("nope/missing.mp4")
    assert isinstance(caught.value, errors.VideoserveError)
    assert isinstance(caught.value, KeyError)
    assert caught.value.key == "nope/missing.mp4"
    assert str(caught.value) == "no blob under key 'nope/missing.mp4'"


async def test_delete_prefix_removes_files_and_empty_directories(store: LocalBlobStore) -> None:
    for key in ["videos/abc/video.mp4", "videos/abc/thumb.jpg", "videos/abc/sub/x.bin"]:
        await store.put_bytes(key, b"1", "application/octet-stream")
    await store.put_bytes("videos/abd/video.mp4", b"2", "application/octet-stream")
    await store.put_bytes("other/abc.bin", b"3", "application/octet-stream")

    assert await store.delete_prefix("videos/abc/") == 3
    assert not (store.root / "videos" / "abc").exists()
    assert files_under(store.root) == ["other/abc.bin", "videos/abd/video.mp4"]
    assert await store.delete_prefix("videos/abc/") == 0
    assert await store.delete_prefix("no/such/prefix/") == 0


async def test_delete_prefix_matches_key_prefixes_like_s3(store: LocalBlobStore) -> None:
    for key in ["v/ab/1", "v/abc/2", "v/b/3", "v/ab.txt"]:
        await store.put_bytes(key, b"1", "application/octet-stream")
    assert await store.delete_prefix("v/ab") == 3
    assert files_under(store.root) == ["v/b/3"]
    assert await store.delete_prefix("v") == 1
    assert files_under(store.root) == []


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../escape",
        "a/./b",
        "a\\b",
        "a//b",
        "a/",
        "a/\x00b",
        ".hidden",
        "a/.b.tmp",
    ],
)
async def test_bad_keys_are_refused(store: LocalBlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="blob key"):
        await store.put_bytes(key, b"x", "application/octet-stream")
    with pytest.raises(ValueError, match="blob key"):
        await store.get_bytes(key)
    with pytest.raises(ValueError, match="blob key"):
        store.local_path(key)


@pytest.mark.parametrize("prefix", ["", "/", "../", "a//", "a/../"])
async def test_bad_prefixes_are_refused(store: LocalBlobStore, prefix: str) -> None:
    with pytest.raises(ValueError, match="blob key"):
        await store.delete_prefix(prefix)


def test_validate_key_accepts_clean_keys() -> None:
    assert validate_key("videos/req_123/video.mp4") == "videos/req_123/video.mp4"
    assert validate_key("videos/req_123/", prefix=True) == "videos/req_123/"


def test_open_blob_store_by_url(tmp_path: Path) -> None:
    root = tmp_path / "with space"
    store = open_blob_store(root.as_uri())
    assert isinstance(store, LocalBlobStore)
    assert store.root == root.resolve()
    assert root.is_dir()
    assert isinstance(open_blob_store(f"file://localhost{root}"), LocalBlobStore)
    from videoserve.storage import S3BlobStore

    assert isinstance(open_blob_store("s3://bucket/prefix"), S3BlobStore)  # contacts nothing
    for bad in ("file://host/path", "file:relative/path", "ftp://x/y", "/plain/path"):
        with pytest.raises(ValueError, match="storage URL"):
            open_blob_store(bad)

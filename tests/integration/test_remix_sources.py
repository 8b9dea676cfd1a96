"""What views show of a video is in its row: the remix source (migration 12; the markers of
rows made before it are read into their rows once, at the first sweep), and an extension's
or edit's delivered seconds (migration 15; older rows read their manifest). Listing reads no
blob per video."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa

from tests.conftest import LiveServer, wait_until
from videoserve import clock
from videoserve.db.database import migrations_table
from videoserve.jobs import remixes, schema
from videoserve.jobs.store import JobStore
from videoserve.media.encode import encode_mp4
from videoserve.settings import Settings

SOURCE = "video_" + "a" * 32
OLD_REMIX = "video_" + "b" * 32
OLD_PLAIN = "video_" + "c" * 32


async def _database_at_version_11(url: str) -> None:
    """The jobs tables as migration 11 left them, with three completed videos of the
    anonymous key (auth off): a source, a remix of it, and a plain one."""
    store = JobStore.open(url)
    try:
        async with store.database.transaction() as conn:
            await conn.run_sync(lambda c: migrations_table.create(c, checkfirst=True))
            for version, step in schema.MIGRATIONS.steps[:11]:
                await conn.run_sync(step)
                await conn.execute(
                    migrations_table.insert().values(
                        package="jobs", version=version, applied_at=clock.now()
                    )
                )
            now = clock.now()
            for i, job_id in enumerate((SOURCE, OLD_REMIX, OLD_PLAIN)):
                await conn.execute(
                    sa.text(
                        "INSERT INTO jobs (id, api_key_id, model, served_by, params, status,"
                        " progress, attempt, max_attempts, cancel_requested, created_at,"
                        " finished_at, expires_at)"
                        " VALUES (:id, 'anonymous', 'tiny-t2v', 'tiny-t2v', :params,"
                        " 'COMPLETED', 100, 1, 1, false, :t, :t, :expires)"
                    ),
                    {
                        "id": job_id,
                        "params": json.dumps({"prompt": "old", "duration": 4}),
                        "t": now + i,
                        "expires": now + 3600,
                    },
                )
    finally:
        await store.close()


async def _unread(url: str) -> list[str]:
    store = JobStore.open(url)
    try:
        return await remixes.unread(store.database, 10)
    finally:
        await store.close()


def _listed(server: LiveServer) -> dict[str, str | None]:
    page = httpx.get(f"{server.url}/v1/videos", params={"limit": 100}, timeout=30)
    assert page.status_code == 200, page.text
    return {v["id"]: v["remixed_from_video_id"] for v in page.json()["data"]}


def test_old_remix_markers_are_read_into_the_column_once(
    make_server: Callable[..., LiveServer], tmp_path: Path, database_url: str
) -> None:
    data_dir = tmp_path / "old"
    url = Settings(database_url=database_url, data_dir=data_dir).resolved_database_url()
    asyncio.run(_database_at_version_11(url))
    marker = data_dir / "blobs" / "jobs" / OLD_REMIX / "remix.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"remixed_from_video_id": SOURCE}))

    server = make_server(
        data_dir=data_dir, database_url=database_url, auth=False, embedded_worker=False
    )
    # Migration 12 marked the three rows unread; the first sweep reads their markers.
    wait_until(lambda: asyncio.run(_unread(url)) == [])
    expected = {SOURCE: None, OLD_REMIX: SOURCE, OLD_PLAIN: None}
    assert _listed(server) == expected
    # From the column now: the marker is no longer needed by a list or a retrieve.
    marker.unlink()
    assert _listed(server) == expected
    one = httpx.get(f"{server.url}/v1/videos/{OLD_REMIX}", timeout=30)
    assert one.json()["remixed_from_video_id"] == SOURCE


def test_an_extensions_delivered_seconds_are_its_rows_and_older_rows_read_the_manifest(
    make_server: Callable[..., LiveServer], tmp_path: Path, database_url: str
) -> None:
    data_dir = tmp_path / "ext"
    server = make_server(
        data_dir=data_dir, database_url=database_url, auth=False, embedded_worker=False
    )
    clip = tmp_path / "clip.mp4"
    frames = np.random.default_rng(3).integers(0, 255, (16, 48, 64, 3), dtype=np.uint8)
    encode_mp4(frames, 8, clip)  # 2 s
    created = httpx.post(
        f"{server.url}/v1/videos/extensions",
        data={"prompt": "on", "seconds": "4"},
        files={"video": ("clip.mp4", clip.read_bytes(), "video/mp4")},
        timeout=30,
    )
    assert created.status_code == 200, created.text
    video_id = created.json()["id"]
    assert created.json()["seconds"] == "6"  # the stitched total: 2 s of source + 4 s

    def seconds() -> tuple[str, str]:
        listed = httpx.get(f"{server.url}/v1/videos", timeout=30).json()["data"]
        one = httpx.get(f"{server.url}/v1/videos/{video_id}", timeout=30).json()
        return next(v["seconds"] for v in listed if v["id"] == video_id), one["seconds"]

    manifest = data_dir / "blobs" / "jobs" / video_id / "inputs.json"
    held = manifest.read_bytes()
    manifest.unlink()  # the row alone says it
    assert seconds() == ("6", "6")

    # A row made before migration 15 has no delivered seconds: its manifest says them.
    manifest.write_bytes(held)
    url = Settings(database_url=database_url, data_dir=data_dir).resolved_database_url()
    asyncio.run(_forget_delivered_seconds(url, video_id))
    assert seconds() == ("6", "6")


async def _forget_delivered_seconds(url: str, job_id: str) -> None:
    store = JobStore.open(url)
    try:
        async with store.database.transaction() as conn:
            await conn.execute(
                schema.jobs.update()
                .where(schema.jobs.c.id == job_id)
                .values(delivered_seconds=None)
            )
    finally:
        await store.close()

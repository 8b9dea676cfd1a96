"""A full disk is a clear error (issue 23, item 6), made real: small tmpfs mounts in a private
mount namespace (`unshare --mount`, so nothing shows on the host and all of it goes when the
server exits), holding the data folder, the worker's scratch folder and the blob storage, with
the job database beside them on the host (SQLite) or on the real PostgreSQL.

The test reaches the mounts through `/proc/<server pid>/root`, which shows the server's own
mounts: there it fills them (a file written a page at a time until ENOSPC) and lists what the
server left behind. Submits that must store files answer 507 with a message that names no
path, in both dialects; a job whose video cannot be stored ends FAILED `storage_full`,
refunded; and nothing half-written is left behind.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.acceptance.conftest import VIDEOSERVE, Processes
from tests.conftest import free_port, wait_until
from videoserve.media.encode import encode_mp4

pytestmark = pytest.mark.slow

PAGE = 4096  # tmpfs hands out space in pages
SPOOLED = 1024 * 1024  # Starlette keeps an uploaded file in memory up to this size
MOUNT_SIZE = "2m"
# Mount each folder given as a small tmpfs, then run the command after them.
MOUNT_THEN_RUN = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do '
    "mount -t tmpfs -o size=" + MOUNT_SIZE + ' tmpfs "$1" || exit 97; shift; n=$((n-1)); done; '
    'exec "$@"'
)


def with_tmpfs(mounts: list[Path], command: list[str]) -> list[str]:
    """`command` in a private mount namespace where each of `mounts` is a small tmpfs."""
    unshare = ["unshare", "--mount", "--propagation", "private", "--"]
    script = ["sh", "-c", MOUNT_THEN_RUN, "sh", str(len(mounts)), *map(str, mounts)]
    return [*unshare, *script, *command]


@pytest.fixture
def namespaces(tmp_path: Path) -> None:
    """Skip, saying why, where a private mount namespace with a tmpfs cannot be made (CI runs
    as root, where it can)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private mount namespace (CI runs as root)")
    probe = tmp_path / "probe"
    probe.mkdir()
    tried = subprocess.run(
        with_tmpfs([probe], ["true"]),
        capture_output=True,
        text=True,
        timeout=30,
    )
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace: {tried.stderr.strip()}")


class FullDiskServer:
    """`videoserve serve` in its own mount namespace, with `mounts` each a 2 MiB tmpfs."""

    def __init__(self, processes: Processes, mounts: list[Path], **env: str) -> None:
        for mount in mounts:
            mount.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log = processes.tmp_path / "full-disk-server.log"
        command = [*VIDEOSERVE, "serve", "--port", str(port)]
        self.process = subprocess.Popen(
            with_tmpfs(mounts, command),
            env={**processes.env, **env},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.started.append((self.process, log))  # killed at the end of the test
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {log.read_text()}")
            try:
                return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=120, interval=0.1)

    def inside(self, path: Path) -> Path:
        """`path` as the server sees it (on its tmpfs), from outside its namespace."""
        return Path(f"/proc/{self.process.pid}/root") / path.relative_to("/")


@pytest.fixture
def full_disk_env(processes: Processes, database_url: str) -> Iterator[dict[str, str]]:
    """The job database off the tmpfs (a host SQLite file, or the real PostgreSQL)."""
    processes.env["VIDEOSERVE_DATABASE_URL"] = database_url
    yield processes.env


def fill(folder: Path, leave_pages: int = 0) -> Path:
    """Fill the filesystem of `folder` a page at a time until ENOSPC, then give back
    `leave_pages` pages; the filler file, to delete to free the space again."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    page = b"\0" * PAGE
    try:
        while True:
            try:
                written = os.write(fd, page)
            except OSError as exc:
                assert exc.errno == 28, exc  # ENOSPC
                break
            assert written == PAGE  # a page fits whole or not at all
    finally:
        os.close(fd)
    size = filler.stat().st_size
    assert size > 0
    os.truncate(filler, size - leave_pages * PAGE)
    return filler


def files_under(folder: Path) -> list[str]:
    """Every file left under `folder` (temporary ones included), relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def flat_clip(tmp_path: Path) -> bytes:
    """A real H.264 MP4 of one colour: its file, and each frame's PNG, fit in one page."""
    path = tmp_path / "flat.mp4"
    encode_mp4(np.full((16, 48, 64, 3), 90, dtype=np.uint8), 8, path)
    data = path.read_bytes()
    assert len(data) <= PAGE
    return data


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def keyed(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_key(processes: Processes, credits: float | None = None) -> str:
    extra = ["--credits", str(credits)] if credits is not None else []
    made = processes.run("keys", "create", "--name", "disk", *extra)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


def assert_storage_full(answer: httpx.Response, *, openai: bool, paths: list[Path]) -> None:
    """507, the code `storage_full` in the dialect's envelope, and no server path."""
    assert answer.status_code == 507, answer.text
    body = answer.json()
    if openai:
        error = body["error"]
        assert (error["code"], error["type"]) == ("storage_full", "server_error")
        message = error["message"]
    else:
        assert body["code"] == "storage_full"
        message = body["error"]
    assert message.startswith("storage full")
    assert "/" not in message and not any(str(p) in answer.text for p in paths)


def test_submits_that_store_files_answer_507_on_a_full_disk(
    namespaces: None, processes: Processes, full_disk_env: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    key = new_key(processes)
    # TMPDIR on the tmpfs too: an upload over 1 MiB is spooled to a temporary file there.
    server = FullDiskServer(processes, [data], VIDEOSERVE_EMBEDDED_WORKER="false", TMPDIR=str(data))
    blobs = server.inside(data / "blobs")
    clip = flat_clip(tmp_path)
    auth = keyed(key)
    big = os.urandom(SPOOLED + PAGE)  # not a video: with room, a 400 once it is read

    def upload_big() -> httpx.Response:
        return httpx.post(
            f"{server.url}/v1/videos/extensions",
            data={"prompt": "on it goes", "seconds": "4"},
            files={"video": ("big.mp4", big, "video/mp4")},
            headers=auth,
            timeout=60,
        )

    # With room, once: Python settles on its temporary folder at first use (and would pass
    # over a full one), so this fixes it on the tmpfs before it fills.
    assert upload_big().status_code == 400

    def extend() -> httpx.Response:
        return httpx.post(
            f"{server.url}/v1/videos/extensions",
            data={"prompt": "on it goes", "seconds": "4"},
            files={"video": ("clip.mp4", clip, "video/mp4")},
            headers=auth,
            timeout=60,
        )

    def character() -> httpx.Response:
        return httpx.post(
            f"{server.url}/v1/videos/characters",
            data={"name": "Mara"},
            files={"video": ("mara.mp4", clip, "video/mp4")},
            headers=auth,
            timeout=60,
        )

    filler = fill(server.inside(data))
    image = png_bytes()
    answers = {
        "extension": (extend(), True),
        "character": (character(), True),
        "openai submit with an uploaded image": (
            httpx.post(
                f"{server.url}/v1/videos",
                data={"prompt": "a lake", "seconds": "4"},
                files={"input_reference": ("lake.png", image, "image/png")},
                headers=auth,
                timeout=60,
            ),
            True,
        ),
        "segmind submit with a data URI": (
            httpx.post(
                f"{server.url}/v2/sora-2-pro",
                json={
                    "prompt": "a lake",
                    "duration": 4,
                    "input_reference": "data:image/png;base64," + base64.b64encode(image).decode(),
                },
                headers=auth,
                timeout=60,
            ),
            False,
        ),
    }
    answers["upload spooled to the temporary folder"] = (upload_big(), True)
    for what, (answer, openai) in answers.items():
        assert answer.status_code == 507, (what, answer.text)
        assert_storage_full(answer, openai=openai, paths=[data, tmp_path])
    assert files_under(blobs) == []

    # Room for one file but not two: the first file stored is removed again (an extension
    # stores the upload, then its manifest; a character four frames, one after another).
    filler.unlink()
    filler = fill(server.inside(data), leave_pages=1)
    assert_storage_full(extend(), openai=True, paths=[data, tmp_path])
    assert files_under(blobs) == []
    assert_storage_full(character(), openai=True, paths=[data, tmp_path])
    assert files_under(blobs) == []
    listed = httpx.get(f"{server.url}/v1/videos", headers=auth, timeout=10).json()
    assert listed["data"] == []  # no job was written either

    # With space again the same requests pass: it was the disk.
    filler.unlink()
    assert extend().status_code == 200
    assert character().status_code == 200
    assert files_under(blobs) != []


def failed_status(url: str, key: str, request_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        body = httpx.get(f"{url}/v2/requests/{request_id}/status", headers=keyed(key)).json()
        return body if body["status"] in ("COMPLETED", "FAILED") else None

    final: dict[str, Any] = wait_until(ended, timeout=180, interval=0.1)
    return final


def test_a_video_that_cannot_be_stored_fails_storage_full_and_is_refunded(
    namespaces: None, processes: Processes, full_disk_env: dict[str, str], tmp_path: Path
) -> None:
    # The scratch folder (data/tmp) and the blob storage on two filesystems, as an operator
    # may mount them: each must map when it is the one that is full.
    data, storage = tmp_path / "data", tmp_path / "storage"
    key = new_key(processes, credits=100)
    server = FullDiskServer(processes, [data, storage], VIDEOSERVE_STORAGE_URL=storage.as_uri())
    scratch, blobs = server.inside(data / "tmp"), server.inside(storage)

    def submit() -> str:
        body = {"prompt": "a lighthouse", "duration": 4}
        answer = httpx.post(f"{server.url}/v2/sora-2-pro", json=body, headers=keyed(key))
        assert answer.status_code == 200, answer.text
        request_id: str = answer.json()["request_id"]
        return request_id

    def credits() -> float:
        answer = httpx.get(f"{server.url}/v1/account", headers=keyed(key))
        value: float = answer.json()["credits"]
        return value

    for full in (server.inside(data), blobs):
        filler = fill(full)
        request_id = submit()
        failed = failed_status(server.url, key, request_id)
        assert failed["status"] == "FAILED", (full, failed)
        assert failed["code"] == "storage_full", failed
        assert failed["error"].startswith("storage full"), failed
        assert "/" not in failed["error"] and str(tmp_path) not in str(failed)
        video = httpx.get(f"{server.url}/v1/videos/{request_id}", headers=keyed(key)).json()
        assert video["error"]["failure"] == "storage_full"
        assert "/" not in video["error"]["message"]
        # Refunded, and nothing half-written in either place.
        wait_until(lambda: credits() == 100)
        assert files_under(scratch) == []
        assert [name for name in files_under(blobs) if name != "filler"] == []
        filler.unlink()

    request_id = submit()  # with room again, the same request completes
    assert failed_status(server.url, key, request_id)["status"] == "COMPLETED"
    assert credits() == 96

    # On a full storage: a spritesheet (made on its first download) is refused; a remix of a
    # text-only video stores no file of its own (its source is a column, issue 24), so it is
    # accepted and charged, and then its video cannot be stored: storage_full, refunded.
    fill(blobs)
    sheet = httpx.get(
        f"{server.url}/v1/videos/{request_id}/content",
        params={"variant": "spritesheet"},
        headers=keyed(key),
    )
    assert_storage_full(sheet, openai=True, paths=[tmp_path])
    remix = httpx.post(
        f"{server.url}/v1/videos/{request_id}/remix", json={"prompt": "at dusk"}, headers=keyed(key)
    )
    assert remix.status_code == 200, remix.text
    failed = failed_status(server.url, key, remix.json()["id"])
    assert failed["status"] == "FAILED" and failed["code"] == "storage_full", failed
    wait_until(lambda: credits() == 96)


def test_the_embedded_layout_answers_507_when_its_database_cannot_grow(
    namespaces: None, processes: Processes, tmp_path: Path
) -> None:
    """Everything in one data folder, as `videoserve serve` lays it out: SQLite is on the full
    disk too, so even a submit without files is refused, as 507 `storage_full`, not as 503
    "the database is unavailable; retry shortly"."""
    data = tmp_path / "data"
    server = FullDiskServer(processes, [data], VIDEOSERVE_EMBEDDED_WORKER="false")
    key = next(
        word.split("=", 1)[1]
        for word in server.log.read_text().split()
        if word.startswith("VIDEOSERVE_API_KEY=")  # the first key, made on a fresh install
    )

    def segmind() -> httpx.Response:
        body = {"prompt": "a harbour", "duration": 4}
        return httpx.post(f"{server.url}/v2/sora-2-pro", json=body, headers=keyed(key))

    def openai() -> httpx.Response:
        form = {"prompt": "a harbour", "seconds": "4"}
        return httpx.post(f"{server.url}/v1/videos", data=form, headers=keyed(key))

    filler = fill(server.inside(data))
    assert_storage_full(segmind(), openai=False, paths=[data, tmp_path])
    assert_storage_full(openai(), openai=True, paths=[data, tmp_path])
    filler.unlink()
    assert segmind().status_code == 200
    assert openai().status_code == 200

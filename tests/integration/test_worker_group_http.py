"""Worker groups over HTTP: a live server whose worker drives two gloo ranks on the CPU.

One server (SQLite) and its group serve the module. A CFG-parallel entry over the tiny model's
weights gives the MP4 of the plain entry for the same seed, and says how it ran
(`metrics.parallel`) in both dialects. Faults: a rank SIGKILLed mid-job, or stuck in a
collective (SIGSTOP, past the group's timeout), stops the group, the job goes back to the queue
without spending an attempt, completes once, and the group comes back; a rank out of memory
fails the job with `out_of_memory` and the worker serves the next; a cancel stops every rank
after the same step and keeps the group.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from tests.conftest import LiveServer, free_port, start_server, wait_until
from tests.integration.accounting import headers, status_of, submit, wait_for_status, with_store
from tests.integration.test_worker_group import TWO_RANKS, models_file
from videoserve.models.backends.tiny import build_tiny_pipeline
from videoserve.settings import Settings
from videoserve.worker.group import WorkerGroup

# The plain entry runs in this process: one torch thread, as each CPU rank of two on this
# host has, so that both compute in the same order (the same float bits, the same MP4).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # conftest.py

SEEDED = {"size": "1024x1792", "duration": 4, "seed": 99, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("group-http")
    settings = Settings(
        data_dir=folder,
        host="127.0.0.1",
        port=free_port(),
        model_cache_dir=model_cache,
        poll_interval_seconds=0.2,
        aliases={"sora-2-pro": "tiny-t2v"},
        database_url=f"sqlite:///{folder / 'jobs.db'}",
        worker_devices="cpu,cpu",
        worker_group_timeout_seconds=10.0,  # a stuck rank is found out in seconds
    )
    # One more entry: previews after every step (rank 0 makes them, the worker stores them).
    entries = TWO_RANKS | {"tiny-previews": "{ ulysses = 2 }\npreview_every = 1"}
    settings = settings.model_copy(
        update={"models": models_file(folder, settings.tiny_model_dir(), entries)}
    )
    build_tiny_pipeline(settings.tiny_model_dir())  # the plain entry's weights, before the ranks
    with pytest.MonkeyPatch.context() as patch:
        # The ranks (spawned, so they take this environment) map every allocation of a page or
        # more on its own and unmap it when freed: the out-of-memory test's cap then holds.
        patch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4096")
        live = start_server(settings)
        yield live
        live.stop()


def group_of(server: LiveServer) -> WorkerGroup:
    worker = server.server.config.app.state.runtime.worker
    assert worker is not None and worker.group is not None
    group: WorkerGroup = worker.group
    return group


def frames_of(server: LiveServer, body: dict[str, Any]) -> np.ndarray:
    data = httpx.get(body["output"], timeout=30).content
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def denoising(server: LiveServer, request_id: str) -> None:
    """Wait until the job's ranks have run a denoising step (the group is up and splitting)."""
    key = server.api_key
    wait_until(lambda: (status_of(server, key, request_id).get("step") or 0) >= 1, timeout=300)


def completed(server: LiveServer, request_id: str) -> dict[str, Any]:
    wait_for_status(server, server.api_key, request_id, "COMPLETED", "FAILED", timeout=300)
    response = httpx.get(f"{server.url}/v2/requests/{request_id}", headers=headers(server.api_key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_cfg_parallel_gives_the_plain_entrys_video_and_says_how(server: LiveServer) -> None:
    key = server.api_key
    split = submit(server, key, "tiny-cfg", **SEEDED).json()["request_id"]
    plain = submit(server, key, "tiny-t2v", **SEEDED).json()["request_id"]
    split_body, plain_body = completed(server, split), completed(server, plain)
    assert split_body["metrics"]["parallel"] == {"ranks": 2, "cfg": 2}
    assert plain_body["metrics"]["parallel"] is None
    assert split_body["seed"] == plain_body["seed"] == SEEDED["seed"]
    split_frames, plain_frames = frames_of(server, split_body), frames_of(server, plain_body)
    assert np.array_equal(split_frames, plain_frames)
    video = httpx.get(f"{server.url}/v1/videos/{split}", headers=headers(key)).json()
    assert video["metrics"] == {"parallel": {"ranks": 2, "cfg": 2}}
    assert group_of(server).last_collectives[0].get("all_gather", 0) > 0


@pytest.mark.parametrize(("entry", "split"), [("tiny-ulysses", "ulysses"), ("tiny-ring", "ring")])
def test_context_parallel_gives_the_plain_entrys_video(
    server: LiveServer, entry: str, split: str
) -> None:
    """Ulysses and ring over HTTP: the same video as the plain entry for the same seed. Their
    float frames equal the single process's within 1e-5 (test_worker_group.py); the attention
    sums in another order, so a few uint8 values round the other way and H.264 codes them:
    the decoded MP4s match within the codec's noise, not bit for bit (CFG-parallel does)."""
    key = server.api_key
    split_id = submit(server, key, entry, **SEEDED).json()["request_id"]
    plain_id = submit(server, key, "tiny-t2v", **SEEDED).json()["request_id"]
    split_body, plain_body = completed(server, split_id), completed(server, plain_id)
    assert split_body["status"] == plain_body["status"] == "COMPLETED"
    assert split_body["metrics"]["parallel"] == {"ranks": 2, split: 2}
    ours = frames_of(server, split_body).astype(np.float64)
    theirs = frames_of(server, plain_body).astype(np.float64)
    assert ours.shape == theirs.shape
    difference = np.abs(ours - theirs)
    peak_snr = 10 * np.log10(255.0**2 / max(float((difference**2).mean()), 1e-12))
    assert float(difference.mean()) < 0.5 and peak_snr > 40.0, (difference.mean(), peak_snr)


def test_a_rank_killed_mid_job_sends_the_job_back_and_the_group_returns(
    server: LiveServer,
) -> None:
    key = server.api_key
    group = group_of(server)
    long = {**SEEDED, "num_inference_steps": 50}
    response = submit(server, key, "tiny-ulysses", **long)
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    denoising(server, request_id)
    starts = group.starts
    os.kill(group.pids()[1], signal.SIGKILL)
    body = completed(server, request_id)
    assert body["status"] == "COMPLETED", body
    assert body["metrics"]["parallel"] == {"ranks": 2, "ulysses": 2}
    assert group.starts == starts + 1  # stopped, then started again for the retry
    job = with_store(server, lambda store: store.get(request_id))
    assert job is not None and job.attempt == 1  # the lost attempt was not spent


def test_a_rank_stuck_in_a_collective_times_out_and_the_job_completes_once(
    server: LiveServer,
) -> None:
    key = server.api_key
    group = group_of(server)
    long = {**SEEDED, "num_inference_steps": 50}
    response = submit(server, key, "tiny-ulysses", **long)
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    denoising(server, request_id)
    starts = group.starts
    stuck = group.pids()[1]
    os.kill(stuck, signal.SIGSTOP)  # alive, but never answers its peer again
    body = completed(server, request_id)
    assert body["status"] == "COMPLETED", body
    assert group.starts == starts + 1
    assert stuck not in group.pids()  # the stuck rank was ended, not left behind
    job = with_store(server, lambda store: store.get(request_id))
    assert job is not None and job.attempt == 1


def test_out_of_memory_on_a_rank_fails_the_job_coded_and_the_worker_goes_on(
    server: LiveServer,
) -> None:
    """A host allocation failure on rank 1: between jobs its address space is capped where it
    stands (a real limit, `prlimit`), then a longer video (three times the tokens) needs more.
    The ranks map each allocation of a page or more on its own (`GLIBC_TUNABLES`, the module's
    fixture), so no freed memory can serve it: the failure is certain, wherever it lands. The
    cap was once set mid-job, and a job whose every step reused freed memory completed."""
    key = server.api_key
    group = group_of(server)
    warm = submit(server, key, "tiny-ulysses", **SEEDED).json()["request_id"]
    assert completed(server, warm)["status"] == "COMPLETED"  # loaded on both ranks, idle
    rank = group.pids()[1]
    with capped(rank):
        longer = {**SEEDED, "duration": 12}
        response = submit(server, key, "tiny-ulysses", **longer)
        assert response.status_code == 200, response.text
        request_id = response.json()["request_id"]
        failed = wait_for_status(server, key, request_id, "FAILED", "COMPLETED", timeout=300)
    assert failed["status"] == "FAILED" and failed["code"] == "out_of_memory", failed
    assert "out of memory on rank 1 (cpu)" in failed["error"]
    assert rank not in group.pids()  # the group was stopped: the memory is back for sure
    again = submit(server, key, "tiny-ulysses", **SEEDED).json()["request_id"]
    assert completed(server, again)["status"] == "COMPLETED"


@contextlib.contextmanager
def capped(pid: int) -> Iterator[None]:
    """Cap `pid`'s address space at its size now (the soft limit, which the kernel enforces
    and anyone may raise again), and lift it after, so that a rank this test left running
    cannot fail the next test's loads."""
    used = address_space(pid)
    resource.prlimit(pid, resource.RLIMIT_AS, (used, resource.RLIM_INFINITY))
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(pid, resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2)


def address_space(pid: int) -> int:
    """A process's virtual memory size in bytes (VmSize)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmSize for {pid}")


def test_a_cancel_stops_every_rank_after_the_same_step_and_keeps_the_group(
    server: LiveServer,
) -> None:
    key = server.api_key
    group = group_of(server)
    response = submit(server, key, "tiny-ring", **{**SEEDED, "num_inference_steps": 50})
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    denoising(server, request_id)
    starts = group.starts
    cancel = httpx.post(f"{server.url}/v2/requests/{request_id}/cancel", headers=headers(key))
    assert cancel.status_code == 200, cancel.text
    failed = wait_for_status(server, key, request_id, "FAILED", timeout=120)
    assert failed["code"] == "cancelled"
    # Every rank stopped at the same step: the group is whole, not restarted.
    again = submit(server, key, "tiny-ring", **SEEDED).json()["request_id"]
    assert completed(server, again)["status"] == "COMPLETED"
    assert group.starts == starts and group.running


def test_rank_0_makes_the_previews_of_a_parallel_job(server: LiveServer) -> None:
    key = server.api_key
    response = submit(server, key, "tiny-previews", **{**SEEDED, "num_inference_steps": 50})
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    wait_until(
        lambda: (status_of(server, key, request_id).get("preview_step") or 0) >= 1, timeout=300
    )
    answer = httpx.get(f"{server.url}/v2/requests/{request_id}/preview", headers=headers(key))
    if answer.status_code == 404:  # it ended between the two reads
        assert "has ended" in answer.text, answer.text
    else:
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "image/jpeg"
    assert completed(server, request_id)["status"] == "COMPLETED"


def test_a_request_whose_tokens_do_not_divide_over_the_ranks_is_a_400_at_submit(
    server: LiveServer,
) -> None:
    """diffusers shards the token sequence evenly (it asserts so on every rank): a request
    whose sequence does not divide is refused before it is charged, naming the numbers. The
    tiny model generates 1280x720 as 160x96 (32 a token side: 5 x 3), 4 s as 33 frames (9
    latent frames): 135 tokens, odd, so not over 2 ranks; 1024x1792 (4 x 7 x 9) divides."""
    key = server.api_key
    refused = submit(server, key, "tiny-ulysses", size="1280x720", duration=4, seed=1)
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]
    assert "135 video tokens" in message and "over 2 ranks" in message, message
    assert submit(server, key, "tiny-ulysses", **SEEDED).status_code == 200
    cheap = {"size": "1280x720", "duration": 4, "num_inference_steps": 2}
    assert submit(server, key, "tiny-cfg", **cheap).status_code == 200

"""The pipelined worker's duty cycle: how much of a job's wall time the GPU is busy.

A stand-in for a GPU serves the model `gpu-standin`: its `generate` sleeps for `--seconds`
(time.sleep releases the GIL, as a CUDA call does) and returns realistic frames, a smooth
synthetic 832x480x81 clip (moving gradients, not noise, so libx264 works as it does on real
video). `--jobs` jobs are queued at once on a real server (HTTP, SQLite, local storage, MP4s),
once with the pipelined worker and once with VIDEOSERVE_WORKER_PIPELINE=false, side by side in
the same run. The figure is the steady-state wall time per job (the interval between
consecutive completions) over the model's time: 1.0 means the GPU never waits for the CPU.

    python -m bench.pipeline --jobs 6 --seconds 5
The stand-in lives here, never in the production catalog. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench._servers import free_port
from videoserve.jobs.keys import KeyStore
from videoserve.jobs.store import JobStore
from videoserve.models.backends.base import (
    Availability,
    Cancelled,
    Capabilities,
    GeneratedVideo,
    GenerationInputs,
    ProgressCallback,
    StopCheck,
    VideoBackend,
)
from videoserve.models.backends.tiny import TINY_NAME
from videoserve.models.params import VideoParams
from videoserve.models.registry import BackendSpec, ModelEntry, ModelRegistry, tiny_backend
from videoserve.settings import Settings

MODEL = "gpu-standin"
STEPS = 4


def smooth_clip(frames: int = 81, height: int = 480, width: int = 832) -> np.ndarray:
    """uint8 (T, H, W, 3): gradients that drift frame to frame, as a slow camera pan would."""
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    clip = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        shift = t / frames
        clip[t, ..., 0] = (255 * (0.5 + 0.5 * np.sin(6.0 * (x + shift)))).astype(np.uint8)
        clip[t, ..., 1] = (255 * (0.5 + 0.5 * np.cos(4.0 * (y - shift) + 2.0 * x))).astype(np.uint8)
        clip[t, ..., 2] = (255 * ((x + y) / 2 * (1 - shift) + shift / 2)).astype(np.uint8)
    return clip


class GpuStandIn:
    """A backend that holds no GIL while it "computes", and returns a real clip's frames."""

    schema = VideoParams
    capabilities = Capabilities()

    def __init__(self, seconds: float, clip: np.ndarray) -> None:
        self.name = MODEL
        self.seconds = seconds
        self.clip = clip

    def availability(self) -> Availability:
        return Availability(True)

    def check(self, params: VideoParams) -> None:
        pass

    def load(self) -> None:
        pass

    def unload(self) -> None:
        pass

    def generate(
        self,
        params: VideoParams,
        inputs: GenerationInputs,
        on_progress: ProgressCallback,
        should_stop: StopCheck,
    ) -> GeneratedVideo:
        # The model time is `seconds` in all, the frames' copy off the "GPU" included (a
        # fresh array per video, as a real one is): the steps sleep what the copy leaves.
        deadline = time.perf_counter() + self.seconds
        frames = self.clip.copy()
        for step in range(STEPS):
            if should_stop():
                raise Cancelled()
            left = (deadline - time.perf_counter()) / (STEPS - step)
            time.sleep(max(0.0, left))  # releases the GIL, like a kernel launch + sync
            on_progress(step + 1, STEPS)
        return GeneratedVideo(frames, fps=16.0, model=self.name, seed=0)


def registry(data_dir: Path, standin: GpuStandIn) -> ModelRegistry:
    tiny_dir = data_dir / "models" / TINY_NAME  # never built: no job runs the tiny model

    def build(spec: BackendSpec) -> VideoBackend:
        return standin if spec.entry.name == MODEL else tiny_backend(spec)

    entries = [
        ModelEntry(TINY_NAME, "tiny", str(tiny_dir)),
        ModelEntry(MODEL, "tiny", str(tiny_dir)),
    ]
    return ModelRegistry(entries, {"sora-2-pro": TINY_NAME}, factories={"tiny": build})


@dataclass(frozen=True)
class ModeResult:
    pipeline: bool
    jobs: int
    interval_s: float  # steady state: mean time between consecutive completions
    ratio: float  # interval / the model time set (--seconds)
    model_s: float  # median model time as the worker measured it (the copy included)
    ratio_measured: float  # interval / model_s: the worker's own cost, the stand-in's aside
    encode_s: float  # median encode time of one video
    first_job_s: float  # submit to first completion (model + media of one job)


def run_mode(pipeline: bool, jobs: int, seconds: float, clip: np.ndarray) -> ModeResult:
    import uvicorn

    from videoserve.api import create_app

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as folder:
        data_dir = Path(folder)
        settings = Settings(
            data_dir=data_dir,
            host="127.0.0.1",
            port=free_port(),
            worker_pipeline=pipeline,
            encoder="libx264",
        )
        standin = GpuStandIn(seconds, clip)
        app = create_app(settings, registry=registry(data_dir, standin))
        server = uvicorn.Server(
            uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while not server.started:
                if time.monotonic() > deadline or not thread.is_alive():
                    raise RuntimeError("server failed to start")
                time.sleep(0.05)
            key = asyncio.run(_admin_key(settings))
            url = f"http://{settings.host}:{settings.port}"
            begun = time.time()
            ids = _submit_all(url, key, jobs)
            _wait_all(url, key, ids, timeout=jobs * (seconds + 30) + 60)
            finished, encodes, models = asyncio.run(_finishes(settings, ids))
        finally:
            server.should_exit = True
            thread.join(timeout=60)
    finished.sort()
    interval = (finished[-1] - finished[0]) / (len(finished) - 1)
    model = statistics.median(models)
    return ModeResult(
        pipeline=pipeline,
        jobs=jobs,
        interval_s=round(interval, 3),
        ratio=round(interval / seconds, 4),
        model_s=round(model, 3),
        ratio_measured=round(interval / model, 4),
        encode_s=round(statistics.median(encodes), 3),
        first_job_s=round(finished[0] - begun, 3),
    )


async def _admin_key(settings: Settings) -> str:
    store = JobStore.open(settings.resolved_database_url())
    try:
        await store.migrate()
        return (await KeyStore(store.database).create("bench", admin=True))[1]
    finally:
        await store.close()


def _submit_all(url: str, key: str, jobs: int) -> list[str]:
    with httpx.Client(headers={"x-api-key": key}, timeout=60) as client:
        ids = []
        for i in range(jobs):
            response = client.post(f"{url}/v2/{MODEL}", json={"prompt": f"job {i}", "duration": 4})
            response.raise_for_status()
            ids.append(response.json()["request_id"])
        return ids


def _wait_all(url: str, key: str, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(headers={"x-api-key": key}, timeout=60) as client:
        for request_id in ids:
            while True:
                body = client.get(f"{url}/v2/requests/{request_id}/status").json()
                if body["status"] == "COMPLETED":
                    break
                if body["status"] == "FAILED" or time.monotonic() > deadline:
                    raise RuntimeError(f"job {request_id}: {body}")
                time.sleep(0.2)


async def _finishes(
    settings: Settings, ids: list[str]
) -> tuple[list[float], list[float], list[float]]:
    """Each job's completion time, encode time and model time, from the store."""
    store = JobStore.open(settings.resolved_database_url())
    try:
        finished, encodes, models = [], [], []
        for request_id in ids:
            job = await store.get(request_id)
            assert job is not None and job.finished_at is not None and job.result is not None
            finished.append(job.finished_at)
            encodes.append(job.result.encode_time or 0.0)
            models.append(job.result.inference_time or 0.0)
        return finished, encodes, models
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=6, help="jobs per mode (at least 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="model time per job")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    if args.jobs < 3:
        parser.error("--jobs must be at least 3 (the first completion is not steady state)")
    clip = smooth_clip()
    results = [run_mode(p, args.jobs, args.seconds, clip) for p in (True, False)]
    report: dict[str, Any] = {
        "command": f"python -m bench.pipeline --jobs {args.jobs} --seconds {args.seconds:g}",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "frames": list(clip.shape),
        "model_seconds": args.seconds,
        "goal_ratio": 1.03,
        "pipelined": results[0].__dict__,
        "sequential": results[1].__dict__,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

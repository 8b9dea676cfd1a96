"""Real processes: `videoserve serve` / `worker` / `generate` / `keys` as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_until

VIDEOSERVE = [sys.executable, "-m", "videoserve.cli"]


class Processes:
    """Starts processes with a shared environment and kills any left at the end."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, *args: str, name: str, **env: str) -> tuple[subprocess.Popen, Path]:
        log = self.tmp_path / f"{name}.log"
        process = subprocess.Popen(
            [*VIDEOSERVE, *args],
            env={**self.env, **env},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append((process, log))
        return process, log

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*VIDEOSERVE, *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )

    def serve(self, name: str = "api", **env: str) -> str:
        port = free_port()
        process, log = self.start("serve", "--port", str(port), name=name, **env)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"server exited: {log.read_text()}")
            try:
                return httpx.get(url + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=90, interval=0.1)
        return url

    def stop_all(self) -> None:
        for process, _ in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


@pytest.fixture
def processes(tmp_path: Path, model_cache: Path) -> Iterator[Processes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOSERVE_")}
    env |= {
        "VIDEOSERVE_DATA_DIR": str(tmp_path / "data"),
        "VIDEOSERVE_MODEL_CACHE_DIR": str(model_cache),
        "VIDEOSERVE_ALIASES": "sora-2-pro=tiny-t2v",
        "VIDEOSERVE_POLL_INTERVAL_SECONDS": "0.2",
        "PYTHONUNBUFFERED": "1",
    }
    procs = Processes(tmp_path, env)
    yield procs
    procs.stop_all()

"""Processes the benchmarks measure: a real `videoserve serve`, and a bare Starlette baseline."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def videoserve_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOSERVE_")}
    # No rate limits: the benchmarks measure the platform, not the limiter.
    env |= {"VIDEOSERVE_DATA_DIR": str(data_dir), "VIDEOSERVE_LOG_LEVEL": "WARNING"}
    env |= {"VIDEOSERVE_RATE_LIMIT": "", "VIDEOSERVE_STATUS_RATE_LIMIT": ""}
    env |= extra
    return env


@contextlib.contextmanager
def baseline_source(ref: str | None) -> Iterator[Path | None]:
    """The `src` folder of git revision `ref`, unpacked into a temporary folder (None: none).

    Why: a figure and its baseline measured side by side in one run, on one loaded machine,
    are comparable; figures from separate runs are not. A server started with
    `videoserve_env(..., PYTHONPATH=str(path))` runs that revision's code."""
    if ref is None:
        yield None
        return
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "src"], capture_output=True, check=True
    ).stdout
    with tempfile.TemporaryDirectory(prefix="videoserve-baseline-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp) / "src"


CHECKOUT_SRC = Path(__file__).resolve().parents[1] / "src"


def code_env(src: Path | None) -> dict[str, str]:
    """Environment entries that make a server run the code in `src` (None: this checkout's)."""
    return {"PYTHONPATH": str(src or CHECKOUT_SRC)}


def cpu_seconds(pid: int) -> float:
    """The process's CPU time so far (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def create_key(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "videoserve.cli", "keys", "create", "--name", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def start_videoserve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "videoserve.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    wait_ready(f"http://127.0.0.1:{port}/healthz", process)
    return process


# The bare endpoint runs under the uvicorn options `videoserve serve` runs with (its http
# protocol with the slow-client guard, the connection cap, proxy headers, the log level), so
# that the ratio compares the app and nothing else; `plain` runs it on uvicorn's defaults.
BARE_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
import uvicorn, sys
options = {}
if sys.argv[2] == "ours":
    from videoserve.api.server import uvicorn_options
    from videoserve.settings import Settings
    options = uvicorn_options(Settings())
BODY = {"request_id": "video_0123456789abcdef0123456789abcdef", "status": "COMPLETED",
        "model": "tiny-t2v", "created_at": "2026-11-25T00:00:00Z", "progress": 100}
async def status(request):
    return JSONResponse(BODY)
app = Starlette(routes=[Route("/v2/requests/{id}/status", status)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            proxy_headers=True, **options)
"""


def start_bare(port: int, *, plain: bool = False) -> subprocess.Popen:
    """The bare Starlette endpoint, under our uvicorn options (`plain`: uvicorn's defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOSERVE_")}
    process = subprocess.Popen(
        [sys.executable, "-c", BARE_APP, str(port), "plain" if plain else "ours"],
        env=env | code_env(None),
    )
    wait_ready(f"http://127.0.0.1:{port}/v2/requests/x/status", process)
    return process

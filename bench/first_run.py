"""A newcomer's first and second start: `./scripts/serve` in a fresh clone, timed until /readyz.

The first start creates `.venv`, installs `videoserve[worker]` and builds and loads the built-in
models; the second finds the install up to date (the stamp in `.venv`) and only starts the
server and loads the models again. Each is timed from the command until `/readyz` answers 200
(the default models loaded), and until the port first answers at all ("listening"). Then one
`tiny-t2v` video is made, then another: the first should cost no model build.

    python -m bench.first_run                 # a clone of this checkout's HEAD in a temp folder
    python -m bench.first_run --second-only --clone /tmp/vs-clone   # reuse a clone set up before

pip downloads on the first start unless its cache holds the wheels. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench._servers import free_port

REPO = Path(__file__).resolve().parents[1]


def _clean_env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VIDEOSERVE_") and k not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }
    return env | {"VIDEOSERVE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}


def start(
    clone: Path, data_dir: Path, log: Path, timeout: float, key: str | None
) -> tuple[dict[str, float], str | None]:
    """Run `./scripts/serve` once; seconds until it listens, until /readyz is 200 and until
    one video is made (with `key`, or the key a first start prints); and that key."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    begun = time.monotonic()
    process = subprocess.Popen(
        ["./scripts/serve", "--port", str(port)],
        cwd=clone,
        env=_clean_env(data_dir),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    listening = ready = None
    try:
        deadline = begun + timeout
        while ready is None:
            if process.poll() is not None:
                raise RuntimeError(f"./scripts/serve exited: {log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready within {timeout}s: {log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                status = httpx.get(f"{url}/readyz", timeout=1).status_code
                listening = listening or time.monotonic() - begun
                if status == 200:
                    ready = time.monotonic() - begun
            time.sleep(0.05)
        key = key or _key(log)
        video = _first_video(url, key)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    return {"listening_s": round(listening or 0, 2), "ready_s": round(ready, 2), **video}, key


def _key(log: Path) -> str | None:
    for word in log.read_text().split():
        if word.startswith("VIDEOSERVE_API_KEY="):
            return word.split("=", 1)[1]
    return None


def _first_video(url: str, key: str | None) -> dict[str, float]:
    """Seconds from submit to COMPLETED for the first and the second 4 s tiny-t2v video after
    ready (only with a key to use): the first should cost no more than the second."""
    if key is None:
        return {}
    headers = {"x-api-key": key}
    figures = {}
    for which in ("first", "second"):
        begun = time.monotonic()
        submitted = httpx.post(
            f"{url}/v2/tiny-t2v", json={"prompt": "a fox", "duration": 4}, headers=headers
        ).json()
        while True:
            state = httpx.get(submitted["status_url"], headers=headers).json()["status"]
            if state in ("COMPLETED", "FAILED"):
                break
            time.sleep(0.1)
        figures[f"{which}_video_s"] = round(time.monotonic() - begun, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clone", type=Path, help="where to clone (default: a temp folder)")
    parser.add_argument("--second-only", action="store_true", help="the clone is set up")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--api-key", help="with --second-only: a key of that clone's server")
    args = parser.parse_args()
    clone = args.clone or Path(tempfile.mkdtemp(prefix="videoserve-first-run-")) / "videoserve"
    if not args.second_only:
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        subprocess.run(
            ["git", "-C", str(clone), "checkout", "-q", _head()], check=True, capture_output=True
        )
    data_dir = clone / "bench-data"
    figures: dict[str, object] = {"clone": str(clone)}
    key = args.api_key
    if not args.second_only:
        figures["first_start"], key = start(clone, data_dir, clone / "first.log", args.timeout, key)
    figures["second_start"], _ = start(clone, data_dir, clone / "second.log", args.timeout, key)
    print(json.dumps(figures, indent=2))


def _head() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


if __name__ == "__main__":
    main()

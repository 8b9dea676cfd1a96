"""Each install in a fresh venv, as a user gets it from `pip install`: the bare client, and
`[server]` (the API without torch). The full `[worker]` install is the test env itself.

pip's cache is shared (PIP_CACHE_DIR, else pip's default), so after the first run these
installs come from the cache; the first run downloads from PyPI. The wheel is built once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, free_port, start_server, wait_until
from videoserve.settings import Settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "fastapi")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """videoserve's wheel, built once from a copy of the source (so pip writes nothing into
    the working tree under test)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(
        REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / file, source / file)
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(source))
    (built,) = (tmp / "dist").glob("videoserve-*.whl")
    return built


def _pip(*args: str) -> None:
    # The test env's own pip drives every install (`--python`), so the venvs need no pip of
    # their own (ensurepip costs seconds per venv).
    subprocess.run(
        [sys.executable, "-m", "pip", "-q", *args],
        check=True,
        timeout=600,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )


def _fresh_venv(tmp: Path, wheel: Path, extra: str) -> Path:
    """A new venv with `pip install videoserve<extra>` from the wheel; returns its bin folder."""
    env_dir = tmp / (extra.strip("[]") or "client")
    venv.create(env_dir, with_pip=False)
    bin_dir = env_dir / "bin"
    _pip("--python", str(bin_dir / "python"), "install", f"videoserve{extra} @ {wheel.as_uri()}")
    return bin_dir


def _importable(bin_dir: Path, module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([bin_dir / "python", "-c", probe], timeout=60).returncode == 0


def _clean_env(**extra: str) -> dict[str, str]:
    # Nothing of the test env leaks in: no PYTHONPATH to our source, no VIDEOSERVE_ settings.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VIDEOSERVE_") and k not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }
    return env | {"PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture
def live(tmp_path: Path, model_cache: Path) -> Iterator[LiveServer]:
    """A server with the embedded worker, started from the test env (the full install)."""
    server = start_server(
        Settings(
            data_dir=tmp_path / "data",
            host="127.0.0.1",
            port=free_port(),
            model_cache_dir=model_cache,
            poll_interval_seconds=0.2,
            aliases={"sora-2-pro": "tiny-t2v"},
        )
    )
    yield server
    server.stop()


def test_the_bare_install_is_the_client_and_its_cli_commands(
    tmp_path: Path, wheel: Path, live: LiveServer
) -> None:
    bin_dir = _fresh_venv(tmp_path, wheel, "")
    assert [m for m in HEAVY if _importable(bin_dir, m)] == []
    assert _importable(bin_dir, "httpx") and _importable(bin_dir, "typer")

    script = (
        "import sys, videoserve\n"
        "with videoserve.Client(api_key=sys.argv[2], base_url=sys.argv[1]) as c:\n"
        "    r = c.run('sora-2-pro', prompt='a kite', duration=4)\n"
        "    print(r['status'], videoserve.__version__)\n"
    )
    ran = subprocess.run(
        [bin_dir / "python", "-c", script, live.url, live.api_key],
        capture_output=True,
        text=True,
        timeout=300,
        env=_clean_env(),
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["COMPLETED", _version_of_source()]

    cli = _clean_env(VIDEOSERVE_API_KEY=live.api_key)
    listed = subprocess.run(
        [bin_dir / "videoserve", "models", "--url", live.url],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli,
    )
    assert listed.returncode == 0, listed.stderr
    assert "tiny-t2v" in listed.stdout

    out = tmp_path / "out.mp4"
    made = subprocess.run(
        [
            bin_dir / "videoserve",
            "generate",
            "a fox",
            "--url",
            live.url,
            "--duration",
            "4",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli,
    )
    assert made.returncode == 0, made.stderr
    assert out.read_bytes()[4:8] == b"ftyp"  # an MP4 came back

    serve = subprocess.run(
        [bin_dir / "videoserve", "serve"], capture_output=True, text=True, timeout=60, env=cli
    )
    assert serve.returncode == 1
    assert 'pip install "videoserve[server]"' in " ".join(serve.stderr.split())

    # Without --url, `models` reads this host's configuration: it names the install, or --url.
    local = subprocess.run(
        [bin_dir / "videoserve", "models"], capture_output=True, text=True, timeout=60, env=cli
    )
    assert local.returncode == 1
    assert 'pip install "videoserve[server]"' in local.stderr
    assert "videoserve models --url" in local.stderr
    assert "Traceback" not in local.stderr


def test_the_server_install_serves_the_api_without_torch(
    tmp_path: Path, wheel: Path, model_cache: Path
) -> None:
    bin_dir = _fresh_venv(tmp_path, wheel, "[server]")
    assert [m for m in ("torch", "diffusers") if _importable(bin_dir, m)] == []
    assert _importable(bin_dir, "fastapi")
    env = _clean_env(
        VIDEOSERVE_DATA_DIR=str(tmp_path / "data"),
        VIDEOSERVE_MODEL_CACHE_DIR=str(model_cache),
        VIDEOSERVE_ALIASES="sora-2-pro=tiny-t2v",
        VIDEOSERVE_POLL_INTERVAL_SECONDS="0.2",
        VIDEOSERVE_AUTH="false",
    )

    # This host cannot run models: `models` lists each unavailable, saying which install can.
    listed = subprocess.run(
        [bin_dir / "videoserve", "models"], capture_output=True, text=True, timeout=60, env=env
    )
    assert listed.returncode == 0, listed.stderr
    rows: dict[str, list[str]] = {}  # model -> its cells, the note's wrapped lines joined
    for line in listed.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) == 5 and cells[0]:
            rows[cells[0]] = cells
        elif len(cells) == 5 and rows:
            rows[list(rows)[-1]][4] += " " + cells[4]
    for model in ("tiny-t2v", "tiny-t2av"):
        assert rows[model][3] == "no"
        assert "needs the [worker] install" in rows[model][4]
        assert 'pip install "videoserve[worker]"' in rows[model][4]

    # With the in-process worker on (the default) it refuses and names the fix.
    refused = subprocess.run(
        [bin_dir / "videoserve", "serve"], capture_output=True, text=True, timeout=60, env=env
    )
    assert refused.returncode == 1
    said = " ".join(refused.stderr.split())
    assert 'pip install "videoserve[worker]"' in said
    assert "VIDEOSERVE_EMBEDDED_WORKER=false" in said

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "api.log"
    api = subprocess.Popen(
        [bin_dir / "videoserve", "serve", "--port", str(port)],
        env={**env, "VIDEOSERVE_EMBEDDED_WORKER": "false"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    worker = None
    try:
        wait_until(lambda: _answers(url, api, log), timeout=90, interval=0.1)
        models = httpx.get(f"{url}/v1/models").json()["data"]
        assert "tiny-t2v" in {m["id"] for m in models}
        submitted = httpx.post(f"{url}/v2/sora-2-pro", json={"prompt": "a boat", "duration": 4})
        assert submitted.status_code == 200, submitted.text
        status_url = submitted.json()["status_url"]
        assert httpx.get(status_url).json()["status"] == "QUEUED"  # nobody here can run it

        # A worker from the full install (this test env) claims it from the shared database.
        worker = subprocess.Popen(
            [sys.executable, "-m", "videoserve.cli", "worker"],
            env={**env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
            stdout=(tmp_path / "worker.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        wait_until(
            lambda: httpx.get(status_url).json()["status"] == "COMPLETED", timeout=180, interval=0.2
        )
    finally:
        for process in (api, worker):
            if process is not None:
                process.terminate()
                process.wait(timeout=60)


def _answers(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"server exited: {log.read_text()}")
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _version_of_source() -> str:
    import videoserve

    return videoserve.__version__

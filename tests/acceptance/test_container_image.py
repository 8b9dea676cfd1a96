"""deploy/Containerfile: build the CPU image with podman, run it, and make one video through it.

The API container answers /readyz, makes a tiny-t2v video over HTTP (our client, from this
machine, to a port published on 127.0.0.1 only) and reports healthy through the image's own
HEALTHCHECK; a worker container on the same data volume reports healthy through its probes.

Base image: VIDEOSERVE_TEST_BASE_IMAGE when set; else Debian bookworm from podman's storage
(docker.io/library/debian:bookworm-slim or localhost/debian:bookworm), pulled from the registry
when one is reachable, else made with deploy/debian-base (debootstrap, root). The build reuses
podman's layer cache, so a run after a code change rebuilds only the last layers. PyTorch comes
from a local wheel when one lies in VIDEOSERVE_TEST_WHEELS (default /opt/wheels), else from
PyTorch's CPU index. Skipped only where podman cannot run at all.

Measured on 2 shared cores (load ~8): cold, with nothing in podman's storage (debootstrap, the
whole build, the run), 7 min 41 s; warm, nothing changed, 45 s (build 5 s, run 38 s); after a
change to src/, the source layers rebuild in about 17 s more.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import pytest

import videoserve
from tests.acceptance.deploy_files import DEPLOY, ROOT
from tests.conftest import free_port, wait_until

IMAGE = "localhost/videoserve-test:cpu"
REGISTRY_BASE = "docker.io/library/debian:bookworm-slim"
LOCAL_BASE = "localhost/debian:bookworm"
TORCH_VERSION = "2.13.0"
# runc may not raise rlimits beyond the host's; explicit limits run everywhere.
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]

# Cold (debootstrap and the whole build) it took 7 min 41 s on a loaded host; see the docstring.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.stderr[-3000:]}")
    return done


def usable_podman() -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/test installs it where it runs as root)")
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {info.stderr.strip()[-500:]}")


def base_image() -> str:
    """A Debian bookworm image in podman's storage: found, pulled, or made."""
    wanted = os.environ.get("VIDEOSERVE_TEST_BASE_IMAGE")
    if wanted:
        if podman("image", "exists", wanted, check=False).returncode != 0:
            podman("pull", wanted, timeout=600)
        return wanted
    for image in (REGISTRY_BASE, LOCAL_BASE):
        if podman("image", "exists", image, check=False).returncode == 0:
            return image
    if _pulled(REGISTRY_BASE):
        return REGISTRY_BASE
    made = subprocess.run(
        [str(DEPLOY / "debian-base"), LOCAL_BASE],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert made.returncode == 0, f"no registry, and debootstrap failed: {made.stdout}{made.stderr}"
    return LOCAL_BASE


def _pulled(image: str) -> bool:
    """Whether a registry gave `image` within two minutes (bookworm-slim is ~30 MB). Why a
    bound: where the network drops a registry's packets instead of refusing them, an
    unbounded pull waits on its retries, and the build after it would wait too."""
    try:
        return podman("pull", image, timeout=120, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def build_arguments() -> list[str]:
    """The machine's own pip setup, for this build only: its CA bundle, its index, its wheels."""
    args: list[str] = []
    # This host's CA bundle: it trusts whatever proxy stands between this host and PyPI.
    cert = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    if Path(cert).is_file():
        args += ["-v", f"{cert}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        value = os.environ.get(name, "")
        if value and "file:" not in value:  # a folder on this host means nothing inside
            args += ["--build-arg", f"{name}={value}"]
    wheels = Path(os.environ.get("VIDEOSERVE_TEST_WHEELS", "/opt/wheels"))
    if list(wheels.glob(f"torch-{TORCH_VERSION}+cpu-cp311-*.whl")):
        args += ["-v", f"{wheels}:/wheels:ro"]
    return args


@pytest.fixture(scope="module")
def image() -> str:
    usable_podman()
    built = podman(
        "build",
        "-f",
        str(DEPLOY / "Containerfile"),
        "--format",
        "docker",
        "--build-arg",
        f"BASE_IMAGE={base_image()}",
        "--build-arg",
        "VARIANT=cpu",
        *build_arguments(),
        *ULIMITS,
        "-t",
        IMAGE,
        str(ROOT),
        timeout=1800,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    return IMAGE


class Containers:
    """Containers of one test, removed with their anonymous volumes at the end."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.volume = f"videoserve-test-{uuid.uuid4().hex[:8]}"

    def run(self, image: str, *args: str, name: str, options: tuple[str, ...] = ()) -> str:
        full = f"{self.volume}-{name}"
        self.names.append(full)
        podman(
            "run", "-d", "--name", full, *ULIMITS, *options, "-v", f"{self.volume}:/data",
            image, *args,
        )  # fmt: skip
        return full

    def logs(self, name: str) -> str:
        done = podman("logs", name, check=False)
        return done.stdout + done.stderr

    def running(self, name: str) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", name, check=False)
        if state.stdout.strip() != "true":
            raise AssertionError(f"{name} stopped: {self.logs(name)[-3000:]}")
        return True

    def remove(self) -> None:
        for name in self.names:
            podman("rm", "--force", "--time", "0", "--volumes", name, check=False)
        podman("volume", "rm", "-f", self.volume, check=False)


@pytest.fixture
def containers() -> Iterator[Containers]:
    made = Containers()
    yield made
    made.remove()


def healthy(name: str, containers: Containers) -> bool:
    containers.running(name)
    return podman("healthcheck", "run", name, check=False).returncode == 0


def check_configuration(image: str) -> None:
    """What a deployment relies on: entry point, user, mounts, settings, health check."""
    (inspected,) = json.loads(podman("image", "inspect", image).stdout)
    settings = inspected["Config"]
    assert settings["Entrypoint"] == ["videoserve"] and settings["Cmd"] == ["serve"]
    assert settings["User"] == "10001:10001"
    assert {"/data", "/cache/huggingface"} <= set(settings["Volumes"])
    env = dict(item.split("=", 1) for item in settings["Env"])
    assert env["VIDEOSERVE_DATA_DIR"] == "/data" and env["HF_HOME"] == "/cache/huggingface"
    assert env["VIDEOSERVE_MODELS"] == "/etc/videoserve/models.toml"
    assert env["VIDEOSERVE_WORKER_METRICS_HOST"] == "0.0.0.0"
    assert inspected["Healthcheck"]["Test"] == ["CMD", "videoserve-healthcheck"]
    # The build's own CA bundle and index are arguments of the build, not the image's settings.
    assert not {"PIP_CERT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"} & set(env)


def test_the_cpu_image_serves_a_video_and_reports_healthy(
    image: str, containers: Containers, tmp_path: Path
) -> None:
    # One test, so that pytest-xdist never builds the image in two processes at once.
    check_configuration(image)
    port = free_port()
    # As the Kubernetes manifests run it: a read-only root filesystem (podman adds a /tmp).
    published = ("--publish", f"127.0.0.1:{port}:8000", "--read-only")
    api = containers.run(image, "serve", name="api", options=published)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        containers.running(api)
        try:
            return httpx.get(url + "/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, timeout=300, interval=0.5)
    assert podman("exec", api, "id", "-u").stdout.strip() == "10001"
    key = podman("exec", api, "videoserve", "keys", "create", "--name", "image-test")
    api_key = key.stdout.strip().splitlines()[-1]
    with videoserve.Client(api_key=api_key, base_url=url) as client:
        job = client.submit_async("tiny-t2v", prompt="a red fox in snow", duration=4)
        result = job.wait(timeout=600, interval=0.5)
        assert result["status"] == "COMPLETED", result
        video = job.download(tmp_path / "fox.mp4")
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert sum(1 for _ in container.decode(stream)) == result["frames"]
    wait_until(lambda: healthy(api, containers), timeout=120, interval=1)

    # A worker from the same image, on the same data folder: its health check asks its probes.
    worker = containers.run(image, "worker", name="worker")
    wait_until(lambda: healthy(worker, containers), timeout=300, interval=1)
    ready_body = podman(
        "exec", worker, "python3", "-c",
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9100/readyz').read().decode())",
    ).stdout  # fmt: skip
    assert '"status": "ready"' in ready_body

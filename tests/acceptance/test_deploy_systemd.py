"""deploy/systemd: `systemd-analyze verify` accepts the API unit and an instance of the worker
template, with no warning; where systemd-analyze is not installed, the units are parsed and
checked for what verify would catch first."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.deploy_files import DEPLOY, env_file, unknown_settings

SYSTEMD = DEPLOY / "systemd"
UNITS = ["videoserve-api.service", "videoserve-worker@.service"]
INSTALLED = "/opt/videoserve/bin/videoserve"


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of (key, value) pairs; keys may repeat (Environment=), as systemd allows."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep, f"line {number}: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (test_units_parse checks the syntax)")
    # verify checks that ExecStart's program exists: point the units at this environment's
    # videoserve instead of /opt/videoserve's, and change nothing else.
    here = Path(sys.prefix) / "bin" / "videoserve"
    assert here.is_file(), here
    for unit in UNITS:
        text = (SYSTEMD / unit).read_text()
        assert INSTALLED in text
        (tmp_path / unit).write_text(text.replace(INSTALLED, str(here)))
    verified = subprocess.run(
        [
            analyze,
            "verify",
            str(tmp_path / UNITS[0]),
            str(tmp_path / "videoserve-worker@0.service"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Unknown keys and bad values are warnings with exit status 0: any output is a failure.
    assert verified.returncode == 0 and verified.stderr == verified.stdout == "", verified.stderr


def test_units_parse_and_say_what_a_deployment_needs() -> None:
    api = parse_unit((SYSTEMD / UNITS[0]).read_text())
    worker = parse_unit((SYSTEMD / UNITS[1]).read_text())
    for unit in (api, worker):
        assert set(unit) == {"Unit", "Service", "Install"}
        service = dict(unit["Service"])
        assert service["User"] == "videoserve"
        assert service["EnvironmentFile"] == "/etc/videoserve/videoserve.env"
        assert INSTALLED in service["ExecStart"]
        assert dict(unit["Install"])["WantedBy"] == "multi-user.target"
    assert dict(api["Service"])["ExecStart"] == f"{INSTALLED} serve"
    environment = [value for key, value in api["Service"] if key == "Environment"]
    assert "VIDEOSERVE_EMBEDDED_WORKER=false" in environment
    service = dict(worker["Service"])
    assert service["ExecStart"].endswith(f"{INSTALLED} worker'")
    worker_env = [value for key, value in worker["Service"] if key == "Environment"]
    assert "CUDA_VISIBLE_DEVICES=%i" in worker_env  # the instance is the GPU
    # The worker drains for VIDEOSERVE_DRAIN_SECONDS (600 by default) on SIGTERM.
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"].removesuffix("s")) > 600


def test_the_example_environment_holds_only_real_settings() -> None:
    example = env_file(SYSTEMD / "env.example")
    assert unknown_settings(example) == []
    for unit in UNITS:
        for key, value in parse_unit((SYSTEMD / unit).read_text())["Service"]:
            if key == "Environment":
                assert unknown_settings([value.partition("=")[0]]) == [], unit

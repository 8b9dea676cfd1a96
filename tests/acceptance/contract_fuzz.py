"""Run inside a private network namespace by test_openapi_contract.py: a live server and
schemathesis against its `/openapi.json`. Exits with schemathesis's status.

Usage: python -m tests.acceptance.contract_fuzz WORK_DIR MODEL_CACHE [schemathesis options]
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import create_key, free_port, start_server
from videoserve.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def assert_no_route_out() -> None:
    """The fuzzer sends URLs (webhooks, input_reference) the server may try: prove that no
    packet can leave before starting. Connecting with no route fails without sending one."""
    try:
        socket.create_connection(("192.0.2.1", 80), timeout=1).close()
    except OSError:
        return
    raise SystemExit("the network namespace has a route out: refusing to fuzz")


def main(work: Path, model_cache: Path, options: list[str]) -> int:
    assert_no_route_out()
    settings = Settings(
        data_dir=work / "data",
        host="127.0.0.1",
        port=free_port(),
        model_cache_dir=model_cache,
        aliases={"sora-2-pro": "tiny-t2v"},
        # Jobs stay queued: the contract is the API's, and a worker would spend the time budget.
        embedded_worker=False,
        sync_timeout_seconds=1,  # so the blocking POST /v1/{model} answers its 504 at once
    )
    server = start_server(settings)
    try:
        admin = create_key(settings, "fuzz-admin", admin=True)  # so admin routes answer 200 too
        command = [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"x-api-key: {admin}",
            "--generation-database",
            "none",
            *options,
        ]
        # Our hooks (contract_hooks.py: one schemathesis false positive dropped), importable
        # from the repository's root whatever the working folder.
        env = os.environ | {
            "SCHEMATHESIS_HOOKS": "tests.acceptance.contract_hooks",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        return subprocess.run(command, cwd=work, env=env, timeout=600).returncode
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]))

"""The bare install's modules import nothing of the server: checked here in a subprocess
that refuses the server's and worker's packages, in seconds (the fresh-venv proof is
tests/acceptance/test_installs.py, marked slow)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SERVER_ONLY = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "pydantic_settings", "av", "torch")

PROBE = textwrap.dedent(
    """
    import importlib.abc, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not part of the client install")
            return None

    sys.meta_path.insert(0, Refuse())
    import videoserve, videoserve.cli.main, videoserve.cli.generate
    from typer.testing import CliRunner  # stderr is part of output since click 8.2

    for args in (["--help"], ["models", "--help"], ["generate", "--help"]):
        result = CliRunner().invoke(videoserve.cli.main.app, args)
        assert result.exit_code == 0, (args, result.output, result.exception)
    refused = CliRunner().invoke(videoserve.cli.main.app, ["serve"])
    assert refused.exit_code == 1 and isinstance(refused.exception, SystemExit), refused
    assert 'pip install "videoserve[server]"' in " ".join(refused.output.split())
    print("ok", videoserve.Client.__name__)
    """
)


def test_the_client_and_cli_import_without_server_packages() -> None:
    ran = subprocess.run(
        [sys.executable, "-c", f"BLOCKED = {SERVER_ONLY!r}\n" + PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["ok", "Client"]

"""A first run as a new user does it (issue 16, item 7): `keys create` from any folder finds
the same database as the server, says on stderr which one, and says plainly when it had to
create it; the key stays the last line of stdout."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.acceptance.conftest import VIDEOSERVE


def _run(*args: str, cwd: Path, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VIDEOSERVE_", "XDG_"))}
    return subprocess.run(
        [*VIDEOSERVE, *args],
        cwd=cwd,
        env={**base, "HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_keys_create_uses_one_database_whatever_the_folder(tmp_path: Path) -> None:
    home, first, second = tmp_path / "home", tmp_path / "a", tmp_path / "b"
    for folder in (home, first, second):
        folder.mkdir()
    database = home / ".local" / "share" / "videoserve" / "videoserve.db"

    created = _run("keys", "create", "--name", "alice", cwd=first, home=home)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().splitlines()[-1].startswith("vs_")
    stderr = " ".join(created.stderr.split())  # rich wraps long lines
    assert f"no database at {database}: creating a new, empty one" in stderr
    assert "--data-dir" in stderr and "VIDEOSERVE_DATA_DIR" in stderr
    assert database.is_file() and not (first / ".videoserve").exists()

    again = _run("keys", "create", "--name", "bob", cwd=second, home=home)
    assert again.returncode == 0, again.stderr
    assert f"using the database {database}" in " ".join(again.stderr.split())
    assert "creating" not in again.stderr
    listing = _run("keys", "list", cwd=second, home=home)
    assert "alice" in listing.stdout and "bob" in listing.stdout


def test_an_existing_local_folder_and_an_explicit_setting_are_kept(tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    (project / ".videoserve").mkdir(parents=True)
    local = _run("keys", "create", "--name", "old", cwd=project, home=home)
    assert local.returncode == 0, local.stderr
    assert (project / ".videoserve" / "videoserve.db").is_file()
    explicit = tmp_path / "explicit"
    chosen = _run(
        "keys", "create", "--name", "x", cwd=project, home=home, VIDEOSERVE_DATA_DIR=str(explicit)
    )
    assert chosen.returncode == 0, chosen.stderr
    assert (explicit / "videoserve.db").is_file()
    assert not (home / ".local" / "share" / "videoserve").exists()


def test_an_unstorable_key_name_is_refused_in_words(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    refused = _run("keys", "create", "--name", "n" * 201, cwd=tmp_path, home=home)
    assert refused.returncode != 0
    assert "name: must be at most 200 characters" in " ".join(refused.stderr.split())
    assert "Traceback" not in refused.stderr

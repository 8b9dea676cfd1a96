"""A DNS server that never answers costs only the requests that asked it (issue 23).

Twelve submits whose webhook (then input_reference) hosts never resolve, then another key's
submit whose host does: the latter answers promptly, and the twelve answer a 400 naming the
resolver's timeout, never a 500. Before the fix, lookups shared the loop's few default-executor
threads, and the other key's check waited ~10 s per round of stuck lookups.

Inside `unshare --net --mount` (root, as CI runs): /etc/resolv.conf names a silent DNS stub on
127.0.0.1, /etc/hosts names `public.example` as a global address put on the namespace's lo,
and there is no route out, so no packet can leave this machine. PostgreSQL is reached through
its Unix socket, which a network namespace does not hide.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration import resolver_starvation as child

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PG_SOCKET_DIR = Path(os.environ.get("VIDEOSERVE_TEST_PG_SOCKET_DIR", "/var/run/postgresql"))
# glibc's resolver, asked for a name the stub never answers, gives up after timeout x attempts
# (20 s here): longer than the fix's own timeout, and than the bound the other key must meet.
RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:10 attempts:2\n"
HOSTS = f"127.0.0.1 localhost\n::1 localhost\n{child.PUBLIC_ADDRESS} {child.PUBLIC_NAME}\n"
PROMPT_SECONDS = 5.0  # generous on a busy 2-core machine; the starved check took 10 s or more


@pytest.fixture
def namespace_database_url(database_url: str) -> str:
    """The test's database as the namespace reaches it: SQLite as is, PostgreSQL by socket."""
    if database_url.startswith("sqlite"):
        return database_url
    if not (PG_SOCKET_DIR / ".s.PGSQL.5432").exists():
        pytest.skip(f"no PostgreSQL Unix socket in {PG_SOCKET_DIR}")
    name = database_url.rsplit("/", 1)[1]
    return f"postgresql://postgres@/{name}?host={PG_SOCKET_DIR}"


def test_unanswered_lookups_do_not_delay_another_keys_submit(
    tmp_path: Path, model_cache: Path, namespace_database_url: str
) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private network namespace (CI runs as root)")
    (tmp_path / "resolv.conf").write_text(RESOLV_CONF)
    (tmp_path / "hosts").write_text(HOSTS)
    setup = (
        f"ip link set lo up && ip addr add {child.PUBLIC_ADDRESS}/32 dev lo"
        f" && mount --bind {tmp_path}/resolv.conf /etc/resolv.conf"
        f" && mount --bind {tmp_path}/hosts /etc/hosts"
        ' && exec "$@"'
    )
    command = [sys.executable, "-m", "tests.integration.resolver_starvation"]
    command += [str(tmp_path / "work"), str(model_cache), namespace_database_url]
    ran = subprocess.run(
        ["unshare", "--net", "--mount", "--", "sh", "-c", setup, "sh", *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    report = ran.stdout[-6000:] + ran.stderr[-6000:]
    assert ran.returncode == 0, report
    results = {line["purpose"]: line for line in map(json.loads, ran.stdout.splitlines())}
    assert set(results) == {"webhook", "input_reference"}, report

    for purpose, result in results.items():
        # All twelve lookups were waiting on the DNS server at once, none queued behind another.
        assert result["in_flight"] == child.FLOOD, (purpose, result)
        good = result["good"]
        assert good["status"] == 200, (purpose, good)
        assert good["seconds"] < PROMPT_SECONDS, (purpose, good)
        for answer in result["flood"]:
            assert answer["status"] == 400, (purpose, answer)
            assert f"could not be resolved in {child.RESOLVE_TIMEOUT:g} s" in answer["error"]
            assert ".slow.example" in answer["error"], answer
            # Its own timeout, not a queue behind the others' (the bound is generous).
            assert answer["seconds"] < child.RESOLVE_TIMEOUT + PROMPT_SECONDS, (purpose, answer)

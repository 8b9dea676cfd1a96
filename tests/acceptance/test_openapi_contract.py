"""`schemathesis run --checks all` against `/openapi.json` finds no failure: the documented
response models, status codes, content types and Allow headers are what the server answers.

Bounded: a few examples per operation and a time budget. Inside `unshare --net` (root, as CI
runs) so that no URL the fuzzer invents can reach another machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BUDGET_SECONDS = 90


def test_schemathesis_finds_no_conformance_failures(tmp_path: Path, model_cache: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private network namespace (CI runs as root)")
    fuzz = [
        sys.executable,
        "-m",
        "tests.acceptance.contract_fuzz",
        str(tmp_path),
        str(model_cache),
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "5",
        # One worker thread: with two, CPython 3.11.7's ast module now and then raises
        # "SystemError: AST constructor recursion depth mismatch" inside schemathesis's
        # coverage phase (python/cpython#106905, a threading bug fixed after 3.11.7), which
        # fails the run without any finding about our API.
        "--workers",
        "1",
        "--max-time",
        str(BUDGET_SECONDS),
    ]
    ran = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *fuzz],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BUDGET_SECONDS + 240,
    )
    report = ran.stdout[-12000:] + ran.stderr[-4000:]
    assert ran.returncode == 0, report
    # Every operation the document lists was exercised (none skipped for a schema it
    # could not read).
    selected = re.search(r"Selected: (\d+)/(\d+)", ran.stdout)
    tested = re.search(r"Tested: (\d+)", ran.stdout)
    assert selected and tested, report
    assert selected[1] == selected[2] == tested[1], report

"""Issue 24's rule: no module of `src/videoserve` over 600 lines (a module has one job)."""

from __future__ import annotations

from pathlib import Path

import videoserve

PACKAGE = Path(videoserve.__file__).parent
LIMIT = 600


def test_no_module_of_the_package_is_over_600_lines() -> None:
    lengths = {
        str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert len(lengths) > 100  # the package itself, not an empty directory
    too_long = {name: n for name, n in lengths.items() if n > LIMIT}
    assert not too_long, f"modules over {LIMIT} lines (split them by job): {too_long}"

"""The one clock every timestamp in the job database comes from."""

from __future__ import annotations

import time


def now() -> float:
    """Seconds since the epoch (wall clock: the value is stored and compared across hosts)."""
    return time.time()

"""Start deadlines: how long a queued job may wait for a worker before it fails `expired`;
and the execution timeout: how long it may run once started (`X-Execution-Timeout`).

A submit's `X-Start-Timeout` header (or `VIDEOSERVE_START_TIMEOUT_SECONDS`) becomes the job's
`start_deadline`. The claim never hands out a job past it, and the maintenance loop fails it
(`JobStore.expire_unstarted`, one atomic UPDATE, refunded) at the deadline, not a polling
round later: `DeadlineAlarm` wakes that loop when a submit in this process sets a deadline
sooner than the loop's planned wake-up (another process's submits are its own loop's).
"""

from __future__ import annotations

import asyncio
import math

from videoserve import errors

HEADER = "X-Start-Timeout"
# A week: a deadline further off is a typo, not a plan (retention is an hour by default).
MAX_START_TIMEOUT_SECONDS = 7 * 24 * 3600.0
EXPIRED_MESSAGE = "expired: no worker started it before its start deadline"


EXECUTION_HEADER = "X-Execution-Timeout"


def parse_start_timeout(value: str | None) -> float | None:
    """The header's seconds (a positive number); None when absent. `InvalidRequest` naming
    the header for anything else."""
    return _seconds(HEADER, value)


def parse_execution_timeout(value: str | None) -> float | None:
    """`X-Execution-Timeout`'s seconds (a positive number; the model's limit is checked at
    submit, `check_execution_timeout`); None when absent. `InvalidRequest` naming the header."""
    return _seconds(EXECUTION_HEADER, value)


def _seconds(header: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        seconds = math.nan
    if not (0 < seconds <= MAX_START_TIMEOUT_SECONDS):
        raise errors.InvalidRequest(
            f"{header}: must be a number of seconds above 0 and at most "
            f"{MAX_START_TIMEOUT_SECONDS:.0f} (got {value!r})",
            param=header,
        )
    return seconds


def check_execution_timeout(seconds: float | None, limit: float, model: str) -> None:
    """A job may ask to be stopped sooner than its model's limit, never later: above it (or
    a limit of 0, none, which any value is within) `InvalidRequest` naming the limit."""
    if seconds is not None and limit and seconds > limit:
        raise errors.InvalidRequest(
            f"{EXECUTION_HEADER}: at most the limit of model '{model}', {limit:g} s "
            f"(got {seconds:g})",
            param=EXECUTION_HEADER,
        )


class DeadlineAlarm:
    """Wakes the expiry loop early when a new deadline falls before its planned wake-up."""

    def __init__(self) -> None:
        self._wake_at = math.inf
        self._sooner = asyncio.Event()

    def noted(self, deadline: float) -> None:
        """A job with this deadline was committed (call after the commit)."""
        if deadline < self._wake_at:
            self._sooner.set()

    def begin_round(self) -> None:
        """Before the loop reads the next deadline: forget the deadlines noted before it (the
        read sees them, as they were committed), keep those noted from now on."""
        self._sooner.clear()

    async def sleep_until(self, wake_at: float, timeout: float, stop: asyncio.Event) -> None:
        """Sleep `timeout` seconds (the loop's planned wake-up is `wake_at`, in `clock` time),
        or less if stopped or if a sooner deadline was noted since `begin_round`."""
        if self._sooner.is_set():
            return
        self._wake_at = wake_at
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._sooner.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._wake_at = math.inf
            for waiter in waits:
                waiter.cancel()

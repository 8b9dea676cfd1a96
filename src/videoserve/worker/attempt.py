"""One attempt at a job, from its claim to its finishing write: the lease kept alive all along.

An attempt outlives its model stage: with the pipelined worker its video is encoded and
uploaded while the slot runs the next job's model, and the lease must stay fresh (and cancels
and lost leases must still be seen) until the finishing write. So the heartbeat and the time
limit belong to the attempt, not to a stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from videoserve.jobs import phases
from videoserve.jobs.phases import Phase
from videoserve.jobs.records import Job, Lease
from videoserve.jobs.store import JobStore, LiveState
from videoserve.settings import Settings

log = logging.getLogger("videoserve.worker")


@dataclass
class Signals:
    """Shared between the model thread, the heartbeat and the stages."""

    progress: int = 0  # the whole job's (`phases.progress`), never lower than it was
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None  # "cancelled", "lease lost", "timeout" or "draining"
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    phase: Phase | None = None
    step: int | None = None
    steps: int | None = None
    preview_step: int | None = None  # the step of the latest preview stored
    loop: asyncio.AbstractEventLoop | None = None  # set by the attempt: wakes its reporter
    # Ends the job's previews (waits for one being stored, then deletes it); set by the model
    # stage when the job has previews.
    end_previews: Callable[[], Awaitable[None]] | None = None

    def enter(self, phase: Phase) -> None:
        """The job moved on to `phase` (from any thread)."""
        self.phase = phase
        if phase != Phase.DENOISING:
            self.step = self.steps = None
        self._advanced(phases.progress(phase))

    def stepped(self, step: int, steps: int) -> None:
        """Denoising step `step` of `steps` is done (from the model's thread); after the last
        one the VAE decode follows."""
        self.phase, self.step, self.steps = Phase.DENOISING, step, steps
        self._advanced(phases.progress(Phase.DENOISING, step, steps))
        if step >= steps:
            self.enter(Phase.DECODING)

    def previewed(self, step: int) -> None:
        self.preview_step = step
        self._wake()

    def live(self) -> LiveState:
        return LiveState(self.phase, self.step, self.steps, self.preview_step)

    def _advanced(self, progress: int) -> None:
        self.progress = max(self.progress, progress)
        self._wake()

    def _wake(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.changed.set)

    def request_stop(self, reason: str) -> None:
        """Stop the model at its next step; the first reason given is the one that counts."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop.set()


class Attempt:
    """A claimed job, its lease's heartbeat and its time limit, until `close`."""

    def __init__(
        self, job: Job, lease: Lease, store: JobStore, settings: Settings, time_limit: float
    ) -> None:
        self.job = job
        self.lease = lease
        self.time_limit = time_limit
        self.started = time.time()
        self.signals = Signals(loop=asyncio.get_running_loop())
        self._store = store
        self._settings = settings
        self._reporter = asyncio.create_task(self._report(), name=f"lease-{job.id}")
        self._timer: asyncio.TimerHandle | None = None
        if time_limit:
            # The model stops at its next step, as for a cancel; the job fails as a timeout.
            self._timer = asyncio.get_running_loop().call_later(
                time_limit, self.signals.request_stop, "timeout"
            )

    async def close(self) -> None:
        """Stop heartbeating: the attempt has written its end, or handed the job back."""
        if self._timer is not None:
            self._timer.cancel()
        self._reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reporter

    async def hand_back(self, why: str = "worker shutting down") -> None:
        """Give the job back to the queue without spending an attempt (shutting down, or
        the worker group lost a rank)."""
        self.signals.request_stop("draining")
        with contextlib.suppress(Exception):
            await asyncio.shield(self._store.release(self.lease))
        log.warning("job %s handed back to the queue (%s)", self.job.id, why)

    async def check_in(self) -> None:
        """Heartbeat now, so a cancel or a takeover committed before this call is seen.

        The media stage calls it before it starts: a job cancelled while it waited for the
        slot's media stage is then never encoded, however long ago the last beat was."""
        try:
            beat = await self._store.heartbeat(self.lease, self._settings.lease_seconds)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the fenced finishing write is the check that counts
            log.warning("job %s: heartbeat failed: %s", self.lease.job_id, exc)
            return
        if not beat.alive:
            self.signals.request_stop("lease lost")
        elif beat.cancel_requested:
            self.signals.request_stop("cancelled")

    async def persist(self, write: Callable[[], Awaitable[bool]]) -> bool:
        """Run a finishing write, retrying while the database is unreachable.

        Gives up after a lease's length: by then the reaper has requeued the job anyway, and
        the fenced write would be refused."""
        deadline = time.monotonic() + self._settings.lease_seconds
        delay = 0.1
        while True:
            try:
                return await write()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    log.error("giving up a finishing write: %s", exc)
                    return False
                log.warning("finishing write failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _report(self) -> None:
        """Heartbeat every third of a lease, and write progress as it changes (throttled)."""
        signals, settings = self.signals, self._settings
        reported: tuple[int, LiveState] | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.heartbeat_seconds):
                    await signals.changed.wait()
            signals.changed.clear()
            now = (signals.progress, signals.live())
            changed = now != reported
            try:
                beat = await self._store.heartbeat(
                    self.lease,
                    settings.lease_seconds,
                    now[0] if changed else None,
                    now[1] if changed else None,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the model running; the next beat may get through
                log.warning("job %s: heartbeat failed: %s", self.lease.job_id, exc)
                continue
            if changed:
                reported = now
            if not beat.alive:
                signals.request_stop("lease lost")
                return
            if beat.cancel_requested:
                signals.request_stop("cancelled")
            # Progress is at most a few writes a second, however fast the steps are.
            await asyncio.sleep(0.2)

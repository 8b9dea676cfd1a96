"""A worker group: one rank process per device of VIDEOSERVE_WORKER_DEVICES, driven by the worker.

The worker process stays the lead: it claims, heartbeats, reports progress, encodes and stores,
as for any job. It does not join torch.distributed itself; it spawns one rank per device
(`rank.py`, the spawn start method) and sends each the same call over a pipe. The ranks run the
call together over torch.distributed; rank 0 streams progress and returns the frames.

Why the lead stays outside the process group: a rank that dies (SIGKILL, a driver fault) or
hangs in a collective can leave a process group unusable, and only new processes make a clean
one. Kept out of it, the worker survives any rank: it stops the group (kills every rank it
started), hands the job back to the queue, and starts a fresh group before its next parallel
job. The cost is one copy of the frames from rank 0 over the pipe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from videoserve.models.backends import parallel
from videoserve.models.backends.base import Cancelled, GeneratedVideo
from videoserve.models.registry import ModelRegistry
from videoserve.settings import Settings
from videoserve.worker import rank as ranks

log = logging.getLogger("videoserve.worker")

_POLL_SECONDS = 0.2  # how often a waiting lead looks at the stop flag
_READY_SECONDS = 300.0  # the longest a rank may take to import torch and join the group
# After a rank failed on its own (out of memory, a model error), how long the others have to
# end the call too; one still busy then waits in a collective for the failed one.
_FAILED_GRACE_SECONDS = 5.0


class GroupLost(Exception):
    """A rank died or a collective failed: the call did not end, and the group is stopped."""


class RankFailed(Exception):
    """Every rank ended the call, with an error one of them reported (`code`, `message`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class GroupRun:
    """A parallel call's frames, and the collectives each rank ran for it (by name)."""

    video: GeneratedVideo
    collectives: list[dict[str, int]]
    load_seconds: float = 0.0  # rank 0's load of the model (0: it was loaded)
    peak_gb: list[float | None] = dataclasses.field(default_factory=list)  # per rank (GPU)


@dataclasses.dataclass
class _Rank:
    process: Any  # multiprocessing.Process (spawn context)
    conn: Connection


class WorkerGroup:
    """The ranks of one worker, one per device; started on first use, restarted after a loss.

    Calls run one at a time (`lock`): a parallel job holds every device of the group.
    """

    def __init__(self, settings: Settings, devices: list[str]) -> None:
        self.settings = settings
        self.devices = list(devices)
        self.lock = threading.Lock()  # one call at a time over the group
        self.starts = 0  # how many times the ranks were started (a restart adds one)
        self.last_collectives: list[dict[str, int]] = []
        self._context = multiprocessing.get_context("spawn")
        self._ranks: list[_Rank] = []
        self._stop = self._context.Event()
        self._on_preview: Callable[[int, int, Any], None] | None = None

    @property
    def size(self) -> int:
        return len(self.devices)

    @property
    def running(self) -> bool:
        return bool(self._ranks) and all(r.process.is_alive() for r in self._ranks)

    def pids(self) -> list[int]:
        """The rank processes' ids (rank order), for operators and fault tests."""
        return [r.process.pid for r in self._ranks]

    def start(self) -> None:
        """Spawn a rank per device and wait until all joined the process group."""
        if self.running:
            return
        self.stop()
        address = f"tcp://127.0.0.1:{_free_port()}"
        timeout = self.settings.worker_group_timeout_seconds
        # A new flag per group: a rank killed while it read the old one may hold its lock.
        self._stop = self._context.Event()
        for index, device in enumerate(self.devices):
            setup = ranks.RankSetup(index, self.size, device, address, timeout, self.settings)
            ours, theirs = self._context.Pipe()
            process = self._context.Process(
                target=ranks.main,
                args=(setup, theirs, self._stop),
                name=f"videoserve-rank-{index}",
                daemon=True,
            )
            process.start()
            theirs.close()
            self._ranks.append(_Rank(process, ours))
        deadline = time.monotonic() + _READY_SECONDS
        for index, member in enumerate(self._ranks):
            message = self._receive(member, index, deadline)
            if message[0] != "ready":
                self.stop()
                raise GroupLost(f"rank {index} did not join the group: {message!r}")
        self.starts += 1
        log.info("worker group started: %d ranks on %s", self.size, ", ".join(self.devices))

    def stop(self) -> None:
        """End every rank: asked to exit, then killed if it does not (a hung one)."""
        members, self._ranks = self._ranks, []
        for member in members:
            with contextlib.suppress(OSError, ValueError):
                member.conn.send(ranks.EXIT)
        deadline = time.monotonic() + 5.0
        for member in members:
            member.process.join(max(0.0, deadline - time.monotonic()))
            if member.process.is_alive():
                member.process.kill()  # only processes this group started
                member.process.join(5.0)
            member.conn.close()

    def generate(
        self,
        call: ranks.RankCall,
        on_progress: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: Callable[[int, int, Any], None] | None = None,
    ) -> GroupRun:
        """Run `call` on every rank; its frames. Raises `Cancelled` when stopped, `RankFailed`
        when the ranks ended it with an error, `GroupLost` (group stopped) when one was lost."""
        with self.lock:
            self.start()
            self._stop.clear()
            self._on_preview = on_preview
            load = ranks.RankLoad(call.model)
            # Rank 0 first: weights made on first load (the tiny models) are made once, and
            # a load that fails fails there, before the others spend their memory on it.
            loaded = self._exchange([0], load, on_progress, should_stop)
            self._raise_failures(loaded)
            others = list(range(1, self.size))
            loaded |= self._exchange(others, load, on_progress, should_stop)
            self._raise_failures(loaded)
            ended = self._exchange(list(range(self.size)), call, on_progress, should_stop)
            # ("done", video, counts, peak) or ("failed", code, message, counts)
            self.last_collectives = [
                dict(ended[i][2] if ended[i][0] == "done" else ended[i][3])
                for i in range(self.size)
            ]
            self._raise_failures(ended)
            video = ended[0][1]
            assert isinstance(video, GeneratedVideo)
            peaks = [ended[i][3] for i in range(self.size)]
            return GroupRun(video, self.last_collectives, float(loaded[0][1]), peaks)

    def _exchange(
        self,
        indexes: list[int],
        message: Any,
        on_progress: Callable[[int, int], None],
        should_stop: Callable[[], bool],
    ) -> dict[int, tuple[Any, ...]]:
        """Send `message` to these ranks and return how each ended it (progress passed on)."""
        for index in indexes:
            try:
                self._ranks[index].conn.send(message)
            except (OSError, ValueError) as exc:
                self._lose(f"rank {index} could not take the call: {exc}")
        ended: dict[int, tuple[Any, ...]] = {}
        failed_at: float | None = None
        while len(ended) < len(indexes):
            if should_stop():
                self._stop.set()
            pending = [i for i in indexes if i not in ended]
            waiting = {self._ranks[i].conn: i for i in pending} | {
                self._ranks[i].process.sentinel: i for i in pending
            }
            for ready in wait(list(waiting), timeout=_POLL_SECONDS):
                index = waiting[ready]
                if index in ended:
                    continue
                member = self._ranks[index]
                if ready is member.process.sentinel and not member.conn.poll():
                    code = member.process.exitcode
                    self._lose(f"rank {index} ({self.devices[index]}) exited (code {code})")
                try:
                    message = member.conn.recv()
                except (EOFError, OSError):
                    self._lose(f"rank {index} ({self.devices[index]}) went away")
                if message[0] == "progress":
                    on_progress(int(message[1]), int(message[2]))
                    continue
                if message[0] == "preview":
                    if self._on_preview is not None:
                        self._on_preview(int(message[1]), int(message[2]), message[3])
                    continue
                ended[index] = message
                if message[0] == "failed" and message[1] == "collective":
                    # A peer died, hangs or failed: the process group cannot be trusted.
                    self._end_broken(ended, f"rank {index}: a collective failed: {message[2]}")
                if message[0] == "failed" and failed_at is None:
                    failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > _FAILED_GRACE_SECONDS:
                self._end_broken(ended, "a rank failed and the others did not end the call")
        return ended

    def _end_broken(self, ended: dict[int, tuple[Any, ...]], reason: str) -> None:
        """Stop the group; raise what a rank failed with on its own (out of memory, say), of
        which the others' stuck or failed collectives are the consequence, else `GroupLost`."""
        causes = [m for m in ended.values() if m[0] == "failed" and m[1] != "collective"]
        if causes and causes[0][1] != "cancelled":
            log.warning("worker group stopped after a rank failed: %s", causes[0][2])
            self.stop()
            raise RankFailed(str(causes[0][1]), str(causes[0][2]))
        self._lose(reason)

    def _raise_failures(self, ended: dict[int, tuple[Any, ...]]) -> None:
        """Raise what the ranks' replies say went wrong, if anything did."""
        failures = [ended[i] for i in sorted(ended) if ended[i][0] == "failed"]
        if failures:
            codes = {failure[1] for failure in failures}
            if "collective" in codes:
                self._lose(f"a collective failed: {failures[0][2]}")
            if codes == {"cancelled"}:
                raise Cancelled(str(failures[0][2]))
            first = next(f for f in failures if f[1] != "cancelled")
            if first[1] == "out_of_memory":
                # Free the memory for sure: the next parallel job starts a fresh group.
                self.stop()
            raise RankFailed(str(first[1]), str(first[2]))

    def _lose(self, reason: str) -> None:
        log.error("worker group lost: %s; stopping its ranks", reason)
        self.stop()
        raise GroupLost(reason)

    def _receive(self, member: _Rank, index: int, deadline: float) -> tuple[Any, ...]:
        while time.monotonic() < deadline:
            if member.conn.poll(_POLL_SECONDS):
                try:
                    message: tuple[Any, ...] = member.conn.recv()
                except (EOFError, OSError):
                    break
                return message
            if not member.process.is_alive():
                break
        self.stop()
        raise GroupLost(f"rank {index} ({self.devices[index]}) did not start")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def check_plans(registry: ModelRegistry, served: list[str], group: WorkerGroup | None) -> list[str]:
    """The models this worker serves, checked against its group; ValueError naming why an
    entry's `parallel` cannot run on it. Without a group, parallel entries are left to the
    workers that have one (a warning says so)."""
    plans = registry.parallel_entries()
    kept = []
    for name in served:
        plan = plans.get(registry.served_by(name))
        if plan is None:
            kept.append(name)
            continue
        if group is None:
            log.warning(
                "model '%s' is parallel (%d ranks) and this worker has no group "
                "(VIDEOSERVE_WORKER_DEVICES): left to workers that have one",
                name,
                plan.ranks,
            )
            continue
        backend = registry.backend(name)
        folder = getattr(backend, "path", None)
        family = getattr(backend, "family", "")
        reason = parallel.refusal(name, plan, folder, family, group.size)
        if reason is not None:
            raise ValueError(reason)
        kept.append(name)
    return kept

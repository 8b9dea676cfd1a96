"""The worker's liveness rule: the event loop must answer, and the worker must still run."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any, cast

from videoserve.observability.metrics import Metrics
from videoserve.worker.probes import Probes


def test_a_wedged_event_loop_or_an_ended_worker_is_not_healthy() -> None:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    worker = SimpleNamespace(exited=False)  # health() reads only this of the worker
    probes = Probes(cast(Any, worker), Metrics(), loop, loop_timeout=0.2)
    try:
        assert probes.health() == (True, {"status": "ok"})
        release = threading.Event()
        loop.call_soon_threadsafe(release.wait)  # a blocking call on the loop: it is wedged
        alive, body = probes.health()
        assert not alive and "did not answer within 0.2 s" in body["error"]
        release.set()
        assert probes.health()[0]
        worker.exited = True
        assert probes.health() == (
            False,
            {"status": "unavailable", "error": "the worker's loop has ended"},
        )
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(timeout=10)
        loop.close()

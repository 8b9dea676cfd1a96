"""The worker's own HTTP endpoint: `/metrics` for Prometheus, `/healthz` and `/readyz` for
Kubernetes' probes, a container's health check, or a load balancer's.

`videoserve worker` serves it on `VIDEOSERVE_WORKER_METRICS_HOST`:`VIDEOSERVE_WORKER_METRICS_PORT`
from a thread, so the answers do not wait behind the event loop; what they report is the loop's:

- `/healthz`: 200 while the event loop answers within `loop_timeout` and the worker's claim
  loop has not ended. A wedged loop or a worker whose loop died answers 503: restart it.
  A model running in its thread does not block the loop, so a long job stays healthy.
- `/readyz`: the worker's `readiness()`: 503 (`loading`) while `VIDEOSERVE_PRELOAD` loads,
  503 (`unavailable`) when every model it was to serve failed to load, else 200 with the
  models in memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from videoserve.observability.metrics import CONTENT_TYPE, Metrics
from videoserve.worker.runner import Worker

log = logging.getLogger("videoserve.worker")

LOOP_TIMEOUT_SECONDS = 5.0


class Probes:
    """Answers the three endpoints for one worker running on `loop`."""

    def __init__(
        self,
        worker: Worker,
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
        *,
        loop_timeout: float = LOOP_TIMEOUT_SECONDS,
    ) -> None:
        self.worker = worker
        self.metrics = metrics
        self.loop = loop
        self.loop_timeout = loop_timeout

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Alive: the event loop runs a callback within the timeout, and the worker still runs."""
        if self.worker.exited:
            return False, {"status": "unavailable", "error": "the worker's loop has ended"}
        answered = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop)
        try:
            answered.result(timeout=self.loop_timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            answered.cancel()
            error = f"the event loop did not answer within {self.loop_timeout:g} s"
            return False, {"status": "unavailable", "error": error}
        return True, {"status": "ok"}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.worker.readiness()

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Listen from a thread; returns a function that stops it."""
        server = _Server((host, port), _handler(self))
        thread = threading.Thread(target=server.serve_forever, name="worker-probes", daemon=True)
        thread.start()
        log.info(
            "worker metrics and probes on http://%s:%d (/metrics, /healthz, /readyz)", host, port
        )

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a probe waiting on a wedged loop must not hold up the exit


def _handler(probes: Probes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, probes.metrics.render(), CONTENT_TYPE)
            elif path in ("/healthz", "/readyz"):
                ok, body = probes.health() if path == "/healthz" else probes.readiness()
                self._answer(200 if ok else 503, json.dumps(body).encode(), "application/json")
            else:
                self._answer(404, b'{"error": "not found"}', "application/json")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if status == 503:
                self.send_header("Retry-After", "2")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a probe every few seconds would drown the worker's own log

    return Handler

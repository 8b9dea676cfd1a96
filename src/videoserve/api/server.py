"""How `videoserve serve` runs uvicorn: bounds on slow clients and on open connections.

uvicorn bounds the idle time between requests (`timeout_keep_alive`) but not the time a client
may take to send a request head or its body: 150 connections sending headers a byte at a time
held their sockets for as long as they liked. uvicorn has no option for it, so a small subclass
of its httptools protocol (the one `uvicorn[standard]` picks) adds two timers:
- the head: a connection that has not sent a complete request head within
  `header_timeout_seconds` of its first byte (or of connecting) gets a 408 and is closed;
- the body: once the head is in, each window of `header_timeout_seconds` must bring at least
  `min_body_bytes_per_second` times the window, or the connection is dropped. A body the app
  is not reading yet (uvicorn paused the socket) is not held against the client.
`max_connections` is uvicorn's `limit_concurrency`: past it, new requests get a 503.

The head's deadline is kept as a time, not a timer per request: a timer armed and cancelled
for every request of a kept-alive connection was a few microseconds of a ~80 us poll. One
timer per connection wakes at the earliest deadline it may have to enforce and re-arms itself
for the head in progress, if any; the deadline is the same.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from videoserve.api.limits import has_body
from videoserve.settings import Settings

log = logging.getLogger("videoserve.api")


class SlowClientGuard(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on the request head and a floor on the
    body's rate (class attributes, set per server by `guarded_protocol`)."""

    head_timeout: float = 30.0
    min_body_rate: float = 1024.0

    _head_timer: asyncio.TimerHandle | None = None
    _head_begun: float | None = None  # loop time the request head in progress began
    _body_timer: asyncio.TimerHandle | None = None
    _body_received = 0
    _body_checked = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._begin_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_begun is None:  # the next request on a kept-alive connection
            self._begin_head()

    def on_headers_complete(self) -> None:
        self._head_begun = None  # the timer, if it fires, finds no head to time
        self._cancel_body_timer()
        super().on_headers_complete()
        if self.min_body_rate > 0 and has_body(self.headers):
            self._body_received = self._body_checked = 0
            self._body_timer = self.loop.call_later(self.head_timeout, self._check_body_rate)

    def on_body(self, body: bytes) -> None:
        self._body_received += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        super().on_message_complete()

    def _begin_head(self) -> None:
        if self.head_timeout <= 0:
            return
        self._head_begun = self.loop.time()
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._check_head)

    def _check_head(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._head_begun is None:
            return  # no head in progress: the next one arms the timer again
        left = self._head_begun + self.head_timeout - self.loop.time()
        if left > 0:  # a later head than the one the timer was armed for
            self._head_timer = self.loop.call_later(left, self._check_head)
            return
        log.info("closed a connection that sent no complete request head in %gs", self.head_timeout)
        self.transport.write(STATUS_LINE[408] + b"content-length: 0\r\nconnection: close\r\n\r\n")
        self.transport.close()

    def _check_body_rate(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        arrived = self._body_received - self._body_checked
        self._body_checked = self._body_received
        if not self.flow.read_paused and arrived < self.min_body_rate * self.head_timeout:
            log.info(
                "dropped a request body arriving at %.0f B/s (the floor is %g B/s)",
                arrived / self.head_timeout,
                self.min_body_rate,
            )
            self.transport.close()
            return
        self._body_timer = self.loop.call_later(self.head_timeout, self._check_body_rate)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._cancel_body_timer()


def guarded_protocol(settings: Settings) -> type[SlowClientGuard]:
    return type(
        "SlowClientGuard",
        (SlowClientGuard,),
        {
            "head_timeout": settings.header_timeout_seconds,
            "min_body_rate": settings.min_body_bytes_per_second,
        },
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options every videoserve HTTP server runs with."""
    return {
        "http": guarded_protocol(settings),
        "limit_concurrency": settings.max_connections or None,
    }

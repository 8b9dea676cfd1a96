"""Slow clients cannot hold connections (issue 16, item 5): a half-sent request head is
answered 408 and closed, a body slower than the floor is dropped, and connections past
`max_connections` get a 503. Raw sockets, so the client is exactly as slow as the test says."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, free_port, start_server, wait_until
from videoserve.settings import Settings

DEADLINE = 20.0  # seconds a socket read may block before the test fails: far past any timeout


@pytest.fixture
def guarded(tmp_path: Path, model_cache: Path) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def make(**overrides: object) -> LiveServer:
        values: dict[str, object] = {
            "data_dir": tmp_path / f"data{len(servers)}",
            "host": "127.0.0.1",
            "port": free_port(),
            "model_cache_dir": model_cache,
            "embedded_worker": False,
            "aliases": {"sora-2-pro": "tiny-t2v"},
            **overrides,
        }
        server = start_server(Settings(**values))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def _connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.settings.port), timeout=DEADLINE)
    sock.settimeout(DEADLINE)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_a_half_sent_head_is_answered_408_and_closed(guarded) -> None:
    server = guarded(header_timeout_seconds=1.0)
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        answer = _read_until_closed(sock)  # socket.timeout here means it was never closed
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    # A client that sends its head at once is untouched by the short timeout.
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def _answer(sock: socket.socket) -> bytes:
    """One whole answer on a kept-alive connection (head and its Content-Length of body)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        assert chunk, f"closed mid-answer: {received!r}"
        received += chunk
    head, body = received.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head


def test_a_kept_alive_connection_is_timed_per_head(guarded) -> None:
    # One timer per connection, re-armed for the head in progress: heads that arrive whole
    # keep the connection open past the head timeout, and a half-sent head on the same
    # connection, later, still gets its 408.
    server = guarded(header_timeout_seconds=1.0)
    with _connect(server) as sock:
        opened = time.monotonic()
        answered = 0
        while time.monotonic() < opened + 2.5:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            assert _answer(sock).startswith(b"HTTP/1.1 200 ")
            answered += 1
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        assert _read_until_closed(sock).startswith(b"HTTP/1.1 408 ")
    assert answered > 1


def test_a_connection_that_sends_nothing_is_closed(guarded) -> None:
    server = guarded(header_timeout_seconds=1.0)
    with _connect(server) as sock:
        assert _read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_a_body_slower_than_the_floor_is_dropped(guarded) -> None:
    server = guarded(header_timeout_seconds=1.0, min_body_bytes_per_second=1000)
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v2/sora-2-pro HTTP/1.1\r\nHost: test\r\nx-api-key: "
            + server.api_key.encode()
            + b"\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n"
            + b'{"prompt": "'
        )
        answer = _read_until_closed(sock)
    assert b" 200 " not in answer.split(b"\r\n", 1)[0]
    # Nothing was queued from the dropped request.
    listing = httpx.get(f"{server.url}/v1/videos", headers={"x-api-key": server.api_key})
    assert listing.json()["data"] == []


def test_connections_past_the_cap_get_503(guarded) -> None:
    server = guarded(max_connections=3, header_timeout_seconds=60.0)
    idle = [_connect(server) for _ in range(3)]
    try:
        wait_until(lambda: httpx.get(f"{server.url}/healthz").status_code == 503, timeout=DEADLINE)
    finally:
        for sock in idle:
            sock.close()
    wait_until(lambda: httpx.get(f"{server.url}/healthz").status_code == 200, timeout=DEADLINE)

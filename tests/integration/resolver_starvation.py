"""Run inside a private network namespace by test_resolver_isolation.py (which bind-mounts
/etc/resolv.conf naming 127.0.0.1 and an /etc/hosts naming `public.example` as 1.2.3.4 on lo).

Here a DNS stub on 127.0.0.1:53 receives every query and answers none (a resolver that never
answers), and a small HTTP server on 1.2.3.4 (a global address, so the SSRF check admits it;
the namespace has no route out) serves an image and receives webhooks. For each purpose
(webhook URLs, input_reference URLs) a fresh server gets twelve submits whose hosts never
resolve, and then another key's submit whose host does. Prints one JSON line per purpose.

Usage: python -m tests.integration.resolver_starvation WORK_DIR MODEL_CACHE DATABASE_URL
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from tests.conftest import create_key, free_port, start_server
from videoserve.settings import Settings

PUBLIC_ADDRESS = "1.2.3.4"  # on lo inside the namespace; /etc/hosts names it public.example
PUBLIC_NAME = "public.example"
FLOOD = 12
RESOLVE_TIMEOUT = 3.0
SUBMIT_TIMEOUT = 60.0
IN_FLIGHT_WAIT = 30.0  # seconds the flood has to reach the DNS server (it takes milliseconds)


def assert_no_route_out() -> None:
    """No packet can leave: connecting with no route fails without sending one."""
    try:
        socket.create_connection(("192.0.2.1", 80), timeout=1).close()
    except OSError:
        return
    raise SystemExit("the network namespace has a route out: refusing to run")


class SilentDns:
    """A DNS server that receives queries and never answers; remembers the names asked."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 53))
        self.names: set[str] = set()
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        while True:
            packet, _ = self.sock.recvfrom(4096)
            self.names.add(_question_name(packet))


def _question_name(packet: bytes) -> str:
    labels, at = [], 12  # the question follows the 12-byte header (RFC 1035, 4.1)
    while at < len(packet) and packet[at]:
        length = packet[at]
        labels.append(packet[at + 1 : at + 1 + length].decode("ascii", "replace"))
        at += 1 + length
    return ".".join(labels).lower()


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def public_http_server() -> int:
    """An image at /x.png and a webhook receiver at /hook, on 1.2.3.4; returns the port."""
    png = _png()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(204)
            self.end_headers()

    httpd = ThreadingHTTPServer((PUBLIC_ADDRESS, 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd.server_address[1]


def submit(url: str, key: str, body: dict[str, Any], **params: str) -> dict[str, Any]:
    started = time.monotonic()
    try:
        answer = httpx.post(
            url, json=body, params=params, headers={"x-api-key": key}, timeout=SUBMIT_TIMEOUT
        )
    except httpx.TimeoutException:
        return {"status": None, "error": f"no answer in {SUBMIT_TIMEOUT:g} s", "seconds": None}
    return {
        "status": answer.status_code,
        "error": answer.json().get("error") if answer.status_code != 200 else None,
        "seconds": round(time.monotonic() - started, 3),
    }


def asked(dns: SilentDns, purpose: str) -> int:
    """How many of the flood's names have reached the DNS server."""
    return sum(name.startswith(f"{purpose}-") for name in set(dns.names))


def flood_then_submit(
    purpose: str, settings: Settings, dns: SilentDns, port: int
) -> dict[str, Any]:
    """Twelve submits whose hosts never resolve, then another key's whose host does."""
    server = start_server(settings)
    try:
        other = create_key(settings, "other")
        url = f"{server.url}/v2/sora-2-pro"
        prompt = {"prompt": "a heron on a frozen lake"}

        def slow(n: int) -> dict[str, Any]:
            host = f"{purpose}-{n}.slow.example"
            if purpose == "webhook":
                return submit(url, server.api_key, prompt, webhook=f"http://{host}/hook")
            return submit(url, server.api_key, prompt | {"input_reference": f"http://{host}/x.png"})

        with ThreadPoolExecutor(FLOOD) as pool:
            flood: list[Future[dict[str, Any]]] = [pool.submit(slow, n) for n in range(FLOOD)]
            # Every one of them waiting on the silent DNS server before the other key asks.
            # Not an error here when some never get that far (lookups queued behind others,
            # the bug itself): the count is reported and the test says what it means.
            deadline = time.monotonic() + IN_FLIGHT_WAIT
            while asked(dns, purpose) < FLOOD and time.monotonic() < deadline:
                time.sleep(0.02)
            in_flight = asked(dns, purpose)
            if purpose == "webhook":
                good = submit(url, other, prompt, webhook=f"http://{PUBLIC_NAME}:{port}/hook")
            else:
                image = {"input_reference": f"http://{PUBLIC_NAME}:{port}/x.png"}
                good = submit(url, other, prompt | image)
            answers = [future.result() for future in flood]
        return {"purpose": purpose, "in_flight": in_flight, "good": good, "flood": answers}
    finally:
        server.stop()


def main(work: Path, model_cache: Path, database_url: str) -> None:
    assert_no_route_out()
    dns = SilentDns()
    port = public_http_server()
    for purpose in ("webhook", "input_reference"):
        settings = Settings(
            data_dir=work / purpose,
            host="127.0.0.1",
            port=free_port(),
            model_cache_dir=model_cache,
            aliases={"sora-2-pro": "tiny-t2v"},
            database_url=database_url,
            embedded_worker=False,  # the submits are the subject; no job needs to run
            resolve_timeout_seconds=RESOLVE_TIMEOUT,
        )
        print(json.dumps(flood_then_submit(purpose, settings, dns, port)), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])

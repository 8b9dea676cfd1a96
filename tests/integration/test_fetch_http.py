"""`load_reference` over real HTTP, against a server on 127.0.0.1.

Every target here is a loopback address or `localhost`, so even a broken address check cannot
send a packet off this machine.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from videoserve import errors
from videoserve.media import fetch
from videoserve.resolver import Resolver

MAX_BYTES = 100_000


def png_bytes(size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class LoopbackServer:
    port: int
    release: threading.Event  # lets /slow answer, so teardown never waits on it
    paths: list[str] = field(default_factory=list)  # every path the server was asked for

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def make_handler(state: dict) -> type[BaseHTTPRequestHandler]:
    png = png_bytes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def send(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            server: LoopbackServer = state["server"]
            server.paths.append(self.path)
            path = self.path.split("?")[0]
            if path == "/x.png":
                self.send(200, png, "image/png")
            elif path == "/404":
                self.send(404, b"not here")
            elif path == "/500":
                self.send(500, b"boom")
            elif path == "/text":
                self.send(200, b"<html>not an image</html>", "text/html")
            elif path == "/big":
                self.stream_without_length()
            elif path == "/big-declared":
                self.send_response(200)
                self.send_header("Content-Length", str(10 * MAX_BYTES))
                self.end_headers()
            elif path.startswith("/chain/"):  # /chain/N: N redirects, then the PNG
                remaining = int(path.rsplit("/", 1)[1])
                if remaining:
                    self.redirect(f"/chain/{remaining - 1}")
                else:
                    self.send(200, png, "image/png")
            elif path == "/relative":
                self.redirect("x.png")
            elif path == "/to-localhost":
                self.redirect(server.url("/x.png", host="localhost"))
            elif path == "/to-file":
                self.redirect("file:///etc/passwd")
            elif path == "/slow":
                server.release.wait(timeout=30)
                self.send(200, png, "image/png")
            else:
                self.send(404, b"unknown route")

        def stream_without_length(self) -> None:
            # HTTP/1.0 without Content-Length: the body ends when the connection closes.
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            chunk = png_bytes()[:64] + b"\0" * (64 * 1024 - 64)
            try:
                for _ in range(50):
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading at its cap, as it should

    return Handler


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    state: dict = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    loopback = LoopbackServer(port=httpd.server_address[1], release=threading.Event())
    state["server"] = loopback
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield loopback
    finally:
        loopback.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def policy(*, allow_private: bool, timeout: float = 5.0) -> fetch.FetchPolicy:
    return fetch.FetchPolicy(
        max_bytes=MAX_BYTES, max_pixels=1_000_000, timeout=timeout, allow_private=allow_private
    )


TRUSTED = policy(allow_private=True)
PUBLIC_ONLY = policy(allow_private=False)


async def expect_invalid(url: str, match: str, fetch_policy: fetch.FetchPolicy = TRUSTED):
    with pytest.raises(errors.InvalidRequest, match=match) as caught:
        await fetch.load_reference(url, fetch_policy)
    assert caught.value.param == "input_reference"
    return caught.value


# --- with private addresses allowed (a trusted network) -------------------------------------


@pytest.mark.parametrize("path", ["/x.png", "/relative", "/chain/3", "/to-localhost"])
async def test_png_loads_directly_and_through_redirects(server: LoopbackServer, path: str) -> None:
    ref = await fetch.load_reference(server.url(path), TRUSTED)
    assert (ref.width, ref.height) == (40, 30)
    assert ref.image.mode == "RGB"
    assert ref.png.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("/404", "input_reference URL answered HTTP 404"),
        ("/500", "input_reference URL answered HTTP 500"),
        ("/text", "not an image in a supported format"),
        ("/chain/4", "redirected more than 3 times"),
        ("/to-file", "redirect target has unsupported scheme 'file'"),
    ],
)
async def test_failures_have_precise_messages(server: LoopbackServer, path: str, match: str):
    await expect_invalid(server.url(path), match)


@pytest.mark.parametrize("path", ["/big", "/big-declared"])
async def test_oversized_bodies_are_payload_too_large(server: LoopbackServer, path: str) -> None:
    error = await expect_invalid(server.url(path), f"larger than the limit of {MAX_BYTES} bytes")
    assert isinstance(error, errors.PayloadTooLarge)


async def test_redirect_cap_follows_the_policy(server: LoopbackServer) -> None:
    strict = fetch.FetchPolicy(
        max_bytes=MAX_BYTES, max_pixels=10**6, timeout=5, allow_private=True, max_redirects=1
    )
    assert (await fetch.load_reference(server.url("/chain/1"), strict)).width == 40
    await expect_invalid(server.url("/chain/2"), "redirected more than 1 times", strict)
    no_redirects = fetch.FetchPolicy(
        max_bytes=MAX_BYTES, max_pixels=10**6, timeout=5, allow_private=True, max_redirects=0
    )
    assert (await fetch.load_reference(server.url("/chain/0"), no_redirects)).width == 40
    await expect_invalid(server.url("/chain/1"), "redirected more than 0 times", no_redirects)


async def test_slow_server_times_out(server: LoopbackServer) -> None:
    await expect_invalid(
        server.url("/slow"), "timed out after 0.3s", policy(allow_private=True, timeout=0.3)
    )


async def test_connection_refused() -> None:
    # A bound socket that never listens refuses connections, and keeps its port from reuse.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        await expect_invalid(
            f"http://127.0.0.1:{port}/x.png", "could not be reached: connection refused"
        )


# --- with only public addresses allowed (the default) ---------------------------------------


@pytest.mark.parametrize(
    ("host", "match"),
    [
        ("127.0.0.1", r"refused: 127\.0\.0\.1 is not a public address"),
        ("localhost", r"refused: (127\.0\.0\.1|::1) is not a public address \(localhost resolves"),
        ("[::1]", r"refused: ::1 is not a public address"),
        ("127.1.2.3", r"refused: 127\.1\.2\.3 is not a public address"),
        ("2130706433", r"refused: 127\.0\.0\.1 is not a public address"),  # 127.0.0.1 as decimal
    ],
)
async def test_loopback_urls_are_refused_without_a_request(
    server: LoopbackServer, host: str, match: str
) -> None:
    marker = f"/x.png?refused={host}"
    await expect_invalid(server.url(marker, host=host), match, PUBLIC_ONLY)
    assert marker not in server.paths


async def test_redirect_to_loopback_is_refused(server: LoopbackServer) -> None:
    marker = "/to-localhost?public-only"
    await expect_invalid(server.url(marker), "is not a public address", PUBLIC_ONLY)
    assert marker not in server.paths


async def test_connect_time_guard_refuses_on_its_own(server: LoopbackServer) -> None:
    """httpx-secure refuses loopback at connect time even with the pre-check skipped."""
    marker = "/x.png?connect-guard"
    async with fetch._http_client(PUBLIC_ONLY) as client:
        with pytest.raises(errors.InvalidRequest, match=r"127\.0\.0\.1 is not a public address"):
            await fetch._download(server.url(marker), PUBLIC_ONLY, client=client, admit=None)
    assert marker not in server.paths


async def test_every_redirect_hop_is_checked(server: LoopbackServer) -> None:
    """The first hop is let through on purpose; the redirect to localhost must still be refused."""

    public_only = fetch.public_only(Resolver(5.0))

    async def admit_all_but_first_host(host: str, port: int) -> None:
        if host != "127.0.0.1":
            await public_only(host, port)

    async with httpx.AsyncClient(trust_env=False) as client:
        with pytest.raises(errors.InvalidRequest, match=r"\(localhost resolves to it\)"):
            await fetch._download(
                server.url("/to-localhost"), TRUSTED, client=client, admit=admit_all_but_first_host
            )

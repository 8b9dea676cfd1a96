"""The private parts of libraries that our code leans on, checked by name.

Each check here names a private (or undocumented) piece of a library that `src/` subclasses,
replaces or calls, with the shape we rely on. pyproject.toml bounds each library below the next
release nobody has checked; when a bound is raised, this file says what to look at, and fails
naming the piece that moved rather than leaving a server that misbehaves quietly.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

import httpx
from fastapi import FastAPI
from uvicorn import Config
from uvicorn.protocols.http import httptools_impl
from uvicorn.server import ServerState

from videoserve.api import polls, server

# --- uvicorn: api/server.py subclasses its httptools protocol ------------------------------------
HOOKS = {  # the methods SlowClientGuard overrides, with the parameters it passes on
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "exc"],
    "on_message_begin": ["self"],
    "on_headers_complete": ["self"],
    "on_body": ["self", "body"],
    "on_message_complete": ["self"],
}


def test_uvicorn_httptools_protocol_has_the_hooks_we_override() -> None:
    for name, parameters in HOOKS.items():
        method = getattr(httptools_impl.HttpToolsProtocol, name)
        assert list(inspect.signature(method).parameters) == parameters, name
    assert httptools_impl.STATUS_LINE[408].startswith(b"HTTP/1.1 408 ")


def test_our_private_names_do_not_shadow_uvicorns() -> None:
    ours = {
        name
        for name in vars(server.SlowClientGuard)
        if name.startswith("_") and not name.startswith("__")
    }
    assert ours and not ours & set(dir(httptools_impl.HttpToolsProtocol))


class _Transport(asyncio.Transport):
    """Just enough of a socket's transport for the protocol to start."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: Any) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    pass


async def test_uvicorn_protocol_instances_carry_the_attributes_we_read() -> None:
    # SlowClientGuard reads self.loop, self.transport, self.flow.read_paused and self.headers.
    config = Config(_app, lifespan="off")
    config.load()
    protocol = httptools_impl.HttpToolsProtocol(config, ServerState(), {})
    transport = _Transport()
    protocol.connection_made(transport)
    try:
        assert protocol.loop is asyncio.get_running_loop()
        assert protocol.transport is transport
        assert protocol.flow.read_paused is False
        protocol.data_received(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\n")
        assert (b"content-length", b"3") in protocol.headers
    finally:
        protocol.connection_lost(None)


# --- FastAPI: api/app.py replaces build_middleware_stack ----------------------------------------
async def test_fastapi_builds_its_middleware_stack_lazily_through_the_attribute() -> None:
    # `_answer_polls_first` assigns app.build_middleware_stack; Starlette must call it (with no
    # arguments) on the first request and keep the result in app.middleware_stack.
    app = FastAPI()
    assert list(inspect.signature(app.build_middleware_stack).parameters) == []
    assert app.middleware_stack is None
    built: list[Any] = []
    build = app.build_middleware_stack

    def wrapped() -> Any:
        built.append(build())
        return built[-1]

    app.build_middleware_stack = wrapped  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/nothing-here")
        await client.get("/nothing-here")
    assert len(built) == 1 and app.middleware_stack is built[0]


# --- CPython: api/polls.py builds json's C encoder with positional arguments --------------------
C_ENCODER_PARAMETERS = (
    "markers",
    "default",
    "encoder",
    "indent",
    "key_separator",
    "item_separator",
    "sort_keys",
    "skipkeys",
    "allow_nan",
)


def test_json_c_make_encoder_takes_the_arguments_we_pass_in_that_order() -> None:
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    assert make is not None, "no C accelerator: polls.py falls back to JSONEncoder.encode"
    arguments = (None, polls._ENCODER.default, json.encoder.encode_basestring, None, ":", ",")
    flags = (False, False, False)  # sort_keys, skipkeys, allow_nan
    by_name = make(**dict(zip(C_ENCODER_PARAMETERS, (*arguments, *flags), strict=True)))
    payload = {"request_id": "r", "status": "QUEUED", "progress": 0, "é": 1.5}
    assert "".join(by_name(payload, 0)) == "".join(polls._C_ENCODER(payload, 0))
    # And it is exactly Starlette's JSONResponse body.
    from starlette.responses import JSONResponse

    assert polls._encode(payload) == JSONResponse(payload).body

"""Log lines that say which request or job they belong to, as text or as JSON.

Two context variables carry the correlation: `request_id` (set by `RequestIdMiddleware` for
every HTTP request, from the client's `X-Request-Id` or a new id) and `job_id` (set by the
worker while it runs a job, and inherited by the model thread through `asyncio.to_thread`).
A filter on the handler copies them onto every record, so a line logged anywhere below a
request or a job carries its id without the caller passing it.

`VIDEOSERVE_LOG_FORMAT=json` writes one JSON object per line (`time`, `level`, `logger`,
`message`, then `request_id` / `job_id` when set, `exception` with a traceback); `text`, the
default, is for people.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import sys
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id: ContextVar[str | None] = ContextVar("videoserve_request_id", default=None)
job_id: ContextVar[str | None] = ContextVar("videoserve_job_id", default=None)

REQUEST_ID_HEADER = "x-request-id"
_HEADER = REQUEST_ID_HEADER.encode()  # ASGI header names are bytes; encoded once, not per header
# A client's id is echoed and logged, so only a short token of safe characters is taken.
_ACCEPTABLE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}\Z")  # `\Z`: no final newline

LogFormat = Literal["text", "json"]


@contextlib.contextmanager
def job_context(value: str) -> Iterator[None]:
    """Tag every line logged inside (and in tasks and threads started inside) with the job."""
    token = job_id.set(value)
    try:
        yield
    finally:
        job_id.reset(token)


class ContextFilter(logging.Filter):
    """Copies the request and job ids of the current context onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.job_id = job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", "job_id"):
            value = getattr(record, name, None)
            if value:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [request=... job=...]: message`, the brackets only when set."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        tags = [
            f"{label}={value}"
            for label, value in (
                ("request", getattr(record, "request_id", None)),
                ("job", getattr(record, "job_id", None)),
            )
            if value
        ]
        record.context = f" [{' '.join(tags)}]" if tags else ""
        return super().format(record)


def make_handler(log_format: LogFormat, stream: IO[str] | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    return handler


def configure(level: str, log_format: LogFormat, stream: IO[str] | None = None) -> None:
    """Route every logger through one handler of the chosen format (the CLI calls this).

    Below debug, the model libraries' own chatter (progress bars while loading, advisory
    warnings) is turned off: `serve` and `worker` output is ours. `quiet_model_libraries`
    finishes the job once the worker has imported them."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(log_format, stream))
    root.setLevel(level.upper())
    global _quiet_libraries, _libraries_quieted
    _quiet_libraries = level.upper() != "DEBUG"
    _libraries_quieted = False
    if _quiet_libraries:
        # Read by huggingface_hub and transformers at import, before they print anything.
        for name, value in _QUIET_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"(diffusers|transformers|torch|torchao)(\.|$)")


_quiet_libraries = False
_libraries_quieted = False  # by `quiet_model_libraries`, since the last `configure`
_QUIET_ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DIFFUSERS_VERBOSITY": "error",
}
_CHATTY_LOGGERS = ("diffusers", "transformers", "torch", "torchao", "huggingface_hub")


def quiet_model_libraries() -> None:
    """Turn off diffusers' and transformers' progress bars and warnings, unless the log level
    is debug. Called where models load: importing diffusers here would cost an API-only
    process torch's import time for nothing. Once per process (until `configure` runs again):
    a logger's `setLevel` walks every logger there is, half a millisecond on each job."""
    global _libraries_quieted
    if not _quiet_libraries or _libraries_quieted:
        return
    import torch  # noqa: F401  # its import resets the "torch" logger to WARNING: set it after

    # Before diffusers' import, which imports torchao where installed: its enums make torch
    # warn once each ("... is an Enum subclass ...").
    logging.getLogger("torch").setLevel(logging.ERROR)
    import diffusers.utils.logging
    import transformers.utils.logging

    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.disable_progress_bar()
        library.set_verbosity_error()
    _libraries_quieted = True


# A generator of its own, seeded by the OS, and again in a forked child so that processes do
# not repeat each other's ids; not the module's, which a model may seed for reproducibility.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> str:
    # 32 hex digits from a PRNG, not `secrets`: the id only tells requests apart in logs and
    # guards nothing, and the urandom call was a twentieth of a status poll's CPU.
    return f"{_ids.getrandbits(128):032x}"


# Where a layer that already chose the request's id (`api.polls`) leaves it for this one.
STATE_KEY = "videoserve.request_id"


def choose_request_id(scope: Scope) -> str:
    """The request's id, set as the current one for log lines: the client's `X-Request-Id`
    when it is a short safe token, else a new one (once per request, however many layers
    ask)."""
    state = scope.setdefault("state", {})
    current: str | None = state.get(STATE_KEY)
    if current is None:
        for name, value in scope.get("headers") or []:
            if name == _HEADER:
                return adopt_request_id(scope, value)
        return adopt_request_id(scope, None)
    request_id.set(current)
    return current


def adopt_request_id(scope: Scope, presented: bytes | None) -> str:
    """`choose_request_id` for the first layer to ask, which has already read the request's
    first `X-Request-Id` value (`presented`, None when there is none)."""
    text = presented.decode("latin-1").strip() if presented else ""
    current = text if text and _ACCEPTABLE_ID.match(text) else new_request_id()
    scope.setdefault("state", {})[STATE_KEY] = current
    request_id.set(current)
    return current


class RequestIdMiddleware:
    """Pure ASGI: give each HTTP request an id for its log lines and echo it in the answer.

    The id is the client's `X-Request-Id` when it is a short safe token, else a new one. An
    answer that already carries `X-Request-Id` keeps it (`POST /v1/{model}` puts the job's id
    there, as Segmind does). The variable is not reset afterwards on purpose: the 500 handler
    runs outside this middleware and should still log the id, and every request runs in a
    task of its own and sets it afresh.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        encoded = choose_request_id(scope).encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                if not any(name.lower() == _HEADER for name, _ in headers):
                    headers.append((_HEADER, encoded))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)

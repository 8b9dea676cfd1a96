"""A pure-ASGI check of what a request carries before any route, or the database, sees it.

- A path with a NUL or control character, or longer than `MAX_PATH_CHARS`, names nothing we
  serve: 404 (uvicorn decodes `%00` into the path; a file lookup on it raised, a 500).
- A query parameter whose text cannot be stored: 400 naming it.
- A JSON body is parsed here once, with a depth bound (`json.loads` recurses: `[` x 100,000 was
  a RecursionError, a 500 on every JSON route) and every key and string checked for what both
  databases accept. The parsed value is left in the request's state for `deps.json_body`.
Answers under `/v1/videos` use OpenAI's envelope, the rest the Segmind `{"error"}` shape.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from videoserve import errors
from videoserve.api import errors as api_errors
from videoserve.api import openai_views
from videoserve.jobs import text

MAX_PATH_CHARS = 2048
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # one C-level scan: this runs on every request
PARSED_BODY = "videoserve.json_body"  # key in scope["state"]
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class InputGuardMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if len(path) > MAX_PATH_CHARS or _CONTROL.search(path):
            await refuse(scope, receive, send, 404, "not found: no such path", None)
            return
        query = scope.get("query_string", b"")
        if query:
            problem = _query_problem(query)
            if problem is not None:
                await refuse(scope, receive, send, 400, problem[1], problem[0])
                return
        if scope["method"] not in _BODY_METHODS or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        body, more = await _read_body(receive)
        try:
            parsed: Any = json.loads(body) if body.strip() else None
        except RecursionError:
            parsed = _TOO_DEEP
        except (ValueError, UnicodeDecodeError):
            parsed = _MALFORMED  # the route's own parser says what is wrong
        if parsed is not _MALFORMED:
            try:
                if parsed is _TOO_DEEP:
                    raise errors.InvalidRequest(text.TOO_DEEP)
                text.check_tree(parsed)
            except errors.InvalidRequest as exc:
                await refuse(scope, receive, send, 400, exc.message, exc.param)
                return
            if parsed is not None:
                scope.setdefault("state", {})[PARSED_BODY] = parsed
        await self.app(scope, _replaying(body, more, receive), send)


_TOO_DEEP = object()
_MALFORMED = object()


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers") or []:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


def _query_problem(query: bytes) -> tuple[str, str] | None:
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        for part in (name, value):
            reason = text.unstorable(part)
            if reason is not None:
                field = text.printable(name)
                return field, f"{field}: {reason}"
    return None


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole body (its size is capped by the body-limit middleware outside this one)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replaying(body: bytes, complete: bool, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # a disconnect, as the app would have seen it

    return replay if complete else receive


async def refuse(
    scope: Scope, receive: Receive, send: Send, status: int, message: str, param: str | None
) -> None:
    """Answer from a middleware, in the envelope of the dialect the path belongs to."""
    if scope["path"].startswith("/v1/videos"):
        response = openai_views.error_response(status, message, param=param)
    else:
        extra: dict[str, Any] = {"param": param} if param else {}
        response = api_errors.error_response(status, message, **extra)
    await response(scope, receive, send)

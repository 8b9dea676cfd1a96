"""The status poll without FastAPI's routing and dependency solving: a pure-ASGI answer to
`GET /v2/requests/{id}/status`, the most frequent request by far.

Why: a poll's own work is a key check (cached, see `KeyStore.authenticate`) and one read of
the job by its primary key, tens of microseconds; FastAPI's route matching, dependency solving
and per-route wrappers around it cost several times that. It answers only the happy path: a
known key polling its own job. Every other case (no key, a bad or ambiguous key, an unknown
id, a database error) falls through to the FastAPI route, which answers it as it always has,
in the same envelope. The route stays registered, so the OpenAPI document is unchanged.

It sits inside the request id and the rate limits, which apply to every poll, and outside the
body limit and the input guard, which have nothing to check on a plain poll: a request with a
query string or a body goes past it to them, and an id they would refuse (control
characters, too long) is one no job can have, so the route answers it.

The answer is the route's own: the same view (`views.status`), the job read afresh from the
database on every poll (no row cache), FAILED served as 422.
"""

from __future__ import annotations

import re

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from videoserve import errors
from videoserve.api import credentials, views
from videoserve.jobs.keys import ANONYMOUS
from videoserve.jobs.states import Status
from videoserve.runtime import Runtime

_STATUS_PATH = re.compile(r"^/v2/requests/([^/]+)/status$")


class StatusPolls:
    """Answers a poll of the caller's own job; passes everything else to the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope["query_string"]:
            matched = _STATUS_PATH.match(scope["path"])
            if matched is not None and not _has_body(scope):
                answer = await _answer(scope, matched.group(1))
                if answer is not None:
                    await answer(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


async def _answer(scope: Scope, request_id: str) -> JSONResponse | None:
    """The poll's answer, or None when the route should answer (an error of any kind)."""
    runtime: Runtime | None = getattr(getattr(scope.get("app"), "state", None), "runtime", None)
    if runtime is None:
        return None
    try:
        if runtime.settings.auth:
            presented = credentials.presented_key(scope["headers"])
            if presented is None:
                return None
            key = await runtime.keys.authenticate(presented)
            if key is None:
                return None
            scope.setdefault("state", {})["api_key"] = key  # as `deps.current_key` leaves it
        else:
            key = ANONYMOUS
        job_status, body = await views.poll(runtime, key, request_id)
    except errors.VideoserveError:
        return None  # the route words it (401, 404, ...) exactly as before
    except Exception:
        return None
    return JSONResponse(body, status_code=422 if job_status == Status.FAILED else 200)

"""The status poll without FastAPI's routing: a pure-ASGI answer to
`GET /v2/requests/{id}/status`, the most frequent request by far, around the whole middleware
stack (Starlette's error layer and FastAPI's own layers too: `app._answer_polls_first`).

Why: a poll's own work is a key check (cached, see `KeyStore.authenticate`) and one read of
the job by its primary key, tens of microseconds. Around it, FastAPI's routing and dependency
solving, and our request-id and rate-limit middlewares, each wrapping `send`, cost more than
that. So this layer does what those would do for a poll itself: it takes the request's id,
counts the call in the rate limiter's `status` bucket, and answers with both in its headers.

It answers only the happy path: a known key polling its own job, within its rate limit. Every
other case (no key, a bad or ambiguous key, an unknown id, a database error, a spent limit)
goes on to the app, which answers it as it always has, in the same envelope; the id chosen and
the call counted here are handed on in the scope's state, so the call is counted once
(`ratelimit.COUNTED`) and keeps its id (`logs.STATE_KEY`). A request with a query string or a
body goes on to the app too (the body limit and the input guard have something to check).
Where OpenTelemetry is in use, this layer is not installed, so that every poll is traced.

The answer is the route's own: the same view (`views.status_body`), the job read afresh from
the database on every poll (no row cache), FAILED served as 422, the body encoded as
Starlette's `JSONResponse` encodes it.
"""

from __future__ import annotations

import json
import json.encoder
import logging
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from videoserve import errors
from videoserve.api import credentials, ratelimit, views
from videoserve.api.deps import Services
from videoserve.jobs.keys import ANONYMOUS
from videoserve.jobs.states import Status
from videoserve.observability import logs

log = logging.getLogger("videoserve.api")
# `/v2/requests/{id}/status`, matched with string operations rather than a regular
# expression (`/v2/requests/([^/]+)/status\Z`): the match was a fortieth of a poll's time.
_PREFIX, _SUFFIX = "/v2/requests/", "/status"
_ID_START, _ID_END = len(_PREFIX), -len(_SUFFIX)
_JSON = (b"content-type", b"application/json")
_REQUEST_ID = logs.REQUEST_ID_HEADER.encode()


class Serving:
    """The app's services while its lifespan runs; None before and after.

    Why not `app.state.services`: Starlette's `State` answers through `__getattr__` after a
    failed attribute lookup, a few tenths of a microsecond on every poll."""

    __slots__ = ("services",)

    def __init__(self) -> None:
        self.services: Services | None = None


class StatusPolls:
    """Answers a poll of the caller's own job; passes everything else to the app."""

    def __init__(self, app: ASGIApp, limits: ratelimit.RateLimits, serving: Serving) -> None:
        self.app = app
        self.limits = limits
        self.serving = serving

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answered = False
        if scope["type"] == "http":
            try:
                answered = await self._answer(scope, send)
            except Exception:  # outside the error layer: the app answers (and logs) instead
                # Nothing was sent: the two sends are `_answer`'s last statements, and
                # uvicorn's sends do not raise (a gone client is ignored).
                log.exception("status poll layer failed; the app answers this one")
        if not answered:
            await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, send: Send) -> bool:
        """True when this layer answered the request; False: the app must answer it."""
        if scope["method"] != "GET" or scope["query_string"]:
            return False
        path: str = scope["path"]
        if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
            return False
        job_id = path[_ID_START:_ID_END]
        if not job_id or "/" in job_id:
            return False
        services = self.serving.services
        if services is None:  # before the lifespan started it, or after it stopped
            return False
        # The headers in one pass, for what `has_body`, `logs.choose_request_id` and
        # `credentials.presented_key` each read (ASGI servers lower-case header names).
        api_keys: list[bytes] = []
        authorizations: list[bytes] = []
        presented_id: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                api_keys.append(value)
            elif name == b"authorization":
                authorizations.append(value)
            elif name == _REQUEST_ID:
                if presented_id is None:
                    presented_id = value
            elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                return False  # a body: the body limit and the input guard check it
        request_id = logs.adopt_request_id(scope, presented_id)
        try:
            presented = credentials.key_from(api_keys, authorizations)
        except errors.InvalidRequest:
            return False  # ambiguous: the app words the 400 (and counts it by address)
        headers = [(b"", b""), _JSON]  # content-length first, as Starlette sends it
        if self.limits.active:
            verdict = await self.limits.hit("status", ratelimit.identity_of(presented, scope))
            scope["state"][ratelimit.COUNTED] = verdict
            if verdict is not None:
                if not verdict.allowed:
                    return False  # the app's rate limiter answers the 429 with this verdict
                headers += verdict.header_pairs()
        try:
            if services.settings.auth:
                if presented is None:
                    return False
                key = await services.keys.authenticate(presented)
                if key is None:
                    return False
                scope["state"]["api_key"] = key  # as `deps.current_key` leaves it
            else:
                key = ANONYMOUS
            job_status, payload = await views.poll(services.jobs, key, job_id)
        except Exception:
            return False  # the route words it (401, 404, 503...) exactly as before
        body = _encode(payload)
        headers[0] = (b"content-length", str(len(body)).encode())
        headers.append((_REQUEST_ID, request_id.encode()))
        status = 422 if job_status == Status.FAILED else 200
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True


# Starlette's JSONResponse.render, byte for byte, without building a Response. Why not
# `JSONEncoder.encode`: it builds the C encoder afresh on every call (a third of its cost);
# this one is built once, with the same options (`json.dumps(ensure_ascii=False,
# allow_nan=False, separators=(",", ":"))`), and no circular-reference check (a poll's body
# is a flat dict of strings and numbers). Python without the C accelerator takes the encoder.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_make_c_encoder: Any = getattr(json.encoder, "c_make_encoder", None)  # not in typeshed
_C_ENCODER = (
    _make_c_encoder(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    if _make_c_encoder is not None
    else None
)


def _encode(payload: dict[str, Any]) -> bytes:
    if _C_ENCODER is None:
        return _ENCODER.encode(payload).encode("utf-8")
    return "".join(_C_ENCODER(payload, 0)).encode("utf-8")

"""The one place domain exceptions become HTTP answers: `{"error": "..."}` with the code.

Every client mistake maps to a 4xx with a precise message; anything unexpected is logged and
answered 500 without internals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from videoserve import errors
from videoserve.db.failures import database_full
from videoserve.jobs import text
from videoserve.storage.base import out_of_space

log = logging.getLogger("videoserve.api")

STATUS_CODES: list[tuple[type[errors.VideoserveError], int]] = [
    (errors.PayloadTooLarge, 413),
    (errors.InvalidRequest, 400),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.InsufficientCredits, 406),
    (errors.InferenceFailed, 422),
    (errors.RateLimited, 429),
    (errors.ModelUnavailable, 502),
    (errors.ServiceUnavailable, 503),
    (errors.RequestTimeout, 504),
    # 507, not 503 with Retry-After: a full disk does not clear on a timer (an operator, or
    # the retention sweep, frees space), so any Retry-After would be a guess; and 503 means
    # "the database blinked, retry shortly" here, which monitoring must tell apart.
    (errors.StorageFull, 507),
]


# `code` for errors Starlette raises itself (unknown routes, wrong methods, oversized bodies).
_HTTP_CODES = {
    401: errors.Unauthorized.code,
    403: errors.Forbidden.code,
    404: errors.NotFound.code,
    405: "method_not_allowed",
    413: errors.PayloadTooLarge.code,
}


def status_for(exc: errors.VideoserveError) -> int:
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return 500


def domain_error(exc: Exception) -> errors.VideoserveError | None:
    """The domain error an unexpected exception stands for, if any: a write that found no
    space is `StorageFull`, so it answers 507 without the path an `OSError` names. That is
    an `OSError` (a multipart upload spooled to a full temp folder), or the job database on
    a full disk (SQLite inside the data folder, as embedded; PostgreSQL's `disk_full`),
    which is not "unavailable, retry shortly"."""
    if isinstance(exc, errors.VideoserveError):
        return exc
    if out_of_space(exc) or database_full(exc):
        log.error("storage full: %s", exc)  # the path, for the operator's eyes only
        return errors.StorageFull()
    return None


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    # A message may echo client text (a parameter's name); a lone surrogate in it would fail
    # to encode as UTF-8 and turn the 400 into a 500.
    return JSONResponse(
        {"error": text.printable(message), **extra}, status_code=status, headers=headers
    )


def allowed_methods(request: Request) -> str:
    """The methods the request's path is documented with. Starlette's 405 names only the first
    matching route's, so `Allow` missed DELETE on /v1/videos/{id} (RFC 9110 wants them all);
    and a literal path beats a template (`/v1/videos/extensions` is not a `{video_id}`), as the
    OpenAPI document says and clients read it."""
    documented = _documented_methods(request)
    if documented:
        return ", ".join(sorted(documented))
    # Undocumented routes: asked method by method through `matches` (included routers in
    # FastAPI 0.165 hold no `methods` of their own, so their attributes cannot be read).
    methods: set[str] = set()
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        for route in request.app.router.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                methods.add(method)
                break
    return ", ".join(sorted(methods))


def _documented_methods(request: Request) -> set[str]:
    """The methods of the OpenAPI path that fits the request best (most literal segments)."""
    segments = request.url.path.strip("/").split("/")
    best: tuple[int, set[str]] = (-1, set())
    for template, operations in request.app.openapi().get("paths", {}).items():
        parts = template.strip("/").split("/")
        if len(parts) != len(segments):
            continue
        literal = 0
        for part, segment in zip(parts, segments, strict=True):
            if part.startswith("{") and part.endswith("}"):
                continue
            if part != segment:
                break
            literal += 1
        else:
            if literal > best[0]:
                best = (literal, {m.upper() for m in operations if m.upper() in _METHODS})
    return best[1]


_METHODS = ("DELETE", "GET", "OPTIONS", "PATCH", "POST", "PUT")


EnvelopeFor = Callable[[Request, Exception], JSONResponse]


def install(app: FastAPI, *, dialects: Mapping[str, EnvelopeFor] | None = None) -> None:
    """Map exceptions to answers; `dialects` maps a path prefix to its own error envelope
    (OpenAI's under `/v1/videos`), used for unknown routes and wrong methods there too."""
    dialects = dict(dialects or {})

    def dialect_of(request: Request) -> EnvelopeFor | None:
        path = request.url.path
        for prefix, envelope in dialects.items():
            if path == prefix or path.startswith(prefix + "/"):
                return envelope
        return None

    @app.exception_handler(errors.VideoserveError)
    async def _domain(request: Request, exc: errors.VideoserveError) -> JSONResponse:
        status = status_for(exc)
        headers: dict[str, str] = {}
        if isinstance(exc, errors.RateLimited | errors.ServiceUnavailable):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        # The machine-readable code and the error's own facts (param, balance and price,
        # retry_after...) beside the message, so no client parses the wording.
        extra: dict[str, object] = {"code": exc.code, **exc.fields()}
        if status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc.message)
        return error_response(status, exc.message or type(exc).__name__, headers, **extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        message = first.get("msg", "invalid request")
        fields: dict[str, Any] = {"param": where} if where else {}
        return error_response(
            400,
            f"{where}: {message}" if where else message,
            code=errors.InvalidRequest.code,
            **fields,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 404 and message == "Not Found":
            message = f"not found: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
            allowed = allowed_methods(request)
            headers = {**(headers or {}), "Allow": allowed}
            if allowed:
                message += f"; allowed: {allowed}"
        envelope = dialect_of(request)
        if envelope is not None:
            return envelope(request, StarletteHTTPException(exc.status_code, message, headers))
        return error_response(
            exc.status_code, message, headers, code=_HTTP_CODES.get(exc.status_code, "http_error")
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    @app.exception_handler(ConnectionError)
    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        known = domain_error(exc)
        if known is not None:  # a database on a full disk is not "retry shortly"
            return await _domain(request, known)
        log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
        return error_response(
            503,
            "the job database is unavailable; retry shortly",
            {"Retry-After": "2"},
            code=errors.ServiceUnavailable.code,
        )

    @app.exception_handler(DataError)
    async def _unstorable(request: Request, exc: Exception) -> JSONResponse:
        # The database refused a value (PostgreSQL: too long for its column, or not valid
        # text): the request's fault, answered alike on both databases. Every field is
        # checked before it is written (`jobs.text`); this is the net under those checks.
        log.warning(
            "%s %s: a value the database cannot store: %s", request.method, request.url.path, exc
        )
        return error_response(
            400,
            "a value in the request cannot be stored (too long, or not valid text)",
            code=errors.InvalidRequest.code,
        )

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: Exception) -> JSONResponse:
        # Here, not only in `_unexpected`: Starlette re-raises what reaches that one, and a
        # full disk is an answer, not a crash to log with a traceback.
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        known = domain_error(exc)  # a driver's own error (SQLite's, unwrapped) included
        if known is not None:
            return await _domain(request, known)
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal server error", code="server_error")

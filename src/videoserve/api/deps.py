"""Request-scoped dependencies: the runtime, the caller's key, and the JSON body."""

from __future__ import annotations

import json
from collections.abc import Container, Iterable
from typing import Annotated, Any

from fastapi import Depends, Request

from videoserve import errors
from videoserve.api import credentials, guard
from videoserve.jobs import text
from videoserve.jobs.keys import ANONYMOUS
from videoserve.jobs.records import ApiKey
from videoserve.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    # async on purpose: FastAPI runs a plain `def` dependency in a threadpool, a thread hop
    # on every request for what is an attribute read.
    return request.app.state.runtime


MISSING_KEY = (
    "missing API key: send it in the x-api-key header or as Authorization: Bearer "
    "(the CLI takes --api-key or VIDEOSERVE_API_KEY)"
)

RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def current_key(request: Request, runtime: RuntimeDep) -> ApiKey:
    if not runtime.settings.auth:
        return ANONYMOUS
    presented = credentials.presented_key(request.scope["headers"])
    if presented is None:
        raise errors.Unauthorized(MISSING_KEY)
    key = await runtime.keys.authenticate(presented)
    if key is None:
        raise errors.Unauthorized("invalid API key")
    request.state.api_key = key
    return key


KeyDep = Annotated[ApiKey, Depends(current_key)]


async def json_body(request: Request) -> Any:
    """The parsed JSON body; 400 for malformed JSON (size is capped by the body middleware).

    A JSON body was parsed and checked by the input guard already: its value is reused."""
    parsed = request.scope.get("state", {}).get(guard.PARSED_BODY)
    if parsed is not None:
        return parsed
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except RecursionError:
        raise errors.InvalidRequest(text.TOO_DEEP) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.InvalidRequest(f"malformed JSON body: {exc}") from None
    text.check_tree(parsed)
    return parsed


JsonBody = Annotated[Any, Depends(json_body)]


def refuse_repeated_fields(names: Iterable[str], lists: Container[str] = ()) -> None:
    """400 for a form field sent more than once, unless it is one of `lists` (fields that
    take several values). Why: a form read into a dict keeps the last value of a repeated
    field, so `model=a&model=b` ran `b` without a word."""
    seen: set[str] = set()
    for name in names:
        if name in seen and name not in lists:
            raise errors.InvalidRequest(
                f"{name}: sent more than once; this form field takes one value", param=name
            )
        seen.add(name)


def base_url(request: Request, runtime: Runtime) -> str:
    """The absolute URL clients reach us at: configured, else the request's own."""
    if runtime.settings.public_url:
        return runtime.settings.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")

"""The response side of `/openapi.json`: each operation's success model and the error answers
it really gives, each in its dialect's envelope.

The routes stay as they are (others edit them, and the poll path returns a prebuilt
JSONResponse for speed); this module patches the generated document once, at its first
request. Rules derive the common errors from the operation itself (a key is needed, it has
parameters, it is rate limited...); `OPERATIONS` names the success model and the errors
particular to a route. A route missing from the table still gets its rule-derived errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from videoserve.api.schemas import openai, segmind
from videoserve.api.schemas.envelopes import REASONS, OpenAIError, SegmindError


@dataclass(frozen=True)
class Operation:
    ok: type[BaseModel] | None = None  # None: the route documents its own (bytes, a stream)
    errors: tuple[int, ...] = ()  # beyond the rule-derived ones
    failed: type[BaseModel] | None = None  # the 422 body of a FAILED request, where served


# 507: these store the request's files (an input image, an upload) before answering.
_SUBMIT = (404, 406, 502, 507)
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("post", "/v2/{model}"): Operation(segmind.Submitted, _SUBMIT),
    ("get", "/v2/requests/{request_id}/status"): Operation(
        segmind.RequestStatusBody, failed=segmind.RequestStatusBody
    ),
    ("get", "/v2/requests/{request_id}"): Operation(
        segmind.RequestResult, failed=segmind.RequestResult
    ),
    ("get", "/v2/requests/{request_id}/events"): Operation(),
    ("get", "/v2/requests/{request_id}/preview"): Operation(),
    ("get", "/v1/videos/{video_id}/events"): Operation(),
    ("post", "/v2/requests/{request_id}/cancel"): Operation(segmind.CancelOutcome),
    ("post", "/v1/{model}"): Operation(None, (*_SUBMIT, 504), failed=SegmindError),
    ("get", "/v1/models"): Operation(segmind.ModelList),
    ("get", "/healthz"): Operation(segmind.Health),
    ("get", "/readyz"): Operation(segmind.Health),
    ("get", "/files/{key}"): Operation(None, (403,)),
    ("get", "/v1/account"): Operation(segmind.Account, (403, 404)),
    ("get", "/v1/requests"): Operation(segmind.UsagePage, (403,)),
    ("get", "/v1/admin/workers"): Operation(segmind.WorkerList, (403,)),
    ("get", "/v1/admin/scaling"): Operation(segmind.ScalingReport, (403,)),
    ("post", "/v1/webhooks"): Operation(segmind.WebhookEndpoint),
    ("get", "/v1/webhooks"): Operation(segmind.WebhookEndpointList),
    ("get", "/v1/webhooks/secret"): Operation(segmind.WebhookSecret),
    ("post", "/v1/webhooks/secret/rotate"): Operation(segmind.WebhookSecret),
    ("get", "/v1/webhooks/deliveries"): Operation(segmind.WebhookAttemptList),
    ("delete", "/v1/webhooks/{endpoint_id}"): Operation(segmind.Deleted),
    ("post", "/v1/videos"): Operation(openai.Video, _SUBMIT),
    ("get", "/v1/videos"): Operation(openai.VideoList),
    ("get", "/v1/videos/{video_id}"): Operation(openai.Video),
    ("delete", "/v1/videos/{video_id}"): Operation(openai.VideoDeleted),
    # A spritesheet is made and stored on its first request.
    ("get", "/v1/videos/{video_id}/content"): Operation(None, (507,)),
    ("post", "/v1/videos/{video_id}/remix"): Operation(openai.Video, _SUBMIT),
    # The source video is a 404 when it is not the caller's (or not there).
    ("post", "/v1/videos/extensions"): Operation(None, _SUBMIT),
    ("post", "/v1/videos/edits"): Operation(None, _SUBMIT),
    ("post", "/v1/videos/characters"): Operation(None, (404, 406, 507)),
}

UNAUTHENTICATED = {"/", "/healthz", "/readyz", "/v1/models", "/files/{key}"}
# The two ways a request may carry its key (api/credentials.py): each operation that needs one
# lists both as alternatives, so Swagger UI's "Authorize" fills in either and "Try it out"
# sends it. Without them every tried call answered 401.
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "ApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "An API key (`videoserve keys create`); `serve` prints one on first start",
    },
    "Bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "The same API key as `Authorization: Bearer KEY` (the openai SDK's way)",
    },
}
NO_DATABASE = {"/", "/healthz"}
RATE_LIMITED_PREFIXES = ("/v1/", "/v2/")  # as api/ratelimit.py counts them
# Answered by middleware in the flat shape, before a route's envelope applies.
MIDDLEWARE_ERRORS = {413, 429}


def document(app: FastAPI) -> None:
    """Make `app.openapi()` return the generated document with the response contract added."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            add_contract(generate())  # FastAPI caches it in app.openapi_schema
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def add_contract(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    schema["components"]["securitySchemes"] = SECURITY_SCHEMES

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        if model.__name__ not in components:
            body = model.model_json_schema(
                ref_template="#/components/schemas/{model}", mode="serialization"
            )
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            spec = OPERATIONS.get((method, path), Operation())
            if path not in UNAUTHENTICATED:
                operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
            responses: dict[str, Any] = operation.setdefault("responses", {})
            # FastAPI's default 422 (HTTPValidationError) never happens: validation is a 400.
            responses.pop("422", None)
            if spec.ok is not None:
                ok = responses.setdefault("200", {"description": "Successful Response"})
                ok["content"] = {"application/json": {"schema": ref(spec.ok)}}
            openai_dialect = path == "/v1/videos" or path.startswith("/v1/videos/")
            envelope = ref(OpenAIError) if openai_dialect else ref(SegmindError)
            for code in sorted(_errors(method, path, operation, spec)):
                body = envelope
                if code == 422 and spec.failed is not None:
                    body = ref(spec.failed)
                elif openai_dialect and code in MIDDLEWARE_ERRORS:
                    body = {"anyOf": [ref(OpenAIError), ref(SegmindError)]}
                responses[str(code)] = {
                    "description": REASONS[code],
                    "content": {"application/json": {"schema": body}},
                }
    for unused in ("HTTPValidationError", "ValidationError"):
        if not _referenced(schema, unused):
            components.pop(unused, None)


def _errors(method: str, path: str, operation: dict[str, Any], spec: Operation) -> set[int]:
    codes = set(spec.errors)
    if spec.failed is not None:
        codes.add(422)
    if path not in NO_DATABASE:
        codes.add(503)
    if path not in UNAUTHENTICATED:
        # 400 too: a key given twice, or by both schemes with different values, is ambiguous.
        codes.update((400, 401))
    if operation.get("parameters") or operation.get("requestBody"):
        codes.add(400)
    if "{" in path:
        codes.add(404)
    if path.startswith(RATE_LIMITED_PREFIXES):
        codes.add(429)
    if method in ("post", "put", "patch"):
        codes.add(413)
    return codes


def _referenced(node: Any, name: str) -> bool:
    target = f"#/components/schemas/{name}"
    if isinstance(node, dict):
        return any(
            (k == "$ref" and v == target) or (k != name and _referenced(v, name))
            for k, v in node.items()
        )
    if isinstance(node, list):
        return any(_referenced(v, name) for v in node)
    return False

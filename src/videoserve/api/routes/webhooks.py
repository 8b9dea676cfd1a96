"""Per-key webhooks: endpoints, the signing secret, and the delivery log.

A per-request webhook needs none of this but the secret: `?webhook=URL` on a submit is
signed with the same per-key secret as the endpoints registered here.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from videoserve import errors
from videoserve.api.deps import KeyDep, WebhooksDep, WebhookUrlsDep
from videoserve.jobs import text
from videoserve.webhooks import events
from videoserve.webhooks.records import Attempt, Endpoint

router = APIRouter(prefix="/v1/webhooks", tags=["Webhooks"])

MAX_ENDPOINTS_PER_KEY = 20  # bounds the fan-out of one event


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s) URL that receives signed POSTs")
    events: list[str] | None = Field(
        default=None,
        description=f"Event types to receive, of {', '.join(events.EVENT_TYPES)}; "
        f"default: {', '.join(events.DEFAULT_EVENT_TYPES)}",
    )


def _endpoint(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "object": "webhook_endpoint",
        "url": endpoint.url,
        "events": list(endpoint.events),
        "created_at": int(endpoint.created_at),
    }


def _attempt(attempt: Attempt) -> dict[str, Any]:
    return {
        "id": attempt.id,
        "object": "webhook_delivery_attempt",
        "event_id": attempt.event_id,
        "event_type": attempt.event_type,
        "request_id": attempt.job_id,
        "delivery_id": attempt.delivery_id,
        "delivery_status": attempt.delivery_status,
        "endpoint_id": attempt.endpoint_id,
        "url": attempt.url,
        "attempt": attempt.attempt,
        "success": attempt.status_code is not None and 200 <= attempt.status_code < 300,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "started_at": round(attempt.started_at, 3),
        "finished_at": round(attempt.finished_at, 3),
        "duration_ms": round(1000 * (attempt.finished_at - attempt.started_at), 1),
    }


@router.post("", summary="Register an endpoint for this key's events")
async def create_endpoint(
    body: EndpointCreate, hooks: WebhooksDep, webhook_urls: WebhookUrlsDep, key: KeyDep
) -> dict[str, Any]:
    event_types = events.parse_event_types(body.events)
    url = await webhook_urls.check(body.url, param="url")
    assert url is not None
    if len(await hooks.endpoints(key.id)) >= MAX_ENDPOINTS_PER_KEY:
        raise errors.InvalidRequest(
            f"this key already has {MAX_ENDPOINTS_PER_KEY} webhook endpoints; delete one first"
        )
    return _endpoint(await hooks.create_endpoint(key.id, url, event_types))


@router.get("", summary="This key's endpoints")
async def list_endpoints(hooks: WebhooksDep, key: KeyDep) -> dict[str, Any]:
    found = await hooks.endpoints(key.id)
    return {"object": "list", "data": [_endpoint(e) for e in found]}


@router.get("/secret", summary="The key's signing secret (created on first use)")
async def get_secret(hooks: WebhooksDep, key: KeyDep) -> dict[str, str]:
    return {"secret": await hooks.secret(key.id)}


@router.post("/secret/rotate", summary="Replace the signing secret; the old one stops at once")
async def rotate_secret(hooks: WebhooksDep, key: KeyDep) -> dict[str, str]:
    return {"secret": await hooks.rotate_secret(key.id)}


@router.get("/deliveries", summary="The delivery attempt log, newest first")
async def list_deliveries(
    hooks: WebhooksDep,
    key: KeyDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    found = await hooks.attempts(key.id, limit=limit)
    return {"object": "list", "data": [_attempt(a) for a in found]}


@router.delete("/{endpoint_id}", summary="Delete an endpoint; its pending deliveries stop")
async def delete_endpoint(endpoint_id: str, hooks: WebhooksDep, key: KeyDep) -> dict[str, Any]:
    # An id that cannot be stored names no endpoint: 404 without asking the database.
    if not text.could_be_id(endpoint_id) or not await hooks.delete_endpoint(key.id, endpoint_id):
        raise errors.NotFound(f"webhook endpoint '{endpoint_id}' not found")
    return {"id": endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True}

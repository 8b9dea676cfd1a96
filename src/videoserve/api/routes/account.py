"""The caller's account: its credits (`GET /v1/account`) and its usage history
(`GET /v1/requests`). Admin keys may look at any key with `?key=KEY_ID`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from videoserve import errors
from videoserve.api.deps import KeyDep, RuntimeDep
from videoserve.api.views import iso
from videoserve.jobs import ledger, listing
from videoserve.jobs.keys import ANONYMOUS
from videoserve.jobs.records import ApiKey, Job, sound_of
from videoserve.jobs.states import Status

router = APIRouter(prefix="/v1", tags=["Account"])

KeyParam = Annotated[
    str | None, Query(alias="key", description="Admin keys only: another key's id (key_...)")
]


def _scope(key: ApiKey, requested: str | None) -> str | None:
    """Whose rows the caller sees: its own; an admin's pick with `?key=`, else every key's."""
    if requested is not None:
        if not key.is_admin:
            raise errors.Forbidden("?key= needs an admin key (videoserve keys create --admin)")
        return requested
    return None if key.is_admin else key.id


@router.get("/account", summary="The key's credits: balance, spent, refunded")
async def account(runtime: RuntimeDep, key: KeyDep, key_id: KeyParam = None) -> dict[str, Any]:
    target = _scope(key, key_id) or key.id
    if target == ANONYMOUS.id:  # auth is off: nothing is charged
        return _account_view(ledger.Account(ANONYMOUS.id, ANONYMOUS.name, True, 0.0, 0.0, 0.0, 0.0))
    found = await ledger.account(runtime.store.read_engine, target)
    if found is None:
        raise errors.NotFound(f"key '{target}' not found")
    return _account_view(found)


def _account_view(account: ledger.Account) -> dict[str, Any]:
    return {
        "id": account.key_id,
        "object": "account",
        "name": account.name,
        "credits": None if account.unlimited else ledger.number(account.balance),
        "unlimited": account.unlimited,
        "granted": ledger.number(account.granted),
        "spent": ledger.number(account.spent),
        "refunded": ledger.number(account.refunded),
    }


@router.get("/requests", summary="Usage history: the key's requests, newest first")
async def requests(
    runtime: RuntimeDep,
    key: KeyDep,
    after: Annotated[str | None, Query(description="The last id of the previous page")] = None,
    limit: Annotated[int, Query(description="Page size, 1 to 100")] = 20,
    key_id: KeyParam = None,
) -> dict[str, Any]:
    """Unexpired requests with their model, parameters, cost, refund, timings and error.
    An admin key without `?key=` sees every key's."""
    page, has_more = await listing.list_jobs(
        runtime.store, _scope(key, key_id), after=after, limit=limit
    )
    refunds = await ledger.refunds_for(runtime.store.read_engine, [job.id for job in page])
    return {
        "object": "list",
        "data": [_request_view(job, refunds.get(job.id, 0.0)) for job in page],
        "has_more": has_more,
        "last_id": page[-1].id if page else None,
    }


def _seconds(start: float | None, end: float | None) -> float | None:
    return round(end - start, 4) if start is not None and end is not None else None


def _request_view(job: Job, refunded: float) -> dict[str, Any]:
    result = job.result or {}
    return {
        "id": job.id,
        "object": "request",
        "key_id": job.api_key_id,
        "model": job.model,
        "served_by": result.get("served_by", job.served_by),
        "status": job.status.value,
        "parameters": job.params,
        "cost": None if job.cost is None else ledger.number(job.cost),
        "refunded": ledger.number(refunded),
        "attempts": job.attempt,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "expires_at": iso(job.expires_at),
        "queue_time": _seconds(job.created_at, job.started_at),
        "inference_time": result.get("inference_time"),
        **(sound_of(result) if job.status == Status.COMPLETED else {}),
        "total_time": _seconds(job.created_at, job.finished_at),
        "error": job.error,
    }

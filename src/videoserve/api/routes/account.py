"""The caller's account: its credits (`GET /v1/account`) and its usage history
(`GET /v1/requests`). Admin keys may look at any key with `?key=KEY_ID`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from videoserve.api.deps import AccountsDep, KeyDep
from videoserve.api.views import iso
from videoserve.jobs import ledger
from videoserve.jobs.records import Job
from videoserve.jobs.states import Status

router = APIRouter(prefix="/v1", tags=["Account"])

KeyParam = Annotated[
    str | None, Query(alias="key", description="Admin keys only: another key's id (key_...)")
]


@router.get("/account", summary="The key's credits: balance, spent, refunded")
async def account(accounts: AccountsDep, key: KeyDep, key_id: KeyParam = None) -> dict[str, Any]:
    return _account_view(await accounts.account(key, key_id))


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
    accounts: AccountsDep,
    key: KeyDep,
    after: Annotated[str | None, Query(description="The last id of the previous page")] = None,
    limit: Annotated[int, Query(description="Page size, 1 to 100")] = 20,
    key_id: KeyParam = None,
) -> dict[str, Any]:
    """Unexpired requests with their model, parameters, cost, refund, timings and error.
    An admin key without `?key=` sees every key's."""
    page = await accounts.usage(key, key_id, after=after, limit=limit)
    return {
        "object": "list",
        "data": [_request_view(job, page.refunds.get(job.id, 0.0)) for job in page.jobs],
        "has_more": page.has_more,
        "last_id": page.jobs[-1].id if page.jobs else None,
    }


def _seconds(start: float | None, end: float | None) -> float | None:
    return round(end - start, 4) if start is not None and end is not None else None


def _request_view(job: Job, refunded: float) -> dict[str, Any]:
    result = job.result
    return {
        "id": job.id,
        "object": "request",
        "key_id": job.api_key_id,
        "model": job.model,
        "served_by": result.served_by if result is not None else job.served_by,
        "status": job.status.value,
        "parameters": job.shown_params(),
        "cost": None if job.cost is None else ledger.number(job.cost),
        "refunded": ledger.number(refunded),
        "attempts": job.attempt,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "expires_at": iso(job.expires_at),
        "queue_time": _seconds(job.created_at, job.started_at),
        "inference_time": result.inference_time if result is not None else None,
        **(
            {
                "has_audio": result.has_audio,
                "audio_sample_rate": result.audio_sample_rate,
                "audio_codec": result.audio_codec,
            }
            if result is not None and job.status == Status.COMPLETED
            else {}
        ),
        "total_time": _seconds(job.created_at, job.finished_at),
        "error": job.error,
    }

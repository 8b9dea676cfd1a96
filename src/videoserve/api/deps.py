"""Request-scoped dependencies: the services a route uses, the caller's key, the JSON body.

Routes take what they use, each as its own `Annotated` alias (`JobsDep`, `AccountsDep`...),
never the whole runtime: the app's lifespan builds one `Services` record from it
(`api.app`), and each dependency reads its one field.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from videoserve import errors
from videoserve.api import credentials, guard
from videoserve.jobs import deadlines, fairness, text
from videoserve.jobs.keys import ANONYMOUS, KeyStore
from videoserve.jobs.queue_options import QueueOptions
from videoserve.jobs.records import ApiKey
from videoserve.models.registry import ModelRegistry
from videoserve.services.accounts import AccountService
from videoserve.services.characters import Characters
from videoserve.services.files import Files
from videoserve.services.fleet import Fleet
from videoserve.services.jobs import JobService
from videoserve.services.video_ops import VideoOperations
from videoserve.settings import Settings
from videoserve.webhooks.store import WebhookStore
from videoserve.webhooks.urls import WebhookUrls


@dataclass(frozen=True, slots=True)
class Services:
    """What the HTTP layer may reach, each part narrow (built once, in the app's lifespan)."""

    settings: Settings
    registry: ModelRegistry  # the models and their schemas
    keys: KeyStore  # authentication
    jobs: JobService
    accounts: AccountService
    video_ops: VideoOperations  # remix, extensions, edits, characters in a create
    characters: Characters
    files: Files  # stored files as links and bytes
    fleet: Fleet  # workers, queue, scaling, metrics, readiness
    webhooks: WebhookStore  # a key's endpoints, secret and delivery log
    webhook_urls: WebhookUrls  # a caller's webhook URL, checked


# Each getter is async on purpose: FastAPI runs a plain `def` dependency in a threadpool, a
# thread hop on every request for what is an attribute read.
async def get_settings(request: Request) -> Settings:
    return request.app.state.services.settings


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.services.registry


async def get_keys(request: Request) -> KeyStore:
    return request.app.state.services.keys


async def get_jobs(request: Request) -> JobService:
    return request.app.state.services.jobs


async def get_accounts(request: Request) -> AccountService:
    return request.app.state.services.accounts


async def get_video_ops(request: Request) -> VideoOperations:
    return request.app.state.services.video_ops


async def get_characters(request: Request) -> Characters:
    return request.app.state.services.characters


async def get_files(request: Request) -> Files:
    return request.app.state.services.files


async def get_fleet(request: Request) -> Fleet:
    return request.app.state.services.fleet


async def get_webhooks(request: Request) -> WebhookStore:
    return request.app.state.services.webhooks


async def get_webhook_urls(request: Request) -> WebhookUrls:
    return request.app.state.services.webhook_urls


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
KeysDep = Annotated[KeyStore, Depends(get_keys)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
AccountsDep = Annotated[AccountService, Depends(get_accounts)]
VideoOpsDep = Annotated[VideoOperations, Depends(get_video_ops)]
CharactersDep = Annotated[Characters, Depends(get_characters)]
FilesDep = Annotated[Files, Depends(get_files)]
FleetDep = Annotated[Fleet, Depends(get_fleet)]
WebhooksDep = Annotated[WebhookStore, Depends(get_webhooks)]
WebhookUrlsDep = Annotated[WebhookUrls, Depends(get_webhook_urls)]

MISSING_KEY = (
    "missing API key: send it in the x-api-key header or as Authorization: Bearer "
    "(the CLI takes --api-key or VIDEOSERVE_API_KEY)"
)

INVALID_KEY = "invalid API key"


async def current_key(request: Request) -> ApiKey:
    services: Services = request.app.state.services
    if not services.settings.auth:
        return ANONYMOUS
    presented = credentials.presented_key(request.scope["headers"])
    if presented is None:
        raise errors.Unauthorized(MISSING_KEY)
    key = await authenticated(services.keys, presented)
    request.state.api_key = key
    return key


async def authenticated(keys: KeyStore, presented: str) -> ApiKey:
    """The active key `presented` names; `Unauthorized` for an unknown or revoked one.

    Every request's check, and a long-lived stream's re-check (`routes.control`)."""
    key = await keys.authenticate(presented)
    if key is None:
        raise errors.Unauthorized(INVALID_KEY)
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


async def queue_options(request: Request) -> QueueOptions:
    """`X-Start-Timeout`, `X-Queue-Priority` and `X-Execution-Timeout`, each a 400 naming it
    when invalid (in this order). The key's priority bound (403) and the model's execution
    limit are the job service's checks.

    Why read from the request, not as three `Header` parameters (documented instead by
    `QUEUE_HEADERS` in each submit route's `openapi_extra`): FastAPI resolves every
    dependency and parameter on every request, about a hundred Python calls each; as three
    dependencies of a parameter each they made a submit a fifth longer in calls."""
    headers = request.headers
    return QueueOptions(
        start_timeout=deadlines.parse_start_timeout(headers.get(deadlines.HEADER)),
        priority=fairness.parse_priority(headers.get(fairness.HEADER)),
        execution_timeout=deadlines.parse_execution_timeout(
            headers.get(deadlines.EXECUTION_HEADER)
        ),
    )


def _header(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": {"type": "string", "title": name},
        "description": description,
    }


# The OpenAPI documentation of `queue_options`'s headers: `openapi_extra` of each submit route.
QUEUE_HEADERS: dict[str, Any] = {
    "parameters": [
        _header(
            deadlines.HEADER,
            "Seconds the request may wait for a worker to start it; past that it fails with "
            "code expired, refunded (default: VIDEOSERVE_START_TIMEOUT_SECONDS)",
        ),
        _header(
            fairness.HEADER,
            "Queue priority class: low, normal (default) or high; higher classes are claimed "
            "first; a key may ask up to its max_priority (403 above it); low priority is not "
            "counted as demand for autoscaling",
        ),
        _header(
            deadlines.EXECUTION_HEADER,
            "Seconds the request may run once a worker starts it, at most its model's limit "
            "(VIDEOSERVE_MAX_JOB_SECONDS or the model's max_job_seconds); past that it fails "
            "with code timeout, refunded",
        ),
    ]
}


QueueDep = Annotated[QueueOptions, Depends(queue_options)]


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


def base_url(request: Request, settings: Settings) -> str:
    """The absolute URL clients reach us at: configured, else the request's own."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")

"""`create_app(settings)`: one FastAPI application with everything it needs, no globals."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp

from videoserve import __version__
from videoserve.api import errors as api_errors
from videoserve.api import openai_views
from videoserve.api.guard import InputGuardMiddleware
from videoserve.api.limits import BodyLimitMiddleware
from videoserve.api.polls import Serving, StatusPolls
from videoserve.api.ratelimit import RateLimitMiddleware, RateLimits
from videoserve.api.routes import (
    account,
    admin,
    control,
    files,
    meta,
    metrics,
    openai,
    openai_ops,
    segmind,
    ui,
    webhooks,
)
from videoserve.api.schemas import contract
from videoserve.models.registry import ModelRegistry
from videoserve.moderation import Moderator
from videoserve.observability import telemetry
from videoserve.observability.logs import RequestIdMiddleware
from videoserve.runtime import Runtime
from videoserve.settings import Settings, is_loopback_host

log = logging.getLogger("videoserve.api")

DOCS_ASSETS = "/docs-assets"  # Swagger UI's and ReDoc's scripts and styles


def create_app(
    settings: Settings | None = None,
    *,
    registry: ModelRegistry | None = None,
    moderator: Moderator | None = None,
) -> FastAPI:
    """The API app; its lifespan starts the store, the maintenance loop and, unless disabled,
    the embedded worker."""
    settings = settings or Settings()
    if not settings.auth and not is_loopback_host(settings.host):
        raise ValueError(
            f"VIDEOSERVE_AUTH=off is allowed only on a loopback host, not {settings.host!r}: "
            "anyone who can reach the server could spend its GPUs"
        )

    serving = Serving()  # the poll layer's way to the runtime

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, registry=registry, moderator=moderator)
        app.state.runtime = runtime
        await runtime.start(worker=settings.embedded_worker)
        serving.runtime = runtime
        try:
            yield
        finally:
            serving.runtime = None
            await runtime.stop(grace=5.0)

    # Swagger UI and ReDoc from the assets fastapi-offline ships, not a CDN: /docs works on an
    # offline or air-gapped host.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        title="videoserve",
        version=__version__,
        description="Self-hosted video generation: the Segmind serverless contract and "
        "OpenAI's Videos API over open-weight models.",
        lifespan=lifespan,
        # Off unless OpenTelemetry is in use: its per-request check was a tenth of a poll.
        telemetry=telemetry.fastapi_telemetry(),
    )
    # Every answer under /v1/videos, unknown routes and wrong methods too, in OpenAI's envelope.
    api_errors.install(app, dialects={"/v1/videos": openai_views.response_for})
    contract.document(app)
    # Routes are matched in order: the status poll, by far the most frequent request, first.
    app.include_router(segmind.polls)
    app.include_router(segmind.submits)  # POST /v2/{model}: no other route takes its paths
    app.include_router(ui.router)
    app.include_router(meta.router)
    app.include_router(files.router)
    app.include_router(admin.router)
    app.include_router(webhooks.router)
    app.include_router(control.router)
    app.include_router(account.router)
    app.include_router(metrics.router)
    # OpenAI's /v1/videos before the Segmind catch-all POST /v1/{model}.
    app.include_router(openai_ops.router)  # before /v1/videos/{video_id}
    app.include_router(openai.router)
    app.include_router(segmind.router)
    app.add_middleware(InputGuardMiddleware)  # inside the body limit: it reads bounded bodies
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    limits = RateLimits(settings)
    app.add_middleware(RateLimitMiddleware, limits=limits)
    app.add_middleware(RequestIdMiddleware)  # even a 413 or a 429 carries the id
    # Polls answered before all of the above, doing the request id's and the rate limits'
    # part themselves; off where OpenTelemetry is in use, so that every poll is traced.
    if not telemetry.opentelemetry_in_use():
        _answer_polls_first(app, limits, serving)
    return app


def _answer_polls_first(app: FastAPI, limits: RateLimits, serving: Serving) -> None:
    """Put the poll layer outside the whole middleware stack, FastAPI's own layers too.

    Why not `add_middleware`: that puts it inside Starlette's error layer and FastAPI's
    telemetry and body-limit layers, which each wrap the call (and the first wraps `send`),
    ~3 % of a poll's CPU under load for nothing a poll needs. The stack is still built
    lazily, on the first call, so middleware added after `create_app` is kept."""
    build = app.build_middleware_stack

    def build_with_polls_outside() -> ASGIApp:
        return StatusPolls(build(), limits=limits, serving=serving)

    app.build_middleware_stack = build_with_polls_outside  # type: ignore[method-assign]

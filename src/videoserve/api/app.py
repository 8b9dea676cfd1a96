"""`create_app(settings)`: one FastAPI application with everything it needs, no globals."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp

from videoserve import __version__
from videoserve.api import errors as api_errors
from videoserve.api import openai_views
from videoserve.api.deps import Services
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
# ReDoc's bundle shows a "powered by" logo from its CDN (no option turns it off): the page may
# load only from this server, so the browser never asks the CDN and ReDoc hides the image.
REDOC_CSP = (
    "default-src 'self' 'unsafe-inline' blob: data:; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


NO_WORKER_WARNING = (
    "no embedded worker (VIDEOSERVE_EMBEDDED_WORKER=false) and no worker is registered: "
    "jobs will wait in the queue until a `videoserve worker` starts"
)


def services_of(runtime: Runtime) -> Services:
    """The parts of the runtime that routes may reach, each on its own."""
    return Services(
        settings=runtime.settings,
        registry=runtime.registry,
        keys=runtime.keys,
        jobs=runtime.service,
        accounts=runtime.accounts,
        video_ops=runtime.video_ops,
        characters=runtime.characters,
        files=runtime.files,
        fleet=runtime.fleet,
        webhooks=runtime.webhooks.webhook_store,
        webhook_urls=runtime.webhook_urls,
    )


async def _warn_without_workers(services: Services) -> None:
    """Say at start when nothing can run jobs: an API-only process with no live worker."""
    try:
        live = await services.fleet.count_live_workers()
    except Exception as exc:  # the database is not reachable yet: the requests will say so
        log.warning("could not read the live workers at start: %s", exc)
        return
    if live == 0:
        log.warning(NO_WORKER_WARNING)


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

    serving = Serving()  # the poll layer's way to the services

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, registry=registry, moderator=moderator)
        services = services_of(runtime)
        app.state.services = services  # what `api.deps` hands each route
        # The whole process, for whoever embeds the app (and tests that reach its worker);
        # no route reads it: routes get their narrow parts from `services`.
        app.state.runtime = runtime
        await runtime.start(worker=settings.embedded_worker)
        if not settings.embedded_worker:
            await _warn_without_workers(services)
        serving.services = services
        try:
            yield
        finally:
            serving.services = None
            await runtime.stop(grace=5.0)

    # Swagger UI and ReDoc from the assets fastapi-offline ships, not a CDN: /docs works on an
    # offline or air-gapped host.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        redoc_url=None,  # ours, below: the same page with a policy that keeps it on this host
        # Swagger UI keeps the key given to "Authorize" across reloads of /docs.
        swagger_ui_parameters={"persistAuthorization": True},
        title="videoserve",
        version=__version__,
        description="Self-hosted video generation: the Segmind serverless contract and "
        "OpenAI's Videos API over open-weight models.",
        lifespan=lifespan,
        # Off unless OpenTelemetry is in use: its per-request check was a tenth of a poll.
        telemetry=telemetry.fastapi_telemetry(),
    )
    _offline_redoc(app)
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


def _offline_redoc(app: FastAPI) -> None:
    """`/redoc` from the packaged bundle, with a Content-Security-Policy that keeps every load
    on this server (fastapi-offline's page would still fetch ReDoc's logo from its CDN)."""

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = REDOC_CSP
        return page


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

"""The `videoserve` command: serve, worker, generate, keys, models.

Only typer, rich and the client are imported at the top: `generate --url` and `models --url` run
on the bare client install, and every server or worker command imports its parts when it runs.
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from videoserve.cli import keys as _keys  # noqa: F401  (registers `videoserve keys`)
from videoserve.cli.common import (
    DataDir,
    PriorityName,
    app,
    configure_logging,
    err,
    load_settings,
    require,
)
from videoserve.installs import Extra, requirement_message

if TYPE_CHECKING:
    from videoserve.models.registry import ModelRegistry
    from videoserve.settings import Settings


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (VIDEOSERVE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (VIDEOSERVE_PORT)")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the HTTP API with an embedded worker (unless VIDEOSERVE_EMBEDDED_WORKER=false)."""
    settings = load_settings(host=host, port=port, data_dir=data_dir)
    if settings.embedded_worker:
        # Refuse rather than serve a queue nobody works: an API host without torch says so.
        require(
            Extra.worker,
            "the in-process worker (set VIDEOSERVE_EMBEDDED_WORKER=false to serve the API only)",
        )
    import uvicorn

    from videoserve.api import create_app
    from videoserve.api.server import uvicorn_options

    configure_logging(settings)
    registry = _checked_registry(settings, worker=settings.embedded_worker)
    if settings.auth:
        asyncio.run(_bootstrap_key(settings))
    app_ = create_app(settings, registry=registry)
    err.print(f"videoserve on http://{settings.host}:{settings.port}  (docs at /docs)")
    err.print(f"data folder {settings.data_dir.resolve()}")
    # JSON: uvicorn's own lines go through our handler too, instead of its text config.
    log_config: dict[str, Any] = {"log_config": None} if settings.log_format == "json" else {}
    uvicorn.run(
        app_,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        proxy_headers=True,
        **uvicorn_options(settings),
        **log_config,
    )


async def _bootstrap_key(settings: Settings) -> None:
    """On a fresh install, make the first key so the quick start needs no extra step."""
    from videoserve.jobs.keys import KeyStore
    from videoserve.jobs.store import JobStore

    store = JobStore.open(settings.resolved_database_url())
    try:
        await store.migrate()
        keys = KeyStore(store.database)
        if await keys.count() == 0:
            _record, plaintext = await keys.create("default", admin=True)
            err.print(
                "[bold]No API keys existed: created an admin key (shown once):[/bold]\n"
                f"  export VIDEOSERVE_API_KEY={plaintext}"
            )
    finally:
        await store.close()


def _checked_registry(settings: Settings, *, worker: bool) -> ModelRegistry:
    """The models this host serves, or exit with the configuration's mistake in one line
    (a bad models file, a VIDEOSERVE_PRELOAD name) rather than a traceback from startup."""
    from videoserve.models.registry import ModelRegistry

    try:
        registry = ModelRegistry.from_settings(settings)
        if worker:
            from videoserve.worker import preload

            served = registry.served_models(settings.worker_models or None)
            preload.models_to_preload(registry, settings.preload, served)
    except ValueError as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    return registry


@app.command()
def worker(data_dir: DataDir = None) -> None:
    """Run a worker that claims jobs from the shared database (SIGTERM drains)."""
    settings = load_settings(data_dir=data_dir)
    require(Extra.worker, "videoserve worker")
    configure_logging(settings)
    from videoserve.runtime import Runtime

    registry = _checked_registry(settings, worker=True)

    async def main() -> None:
        runtime = Runtime(settings, registry=registry)
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await runtime.start(worker=True)
        assert runtime.worker is not None
        err.print(f"worker {runtime.worker.worker_id} started")
        stop_probes = None
        if settings.worker_metrics_port:
            from videoserve.worker.probes import Probes

            probes = Probes(runtime.worker, runtime.metrics, loop)
            stop_probes = probes.serve(settings.worker_metrics_host, settings.worker_metrics_port)
        idle_exit = settings.worker_idle_exit_seconds
        if idle_exit:
            watcher = asyncio.create_task(_exit_when_idle(runtime.worker, idle_exit, stopping))
        await stopping.wait()
        if idle_exit:
            watcher.cancel()
        err.print("draining: finishing the current job, claiming no more")
        await runtime.stop(grace=settings.drain_seconds)
        if stop_probes is not None:
            stop_probes()

    asyncio.run(main())


async def _exit_when_idle(worker: Any, seconds: float, stopping: asyncio.Event) -> None:
    """Set `stopping` once `worker` has had no job for `seconds` (VIDEOSERVE_WORKER_IDLE_EXIT_
    SECONDS): the worker then drains and exits 0, and an autoscaler that scaled it up (KEDA,
    on the queue's signals) is free to scale to zero."""
    while not stopping.is_set():
        idle = worker.idle_seconds()
        if idle >= seconds:
            err.print(f"idle for {idle:.0f} s (VIDEOSERVE_WORKER_IDLE_EXIT_SECONDS): exiting")
            stopping.set()
            return
        await asyncio.sleep(min(1.0, max(0.05, seconds - idle)))


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What the video shows")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the MP4")] = Path(
        "out.mp4"
    ),
    model: Annotated[str, typer.Option(help="Model name")] = "sora-2-pro",
    duration: Annotated[int | None, typer.Option(help="Seconds: 4, 8 or 12")] = None,
    size: Annotated[str | None, typer.Option(help="e.g. 1280x720")] = None,
    image: Annotated[str | None, typer.Option(help="Reference image: a file or a URL")] = None,
    url: Annotated[
        str | None, typer.Option(help="A running server (else an embedded one is started)")
    ] = None,
    api_key: Annotated[str | None, typer.Option(envvar="VIDEOSERVE_API_KEY")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait")] = 900.0,
    data_dir: DataDir = None,
    extend: Annotated[
        str | None,
        typer.Option(help="Continue this video (an id or an MP4 file) by --duration seconds"),
    ] = None,
    edit: Annotated[
        str | None, typer.Option(help="Edit this video (an MP4 file or an id) with the prompt")
    ] = None,
    strength: Annotated[
        float | None, typer.Option(help="With --edit: how far it may move, 0-1 (default 0.6)")
    ] = None,
    start_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds the request may wait for a worker to start it (X-Start-Timeout); "
            "past that it fails with code expired, refunded"
        ),
    ] = None,
    priority: Annotated[
        PriorityName | None,
        typer.Option(help="Queue priority class (X-Queue-Priority; default normal)"),
    ] = None,
    execution_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds the request may run once started, at most the model's limit "
            "(X-Execution-Timeout); past that it fails with code timeout, refunded"
        ),
    ] = None,
) -> None:
    """Generate one video and save it, with a progress bar."""
    from videoserve.cli.generate import SourceOperation, run_generation

    if extend and edit:
        err.print("[red]error:[/red] --extend and --edit are alternatives: pass one")
        raise typer.Exit(2)
    source = None
    if extend or edit:
        source = SourceOperation("extend" if extend else "edit", extend or edit or "", strength)

    params: dict[str, Any] = {"prompt": prompt}
    if duration is not None:
        params["duration"] = duration
    if size is not None:
        params["size"] = size
    if image is not None:
        params["input_reference"] = _image_reference(image)
    if start_timeout is not None:
        params["start_timeout"] = start_timeout  # a client keyword (the header), not a param
    if priority is not None:
        params["priority"] = priority.value  # a client keyword (the header), not a param
    if execution_timeout is not None:
        params["execution_timeout"] = execution_timeout  # a client keyword too
    if url is None:
        require(Extra.worker, "generate without --url (it starts an embedded server)")
    try:
        settings = None if url else load_settings(data_dir=data_dir)
        if settings is not None:
            # As quiet as `serve`: no torchao or transformers warnings, no diffusers loading bars.
            configure_logging(settings, at_least="WARNING")
        result = run_generation(
            params,
            model=model,
            output=output,
            url=url,
            api_key=api_key,
            timeout=timeout,
            settings=settings,
            console=err,
            source=source,
        )
    except Exception as exc:  # the CLI's one place to turn errors into a message and exit 1
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    sound = (
        f"with audio ({result.get('audio_codec')}, {result.get('audio_sample_rate')} Hz)"
        if result.get("has_audio")
        else "silent"
    )
    err.print(
        f"wrote {output} ({result['width']}x{result['height']}, {result['seconds']}s, "
        f"{result['frames']} frames, {sound}, by {result.get('served_by')})"
    )


def _image_reference(image: str) -> str:
    if image.startswith(("http://", "https://", "data:")):
        return image
    path = Path(image)
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


@app.command()
def models(
    url: Annotated[
        str | None, typer.Option(help="Ask a running server (else read this host's config)")
    ] = None,
    api_key: Annotated[str | None, typer.Option(envvar="VIDEOSERVE_API_KEY")] = None,
    data_dir: DataDir = None,
) -> None:
    """List the configured models, whether each can run here, and why not."""
    described = _served_models(url, api_key) if url is not None else _local_models(data_dir)
    table = Table("model", "backend", "served by", "available", "note")
    for m in described:
        adapters = f"LoRA adapters over {m['base']}" if m.get("base") else ""
        note = m.get("reason") or m.get("warning") or adapters
        table.add_row(
            m["id"],
            m.get("backend") or "",
            m.get("served_by") or "",
            "yes" if m["available"] else "no",
            escape(note),  # a reason may name an install, "[worker]", which is not markup
        )
    Console(width=160).print(table)


def _local_models(data_dir: Path | None) -> list[dict[str, Any]]:
    """This host's configured models; each unavailable, with the reason, where this install
    cannot run models at all (a `[server]` host: its workers run elsewhere)."""
    needs_server = requirement_message(
        Extra.server, "videoserve models (without --url it reads this host's configuration)"
    )
    if needs_server is not None:
        err.print(
            f"[red]error:[/red] {escape(needs_server)}; or ask a running server: "
            "videoserve models --url http://HOST:8000"
        )
        raise typer.Exit(1)
    settings = load_settings(data_dir=data_dir)
    from videoserve.models.registry import ModelRegistry

    try:
        described = ModelRegistry.from_settings(settings).describe()
    except ValueError as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    cannot_run = requirement_message(Extra.worker, "running it on this host")
    if cannot_run is not None:
        for model in described:
            if model["available"]:
                model["available"] = False
                model["reason"] = cannot_run
    return described


def _served_models(url: str, api_key: str | None) -> list[dict[str, Any]]:
    from videoserve.client import Client

    try:
        with Client(api_key=api_key or "unused", base_url=url) as client:
            return client.models()
    except Exception as exc:  # like generate: a message and exit 1, never a traceback
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def pull(
    model: Annotated[str, typer.Argument(help="A configured model name (or alias)")],
    data_dir: DataDir = None,
) -> None:
    """Download a model's Hugging Face repo into the local cache (HF_HOME), with progress."""
    settings = load_settings(data_dir=data_dir)
    from videoserve import errors
    from videoserve.models.registry import ModelRegistry
    from videoserve.models.weights import PullFailed

    try:
        backend = ModelRegistry.from_settings(settings).backend(model)
        download = getattr(backend, "pull", None)
        if download is None:
            raise PullFailed(f"model '{model}' has no weights to download")
        folder = download()
    except (ValueError, PullFailed, errors.NotFound) as exc:
        err.print(f"[red]error:[/red] {getattr(exc, 'message', None) or exc}")
        raise typer.Exit(1) from None
    err.print(f"{model}: weights in {folder}")

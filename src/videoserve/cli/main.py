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

from videoserve.installs import Extra, requirement_message

if TYPE_CHECKING:
    from videoserve.models.registry import ModelRegistry
    from videoserve.settings import Settings

app = typer.Typer(help="Self-hosted serverless video generation.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list, credit and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
err = Console(stderr=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data folder (VIDEOSERVE_DATA_DIR)")
]


def _require(extra: Extra, what: str) -> None:
    """Exit with a sentence naming the install when this environment lacks `extra`."""
    message = requirement_message(extra, what)
    if message is not None:
        err.print(f"[red]error:[/red] {escape(message)}")  # "[worker]" is not markup
        raise typer.Exit(1)


def _settings(**overrides: Any) -> Settings:
    _require(Extra.server, "this command")
    from videoserve.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _logging(settings: Settings) -> None:
    """Text for people, or one JSON object per line (VIDEOSERVE_LOG_FORMAT=json)."""
    from videoserve.observability import logs

    logs.configure(settings.log_level, settings.log_format)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (VIDEOSERVE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (VIDEOSERVE_PORT)")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the HTTP API with an embedded worker (unless VIDEOSERVE_EMBEDDED_WORKER=false)."""
    settings = _settings(host=host, port=port, data_dir=data_dir)
    if settings.embedded_worker:
        # Refuse rather than serve a queue nobody works: an API host without torch says so.
        _require(
            Extra.worker,
            "the in-process worker (set VIDEOSERVE_EMBEDDED_WORKER=false to serve the API only)",
        )
    import uvicorn

    from videoserve.api import create_app
    from videoserve.api.server import uvicorn_options

    _logging(settings)
    registry = _checked_registry(settings, worker=settings.embedded_worker)
    if settings.auth:
        asyncio.run(_bootstrap_key(settings))
    app_ = create_app(settings, registry=registry)
    err.print(f"videoserve on http://{settings.host}:{settings.port}  (docs at /docs)")
    err.print(f"data folder {settings.data_dir.resolve()}", soft_wrap=True)
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
        err.print(f"[red]configuration error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    return registry


@app.command()
def worker(data_dir: DataDir = None) -> None:
    """Run a worker that claims jobs from the shared database (SIGTERM drains)."""
    settings = _settings(data_dir=data_dir)
    _require(Extra.worker, "videoserve worker")
    _logging(settings)
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
        stop_metrics = None
        if settings.worker_metrics_port:
            stop_metrics = runtime.metrics.serve(settings.host, settings.worker_metrics_port)
        await stopping.wait()
        err.print("draining: finishing the current job, claiming no more")
        await runtime.stop(grace=settings.drain_seconds)
        if stop_metrics is not None:
            stop_metrics()

    asyncio.run(main())


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
    if url is None:
        _require(Extra.worker, "generate without --url (it starts an embedded server)")
    try:
        result = run_generation(
            params,
            model=model,
            output=output,
            url=url,
            api_key=api_key,
            timeout=timeout,
            settings=None if url else _settings(data_dir=data_dir),
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


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who the key is for")],
    admin: Annotated[bool, typer.Option(help="May administer the server")] = False,
    credits: Annotated[
        float | None,
        typer.Option(help="Starting credits; without this option the key is unlimited"),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Create a key; the key itself is the LAST line of output, shown only this once."""

    settings = _settings(data_dir=data_dir)
    _say_which_database(settings)

    async def main() -> str:
        async with _key_store(settings) as keys:
            record, plaintext = await keys.create(name, admin=admin, credits=credits)
        budget = "unlimited" if credits is None else f"{_amount(credits)} credits"
        err.print(
            f"created {record.id} ({record.name}, {budget}); store it now, it is not shown again"
        )
        return plaintext

    from videoserve import errors

    try:
        typer.echo(asyncio.run(main()))
    except errors.InvalidRequest as exc:
        err.print(f"[red]error:[/red] {exc.message}", soft_wrap=True)
        raise typer.Exit(1) from None


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """List keys (never the keys themselves)."""

    async def main() -> None:
        async with _key_store(_settings(data_dir=data_dir)) as keys:
            records = await keys.list()
            balances = {r.id: await keys.balance(r.id) for r in records}
        table = Table("id", "name", "prefix", "admin", "credits", "state")
        for r in records:
            balance = balances.get(r.id)
            table.add_row(
                r.id,
                r.name,
                r.prefix + "…",
                "yes" if r.is_admin else "",
                "unlimited" if r.unlimited or balance is None else _amount(balance),
                "active" if r.active else "revoked",
            )
        Console().print(table)

    asyncio.run(main())


@keys_app.command("credit", context_settings={"ignore_unknown_options": True})
def keys_credit(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...) or prefix")],
    amount: Annotated[
        float, typer.Argument(help="Credits to add; negative to take some back (an adjustment)")
    ],
    note: Annotated[str, typer.Option(help="Why, kept in the ledger")] = "grant",
    data_dir: DataDir = None,
) -> None:
    """Add credits to a key: one ledger row, and the balance moves by exactly that much."""

    async def main() -> float | None:
        async with _key_store(_settings(data_dir=data_dir)) as keys:
            return await keys.credit(key_id, amount, note)

    balance = asyncio.run(main())
    if balance is None:
        err.print(f"[red]no key {key_id!r}[/red]")
        raise typer.Exit(1)
    typer.echo(f"{key_id}: {amount:+g} credits, balance {_amount(balance)}")


def _amount(value: float) -> str:
    return f"{value:g}"


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...) or prefix")],
    data_dir: DataDir = None,
) -> None:
    """Revoke a key: its requests get 401 from now on."""

    async def main() -> bool:
        async with _key_store(_settings(data_dir=data_dir)) as keys:
            return await keys.revoke(key_id) is not None

    if not asyncio.run(main()):
        err.print(f"[red]no active key {key_id!r}[/red]")
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


def _say_which_database(settings: Settings) -> None:
    """On stderr: the database a key command uses, and plainly when it has to create one
    (a key made in a new database is unknown to a server running on another)."""
    url = settings.resolved_database_url()
    if not url.startswith("sqlite"):
        err.print(f"using the database {_without_password(url)}", soft_wrap=True)
        return
    path = Path(url.split(":///", 1)[1])
    if path.exists():
        err.print(f"using the database {path}", soft_wrap=True)  # a path is never wrapped
        return
    err.print(
        f"[bold yellow]no database at {path}: creating a new, empty one.[/bold yellow] "
        "If a server is already running, it uses another data folder: pass the same "
        "--data-dir or VIDEOSERVE_DATA_DIR (or VIDEOSERVE_DATABASE_URL) as the server.",
        soft_wrap=True,
    )


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _key_store(settings: Settings):
    import contextlib

    from videoserve.jobs.keys import KeyStore
    from videoserve.jobs.store import JobStore

    @contextlib.asynccontextmanager
    async def opened():
        store = JobStore.open(settings.resolved_database_url())
        try:
            await store.migrate()
            yield KeyStore(store.database)
        finally:
            await store.close()

    return opened()


@app.command()
def models(
    url: Annotated[
        str | None, typer.Option(help="Ask a running server (else read this host's config)")
    ] = None,
    api_key: Annotated[str | None, typer.Option(envvar="VIDEOSERVE_API_KEY")] = None,
    data_dir: DataDir = None,
) -> None:
    """List the configured models, whether each can run here, and why not."""
    if url is not None:
        described = _served_models(url, api_key)
    else:
        from videoserve.models.registry import ModelRegistry

        described = ModelRegistry.from_settings(_settings(data_dir=data_dir)).describe()
    table = Table("model", "backend", "served by", "available", "note")
    for m in described:
        adapters = f"LoRA adapters over {m['base']}" if m.get("base") else ""
        note = m.get("reason") or m.get("warning") or adapters
        table.add_row(
            m["id"],
            m.get("backend") or "",
            m.get("served_by") or "",
            "yes" if m["available"] else "no",
            note,
        )
    Console(width=160).print(table)


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
    settings = _settings(data_dir=data_dir)
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

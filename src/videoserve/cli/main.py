"""The `videoserve` command: serve, worker, generate, keys, models."""

from __future__ import annotations

import asyncio
import base64
import mimetypes
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from videoserve.settings import Settings

app = typer.Typer(help="Self-hosted serverless video generation.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list, credit and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
err = Console(stderr=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data folder (VIDEOSERVE_DATA_DIR)")
]


def _settings(**overrides: Any) -> Settings:
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
    import uvicorn

    from videoserve.api import create_app

    settings = _settings(host=host, port=port, data_dir=data_dir)
    _logging(settings)
    if settings.auth:
        asyncio.run(_bootstrap_key(settings))
    app_ = create_app(settings)
    err.print(f"videoserve on http://{settings.host}:{settings.port}  (docs at /docs)")
    uvicorn.run(
        app_,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        proxy_headers=True,
        # JSON: uvicorn's own lines go through our handler too, instead of its text config.
        **({"log_config": None} if settings.log_format == "json" else {}),
    )


async def _bootstrap_key(settings: Settings) -> None:
    """On a fresh install, make the first key so the quick start needs no extra step."""
    from videoserve.jobs.keys import KeyStore
    from videoserve.jobs.store import JobStore

    store = JobStore.open(settings.resolved_database_url())
    try:
        await store.migrate()
        keys = KeyStore(store)
        if await keys.count() == 0:
            _record, plaintext = await keys.create("default", admin=True)
            err.print(
                "[bold]No API keys existed: created an admin key (shown once):[/bold]\n"
                f"  export VIDEOSERVE_API_KEY={plaintext}"
            )
    finally:
        await store.close()


@app.command()
def worker(data_dir: DataDir = None) -> None:
    """Run a worker that claims jobs from the shared database (SIGTERM drains)."""
    from videoserve.runtime import Runtime

    settings = _settings(data_dir=data_dir)
    _logging(settings)

    async def main() -> None:
        runtime = Runtime(settings)
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
    try:
        result = run_generation(
            params,
            model=model,
            output=output,
            url=url,
            api_key=api_key,
            timeout=timeout,
            settings=_settings(data_dir=data_dir),
            console=err,
            source=source,
        )
    except Exception as exc:  # the CLI's one place to turn errors into a message and exit 1
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    err.print(
        f"wrote {output} ({result['width']}x{result['height']}, {result['seconds']}s, "
        f"{result['frames']} frames, by {result.get('served_by')})"
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

    async def main() -> str:
        async with _key_store(_settings(data_dir=data_dir)) as keys:
            record, plaintext = await keys.create(name, admin=admin, credits=credits)
        budget = "unlimited" if credits is None else f"{_amount(credits)} credits"
        err.print(
            f"created {record.id} ({record.name}, {budget}); store it now, it is not shown again"
        )
        return plaintext

    typer.echo(asyncio.run(main()))


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


def _key_store(settings: Settings):  # type: ignore[no-untyped-def]
    import contextlib

    from videoserve.jobs.keys import KeyStore
    from videoserve.jobs.store import JobStore

    @contextlib.asynccontextmanager
    async def opened():  # type: ignore[no-untyped-def]
        store = JobStore.open(settings.resolved_database_url())
        try:
            await store.migrate()
            yield KeyStore(store)
        finally:
            await store.close()

    return opened()


@app.command()
def models(data_dir: DataDir = None) -> None:
    """List the configured models, whether each can run here, and why not."""
    from videoserve.models.registry import ModelRegistry

    settings = _settings(data_dir=data_dir)
    table = Table("model", "backend", "served by", "available", "note")
    for m in ModelRegistry.from_settings(settings).describe():
        note = m.get("reason") or m.get("warning") or ""
        table.add_row(
            m["id"],
            m.get("backend") or "",
            m.get("served_by") or "",
            "yes" if m["available"] else "no",
            note,
        )
    Console(width=160).print(table)


@app.command()
def pull(
    model: Annotated[str, typer.Argument(help="A configured model name (or alias)")],
    data_dir: DataDir = None,
) -> None:
    """Download a model's Hugging Face repo into the local cache (HF_HOME), with progress."""
    from videoserve import errors
    from videoserve.models.registry import ModelRegistry
    from videoserve.models.weights import PullFailed

    try:
        backend = ModelRegistry.from_settings(_settings(data_dir=data_dir)).backend(model)
        download = getattr(backend, "pull", None)
        if download is None:
            raise PullFailed(f"model '{model}' has no weights to download")
        folder = download()
    except (ValueError, PullFailed, errors.NotFound) as exc:
        err.print(f"[red]error:[/red] {getattr(exc, 'message', None) or exc}")
        raise typer.Exit(1) from None
    err.print(f"{model}: weights in {folder}")

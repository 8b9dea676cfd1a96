"""`videoserve keys`: create, update, list, credit and revoke API keys, straight on the
database the server uses (no server needed)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from videoserve.cli.common import (
    DataDir,
    MaxPriority,
    MaxRunning,
    PriorityName,
    Share,
    err,
    keys_app,
    load_settings,
)

if TYPE_CHECKING:
    from videoserve.settings import Settings


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who the key is for")],
    admin: Annotated[bool, typer.Option(help="May administer the server")] = False,
    credits: Annotated[
        float | None,
        typer.Option(help="Starting credits; without this option the key is unlimited"),
    ] = None,
    share: Share = None,
    max_priority: MaxPriority = None,
    max_running: MaxRunning = None,
    data_dir: DataDir = None,
) -> None:
    """Create a key; the key itself is the LAST line of output, shown only this once."""

    settings = load_settings(data_dir=data_dir)
    _say_which_database(settings)
    scheduling = _scheduling(share, max_priority, max_running)

    async def main() -> str:
        async with _key_store(settings) as keys:
            record, plaintext = await keys.create(
                name, admin=admin, credits=credits, scheduling=scheduling
            )
        budget = "unlimited" if credits is None else f"{_amount(credits)} credits"
        err.print(
            f"created {record.id} ({record.name}, {budget}); store it now, it is not shown again"
        )
        return plaintext

    from videoserve import errors

    try:
        typer.echo(asyncio.run(main()))
    except errors.InvalidRequest as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None


@keys_app.command("update")
def keys_update(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...) or prefix")],
    share: Share = None,
    max_priority: MaxPriority = None,
    max_running: MaxRunning = None,
    data_dir: DataDir = None,
) -> None:
    """Change a key's share, priority bound or running cap (running servers see it within
    VIDEOSERVE_AUTH_CACHE_SECONDS)."""
    if share is None and max_priority is None and max_running is None:
        err.print(
            "[red]error:[/red] nothing to update: pass --share, --max-priority or --max-running"
        )
        raise typer.Exit(2)
    scheduling = _scheduling(share, max_priority, max_running)

    async def main():
        async with _key_store(load_settings(data_dir=data_dir)) as keys:
            return await keys.update(key_id, scheduling)

    record = asyncio.run(main())
    if record is None:
        err.print(f"[red]no key {key_id!r}[/red]")
        raise typer.Exit(1)
    cap = "the server's" if record.max_running is None else str(record.max_running)
    bound = ("low", "normal", "high")[record.max_priority]
    typer.echo(f"{record.id}: share {record.share:g}, max priority {bound}, max running {cap}")


def _scheduling(share: float | None, max_priority: PriorityName | None, max_running: int | None):
    from videoserve.jobs.fairness import PRIORITY_NAMES
    from videoserve.jobs.keys import Scheduling

    bound = None if max_priority is None else PRIORITY_NAMES[max_priority.value]
    return Scheduling(share=share, max_priority=bound, max_running=max_running)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """List keys (never the keys themselves)."""

    async def main() -> None:
        async with _key_store(load_settings(data_dir=data_dir)) as keys:
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
        async with _key_store(load_settings(data_dir=data_dir)) as keys:
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
        async with _key_store(load_settings(data_dir=data_dir)) as keys:
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
        err.print(f"using the database {_without_password(url)}")
        return
    path = Path(url.split(":///", 1)[1])
    if path.exists():
        err.print(f"using the database {path}")
        return
    err.print(
        f"[bold yellow]no database at {path}: creating a new, empty one.[/bold yellow] "
        "If a server is already running, it uses another data folder: pass the same "
        "--data-dir or VIDEOSERVE_DATA_DIR (or VIDEOSERVE_DATABASE_URL) as the server."
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

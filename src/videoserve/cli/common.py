"""What the `videoserve` command's modules share: the typer apps, stderr, the options that
recur, and how a server-side command reads its settings and sets up logging.

Only typer, rich and the client's light parts at the top, as in `main`.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from videoserve.installs import Extra, requirement_message

if TYPE_CHECKING:
    from videoserve.settings import Settings

app = typer.Typer(help="Self-hosted serverless video generation.", no_args_is_help=True)
keys_app = typer.Typer(
    help="Create, list, update, credit and revoke API keys.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
# soft_wrap: a message is one line however narrow the terminal; rich would otherwise break it
# at the width, mid-sentence or inside a key or a path a user copies.
err = Console(stderr=True, soft_wrap=True)


class PriorityName(enum.StrEnum):
    """The priority classes, as X-Queue-Priority names them."""

    low = "low"
    normal = "normal"
    high = "high"


Share = Annotated[
    float | None, typer.Option(help="Weight in fair share across keys (default 1)", min=0.001)
]
MaxPriority = Annotated[
    PriorityName | None,
    typer.Option(help="Highest X-Queue-Priority the key may ask for (default normal)"),
]
MaxRunning = Annotated[
    int | None,
    typer.Option(help="Jobs it may run at once (0: no cap of its own, the server's)", min=0),
]

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data folder (VIDEOSERVE_DATA_DIR)")
]


def require(extra: Extra, what: str) -> None:
    """Exit with a sentence naming the install when this environment lacks `extra`."""
    message = requirement_message(extra, what)
    if message is not None:
        err.print(f"[red]error:[/red] {escape(message)}")  # "[worker]" is not markup
        raise typer.Exit(1)


def load_settings(**overrides: Any) -> Settings:
    require(Extra.server, "this command")
    from videoserve.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def configure_logging(settings: Settings, *, at_least: str | None = None) -> None:
    """Text for people, or one JSON object per line (VIDEOSERVE_LOG_FORMAT=json). Either way
    the model libraries' warnings and loading bars are off below debug (`logs.configure`).

    `at_least` raises the level for a command whose own output is a progress bar (`generate`):
    the embedded server's info lines would break it up."""
    import logging

    from videoserve.observability import logs

    level = settings.log_level
    if at_least is not None and logging.getLevelName(level.upper()) < logging.getLevelName(
        at_least
    ):
        level = at_least
    logs.configure(level, settings.log_format)

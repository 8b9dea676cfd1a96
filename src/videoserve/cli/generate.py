"""`videoserve generate`: one video through a running server, or through an embedded one.

The embedded path starts the real server on a loopback port with auth off and talks to it
with the same client, so both paths exercise the same code.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:  # the --url path runs on the bare client install, without pydantic-settings
    from videoserve.settings import Settings


def run_generation(
    params: dict[str, Any],
    *,
    model: str,
    output: Path,
    url: str | None,
    api_key: str | None,
    timeout: float,
    settings: Settings | None,
    console: Console,
    source: SourceOperation | None = None,
) -> dict[str, Any]:
    """Submit (a generation, or an extension or edit of `source`), show progress, save.

    `settings` configure the embedded server; they are only needed when `url` is None."""
    from videoserve.client import Client

    with contextlib.ExitStack() as stack:
        if url is None:
            assert settings is not None, "an embedded server needs settings"
            url = stack.enter_context(embedded_server(settings))
            api_key = api_key or "unused"
        client = stack.enter_context(Client(api_key=api_key, base_url=url, timeout=60.0))
        if source is None:
            job = client.submit_async(model, **params)
        else:
            job = source.submit(client, model, params)
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task(f"{job.request_id} queued", total=100)

            def on_status(body: dict[str, Any]) -> None:
                completed = body.get("progress") or 0
                bar.update(task, completed=completed, description=status_label(body))

            result = job.wait(timeout=timeout, interval=0.5, on_status=on_status)
            bar.update(task, completed=100, description="completed")
        job.download(output)
        return result


def status_label(body: dict[str, Any]) -> str:
    """What the progress bar says of a status: the queue position while queued, the phase
    (and the step while denoising) while it runs."""
    state = str(body.get("status", "")).lower()
    if state == "queued":
        position = body.get("queue_position")
        return f"queued (position {position})" if position else "queued"
    phase = body.get("phase")
    if state != "processing" or not isinstance(phase, str):
        return state
    if phase == "denoising" and body.get("step") is not None:
        return f"denoising, step {body['step']}/{body.get('steps')}"
    return phase.replace("_", " ")


@dataclass(frozen=True)
class SourceOperation:
    """`--extend` or `--edit`: continue or edit a video (a video id, or a file)."""

    operation: str  # "extend" or "edit"
    video: str  # a video id, or the path of a video file
    strength: float | None = None

    def source(self) -> str | Path:
        path = Path(self.video)
        return path if path.is_file() else self.video

    def submit(self, client: Any, model: str, params: dict[str, Any]) -> Any:
        prompt = params.pop("prompt")
        extra = {k: v for k, v in params.items() if k not in ("duration", "size")}
        if self.operation == "extend":
            seconds = params.get("duration", 4)
            return client.extend(self.source(), prompt, seconds=seconds, model=model, **extra)
        return client.edit(self.source(), prompt, strength=self.strength, model=model, **extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def embedded_server(settings: Settings) -> Iterator[str]:
    """A real videoserve server on a loopback port, for the life of the block."""
    import uvicorn

    from videoserve.api import create_app

    settings = settings.model_copy(
        update={"host": "127.0.0.1", "port": _free_port(), "auth": False}
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host=settings.host, port=settings.port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the embedded server did not start")
        time.sleep(0.05)
    try:
        yield f"http://{settings.host}:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)

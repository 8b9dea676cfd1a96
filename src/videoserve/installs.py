"""Which of videoserve's installs this environment has: the client, `[server]`, `[worker]`.

The CLI asks before it starts a server or a worker, so a host installed for one job gets a
sentence naming the missing extra instead of an ImportError from deep inside a dependency.
"""

from __future__ import annotations

import importlib.util
from enum import StrEnum


class Extra(StrEnum):
    server = "server"  # API, job store, storage, webhooks
    worker = "worker"  # the server's parts plus torch, diffusers and the model layer


# One importable module per distribution is enough to tell the install apart; the full lists
# live in pyproject.toml.
_MODULES: dict[Extra, tuple[str, ...]] = {
    Extra.server: ("fastapi", "uvicorn", "sqlalchemy", "pydantic_settings", "av"),
    Extra.worker: ("torch", "diffusers", "transformers"),
}


def missing(extra: Extra) -> list[str]:
    """The modules of `extra` (and of what it implies) that this environment cannot import."""
    needed = _MODULES[Extra.server] + (_MODULES[Extra.worker] if extra is Extra.worker else ())
    return [name for name in needed if not _importable(name)]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a broken or refused package counts as absent
        return False


def requirement_message(extra: Extra, what: str) -> str | None:
    """None when `extra` is installed, else a sentence saying how to get it."""
    absent = missing(extra)
    if not absent:
        return None
    return (
        f"{what} needs the [{extra}] install ({', '.join(absent)} missing): "
        f'pip install "videoserve[{extra}]"'
    )

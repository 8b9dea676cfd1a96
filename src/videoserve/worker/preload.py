"""Cold start: which models a worker has loaded, how long each took, and loading them early.

With `VIDEOSERVE_PRELOAD` a worker loads its models before it claims a job, so the first
request does not pay minutes of weight loading, and it tells `/readyz` and the worker registry
only then that it is ready. A model that fails to load is reported and left out of what the
worker claims, so its jobs wait for a worker that can run them instead of each failing here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from videoserve.models.registry import ModelRegistry
from videoserve.observability import logs

log = logging.getLogger("videoserve.worker")

ALL = "all"


@dataclass(frozen=True)
class ModelLoad:
    """One model's latest load in this worker: at startup (preloaded), or by a job that found
    it not in memory (its first, or after the pool unloaded it)."""

    model: str
    seconds: float  # wall time of the load, or of the failed attempt
    preloaded: bool
    error: str | None = None  # why it failed; None when the model is loaded

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "load_seconds": round(self.seconds, 3),
            "preloaded": self.preloaded,
            "error": self.error,
        }


class ModelLoads:
    """The loads of one worker, written from model threads and read by its announcements."""

    def __init__(self, on_load: Callable[[str, float], None] | None = None) -> None:
        """`on_load(model, seconds)`: told of each load that succeeded (the metrics)."""
        self._lock = threading.Lock()
        self._loads: dict[str, ModelLoad] = {}
        self._on_load = on_load

    def known(self, model: str) -> bool:
        with self._lock:
            return model in self._loads

    def record(self, load: ModelLoad) -> None:
        with self._lock:
            self._loads[load.model] = load
        if self._on_load is not None and load.error is None:
            self._on_load(load.model, load.seconds)

    def all(self) -> list[ModelLoad]:
        with self._lock:
            return list(self._loads.values())

    def in_memory(self, registry: ModelRegistry) -> list[ModelLoad]:
        """The loads whose models are in memory now, each with its latest load's time: a
        model the pool unloaded to make room is left out until a job loads it again."""
        return [
            load for load in self.all() if load.error is None and registry.is_loaded(load.model)
        ]

    def reported(self, registry: ModelRegistry) -> list[ModelLoad]:
        """What the worker registry shows: the loads in memory and the failed ones."""
        return [
            load for load in self.all() if load.error is not None or registry.is_loaded(load.model)
        ]

    def failed(self) -> list[ModelLoad]:
        return [load for load in self.all() if load.error is not None]


def models_to_preload(
    registry: ModelRegistry, wanted: Iterable[str], served: list[str]
) -> list[str]:
    """The configured models `VIDEOSERVE_PRELOAD` names; ValueError for one this worker does
    not serve (a typo should stop the worker at startup, not leave a model cold)."""
    wanted = list(wanted)
    if ALL in wanted:
        return list(served)
    chosen: list[str] = []
    for name in wanted:
        try:
            target = registry.served_by(name)
        except Exception as exc:
            raise ValueError(f"VIDEOSERVE_PRELOAD: model '{name}' is not configured") from exc
        if target not in served:
            raise ValueError(
                f"VIDEOSERVE_PRELOAD: model '{name}' is not served by this worker "
                f"({', '.join(served) or 'none'}; see VIDEOSERVE_WORKER_MODELS)"
            )
        if target not in chosen:
            chosen.append(target)
    return chosen


async def preload(registry: ModelRegistry, models: list[str], loads: ModelLoads) -> None:
    """Load `models` one after another (they share one GPU), recording each load or failure."""
    for model in models:
        begun = time.perf_counter()
        try:
            await asyncio.to_thread(_load, registry, model)
        except Exception as exc:
            seconds = time.perf_counter() - begun
            error = f"{type(exc).__name__}: {exc}"
            loads.record(ModelLoad(model, seconds, preloaded=True, error=error))
            log.error(
                "model %s failed to load after %.2fs; this worker will not serve it: %s",
                model,
                seconds,
                error,
            )
            continue
        seconds = time.perf_counter() - begun
        loads.record(ModelLoad(model, seconds, preloaded=True))
        log.info("model %s loaded in %.2fs (preload)", model, seconds)


def _load(registry: ModelRegistry, model: str) -> None:
    logs.quiet_model_libraries()
    backend = registry.backend(model)
    availability = backend.availability()
    if not availability.available:
        raise RuntimeError(f"unavailable: {availability.reason}")
    backend.load()

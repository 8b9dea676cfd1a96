"""How many models a process keeps in memory: the least recently used goes first.

A worker loads a model once and keeps it warm, but a worker serving more models than its GPU
holds must let some go. Backends report to the pool when they load, unload and generate; when
a load makes more than `max_loaded` resident, the least recently used idle ones are unloaded.
A model that is generating is never unloaded under it: the pool goes over its size instead,
until that model is idle again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from typing import Protocol

log = logging.getLogger("videoserve.models")

DEFAULT_MAX_LOADED = 2


class Poolable(Protocol):
    """A backend whose weights the pool may unload."""

    name: str
    pool: ModelPool | None

    def unload(self) -> None: ...


class ModelPool:
    """The loaded backends of one process, in least- to most-recently-used order."""

    def __init__(self, max_loaded: int = DEFAULT_MAX_LOADED) -> None:
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1 (got {max_loaded})")
        self.max_loaded = max_loaded
        self._lock = threading.Lock()
        self._loaded: OrderedDict[int, Poolable] = OrderedDict()
        self._busy: Counter[int] = Counter()

    def track(self, backend: object) -> None:
        """Let the pool manage `backend` if it can take part (it has a `pool` attribute)."""
        if hasattr(backend, "pool"):
            backend.pool = self  # the protocol has no `pool`: hasattr above is the check

    def loaded(self, backend: Poolable) -> None:
        """`backend` is loaded and was just used: make it the most recent, unload the oldest."""
        with self._lock:
            self._loaded[id(backend)] = backend
            self._loaded.move_to_end(id(backend))
            victims = []
            excess = len(self._loaded) - self.max_loaded
            for key, other in list(self._loaded.items()):
                if excess <= 0:
                    break
                if other is backend or self._busy[key]:
                    continue
                victims.append(self._loaded.pop(key))
                excess -= 1
        # Unloading takes the victim's own lock: never while holding ours.
        for victim in victims:
            log.info("unloading %s to make room for %s", victim.name, backend.name)
            victim.unload()

    def unloaded(self, backend: Poolable) -> None:
        with self._lock:
            self._loaded.pop(id(backend), None)

    @contextlib.contextmanager
    def in_use(self, backend: Poolable) -> Iterator[None]:
        """While inside, `backend` is not unloaded to make room for another."""
        with self._lock:
            self._busy[id(backend)] += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy[id(backend)] -= 1
                if not self._busy[id(backend)]:
                    del self._busy[id(backend)]

    def resident(self) -> list[str]:
        """Names of the loaded backends, least recently used first."""
        with self._lock:
            return [backend.name for backend in self._loaded.values()]

"""LoRA adapters inside one loaded pipeline: each loaded once, exactly one entry's active per call.

An adapter entry's generation runs on its base's pipeline with a `Profile` naming its adapters;
the base's own runs with none. `LoadedAdapters` keeps what the pipeline's transformer holds, so
`load_lora_weights` runs once per adapter and each call only switches (`set_adapters` with the
entry's scales, or `disable_lora` for the base). The text and image pipelines share the
transformer, so switching through one covers both. The caller holds the backend's lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from videoserve import errors
from videoserve.models.lora_files import LoraFile

log = logging.getLogger("videoserve.models")


@dataclass(frozen=True)
class Adapter:
    """One LoRA as the base pipeline holds it: loaded once under `name`, applied at `scale`."""

    name: str  # the peft adapter name, unique to its entry and position
    lora: LoraFile
    scale: float


@dataclass(frozen=True)
class Profile:
    """Whom a generation runs for: the entry's name, its defaults and its adapters (if any)."""

    model: str
    steps: int
    guidance: float
    negative_prompt: str
    adapters: tuple[Adapter, ...] = ()


@dataclass
class LoadedAdapters:
    """The adapters in one loaded transformer, and whether the last call had them on."""

    names: set[str] = field(default_factory=set)
    enabled: bool = False

    def activate(self, pipe: Any, adapters: tuple[Adapter, ...], model: str) -> None:
        """Exactly `adapters` active in `pipe`'s transformer(s); none: the base's own weights."""
        for adapter in adapters:
            if adapter.name not in self.names:
                log.info("%s: loading LoRA %s as %s", model, adapter.lora.file, adapter.name)
                try:
                    pipe.load_lora_weights(
                        adapter.lora.folder,
                        weight_name=adapter.lora.weight_name,
                        adapter_name=adapter.name,
                        local_files_only=True,
                    )
                except (OSError, ValueError, KeyError, RuntimeError) as exc:
                    raise errors.ModelUnavailable(
                        f"LoRA {adapter.lora.file} does not load into '{model}': {exc}"
                    ) from exc
                self.names.add(adapter.name)
        if adapters:
            if not self.enabled:
                pipe.enable_lora()
            pipe.set_adapters([a.name for a in adapters], [a.scale for a in adapters])
            self.enabled = True
        elif self.enabled:
            pipe.disable_lora()
            self.enabled = False

    def drop(self, pipe: Any, names: set[str]) -> None:
        """Delete these adapters from `pipe` (an entry letting go of its memory)."""
        loaded = sorted(names & self.names)
        if not loaded:
            return
        pipe.delete_adapters(loaded)
        self.names -= set(loaded)
        if self.enabled and self.names:
            pipe.disable_lora()  # the next call says which are on
        self.enabled = False

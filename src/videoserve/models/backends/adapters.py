"""An adapter entry: LoRAs over another entry's loaded pipeline, with defaults of its own.

`base = "<entry>"` in place of `path`: the base entry's backend holds the one pipeline in memory
(the pool counts it once, however many adapter entries share it), and each generation of an
adapter entry runs on it with exactly that entry's LoRAs active (`DiffusersBackend._activate`,
under the base's lock), so a job never sees another entry's adapters and the base's own jobs
see none.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from videoserve import errors
from videoserve.models import lora_files
from videoserve.models.backends.base import (
    Availability,
    Capabilities,
    GeneratedVideo,
    GenerationInputs,
    ProgressCallback,
    StopCheck,
)
from videoserve.models.backends.diffusion import DiffusersBackend
from videoserve.models.backends.lora import Adapter, Profile
from videoserve.models.options import DiffusersOptions

if TYPE_CHECKING:
    from videoserve.models.params import VideoParams


def adapter_name(entry: str, index: int) -> str:
    """A peft adapter name for LoRA `index` of `entry`: an identifier, unique per entry.

    peft keeps adapters in `ModuleDict`s, whose keys may not hold dots; the hash keeps `a-b`
    and `a_b` apart.
    """
    digest = hashlib.sha1(entry.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', entry)}_{digest}_{index}"


class AdapterBackend:
    """A public model that is its base's pipeline plus LoRAs; loads nothing of its own."""

    def __init__(self, name: str, base: DiffusersBackend, options: DiffusersOptions) -> None:
        self.name = name
        self.base = base
        self.schema = base.schema
        self.loras = options.loras
        self._steps, self._guidance = options.steps, options.guidance
        self._negative_prompt = options.negative_prompt

    @property
    def capabilities(self) -> Capabilities:
        """The base's: LoRAs change how a video looks, not what the pipeline can make."""
        return self.base.capabilities

    def durations(self) -> tuple[int, ...]:
        return self.base.durations()

    def availability(self) -> Availability:
        state = self.base.availability()
        if not state.available:
            return Availability(False, f"its base '{self.base.name}': {state.reason}")
        try:
            for lora in self.loras:
                lora_files.locate(lora.path)
        except (lora_files.LoraMissing, ValueError) as exc:
            return Availability(False, str(exc))
        return Availability(True)

    def check(self, params: VideoParams) -> None:
        self.base.check(params, model=self.name)

    def load(self) -> None:
        self.base.load()

    @property
    def loaded(self) -> bool:
        """Its base's weights are in memory (its LoRAs are set on the base for each job)."""
        return bool(getattr(self.base, "loaded", True))

    def unload(self) -> None:
        """Drop this entry's LoRAs from the base; the base's weights stay for its other users."""
        self.base.drop_adapters({adapter_name(self.name, i) for i in range(len(self.loras))})

    @property
    def profile(self) -> Profile:
        base = self.base.profile
        try:
            adapters = tuple(
                Adapter(adapter_name(self.name, i), lora_files.locate(lora.path), lora.scale)
                for i, lora in enumerate(self.loras)
            )
        except (lora_files.LoraMissing, ValueError) as exc:
            raise errors.ModelUnavailable(f"model '{self.name}' is unavailable: {exc}") from exc
        return Profile(
            model=self.name,
            steps=self._steps or base.steps,
            guidance=base.guidance if self._guidance is None else self._guidance,
            negative_prompt=(
                base.negative_prompt if self._negative_prompt is None else self._negative_prompt
            ),
            adapters=adapters,
        )

    def generate(
        self,
        params: VideoParams,
        inputs: GenerationInputs,
        on_progress: ProgressCallback,
        should_stop: StopCheck,
    ) -> GeneratedVideo:
        return self.base.generate_for(self.profile, params, inputs, on_progress, should_stop)

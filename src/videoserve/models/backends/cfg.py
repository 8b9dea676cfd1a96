"""Classifier-free guidance as one batch: a denoising step's two transformer forwards as one.

Wan's pipelines call the transformer twice per step with the same latents and timestep, once
with the prompt's embeddings and once with the negative prompt's. One forward over a batch of
both does the same arithmetic in larger matmuls, which a GPU runs faster (LTX-Video's pipeline
batches them itself). The hook here does it for Wan without changing the pipeline: registered on
the transformer with diffusers' hook registry and told both embeddings before a pipeline call
(`batching`), it answers the first call of a step with one forward over [these embeddings, the
other ones], keeps the second half, and returns it to the next call if that call asks for exactly
those inputs (the same latent and timestep tensors, the other embeddings).

Anything it does not recognise (another argument, another order, an output it cannot split)
runs the plain forward for the rest of that pipeline call: the worst case is the pipeline's own
speed, never another video. Each sample of Wan's transformer depends only on its own inputs, so
the result equals the unbatched one up to float rounding. Batched forwards run in a cache
context of their own (`CACHE_CONTEXT`), so First Block Cache keeps their batch-of-two state apart
from plain calls' (a fallback mid-video cannot mix them); it then decides to skip the remaining
blocks once for both halves instead of once for each.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

log = logging.getLogger("videoserve.models")

HOOK_NAME = "videoserve_cfg_batch"
CACHE_CONTEXT = "cfg-batch"
TRANSFORMERS = ("transformer", "transformer_2")  # Wan 2.2 A14B: high-noise, low-noise experts
# What Wan's pipelines pass; the tensors among them get both halves of the batch.
_BATCHED = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_hidden_states_image")
_KNOWN = frozenset((*_BATCHED, "attention_kwargs", "return_dict"))
_DEFAULT_TEXT_LENGTH = 512  # Wan's `max_sequence_length`, if the pipeline's call does not say


@dataclass(frozen=True)
class _Kept:
    """The second half of a batched forward, and the call it answers."""

    module: torch.nn.Module
    inputs: dict[str, Any]  # the first call's arguments, with the other embeddings
    output: tuple[torch.Tensor]

    def answers(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> bool:
        # Identity, not equality: the pipeline passes the very same tensors to both calls,
        # and comparing values would cost a device sync per step.
        return (
            module is self.module
            and not args
            and kwargs.keys() == self.inputs.keys()
            and all(kwargs[key] is value for key, value in self.inputs.items())
        )


@dataclass
class CFGRun:
    """One pipeline call's two prompt embeddings, and what the hooks did with them."""

    embeddings: tuple[torch.Tensor, torch.Tensor] = field(repr=False)  # (prompt, negative)
    batched: int = 0  # forwards over both halves
    served: int = 0  # calls answered with a kept half, without a forward
    plain: int = 0  # calls that ran the plain forward
    stopped: str | None = None  # why batching stopped for the rest of the call, if it did
    _kept: _Kept | None = field(default=None, repr=False)

    def stop(self, reason: str) -> None:
        """Run plain forwards from now on; warn once, since the speed-up is gone."""
        if self.stopped is None:
            self.stopped = reason
            log.warning("batched CFG off for the rest of this video: %s", reason)
        self._kept = None


class CFGBatchHook(ModelHook):
    """On a transformer: while a `CFGRun` is set, a CFG step's two calls as one forward."""

    _is_stateful = True  # the pipeline's end-of-call reset (also after a cancel) drops a kept half

    def __init__(self) -> None:
        super().__init__()
        self.run: CFGRun | None = None

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        forward = self.fn_ref.original_forward
        run = self.run
        if run is None:
            return forward(*args, **kwargs)
        if run.stopped is None:
            kept, run._kept = run._kept, None
            if kept is not None:
                if kept.answers(module, args, kwargs):
                    run.served += 1
                    return kept.output
                run.stop("the call after a batched forward did not ask for its other half")
            else:
                reason = _unbatchable(args, kwargs, run.embeddings)
                if reason is None:
                    output = self.forward_both(module, forward, kwargs, run)
                    if output is not None:
                        return output
                else:
                    run.stop(reason)
        run.plain += 1
        return forward(*args, **kwargs)

    def forward_both(
        self, module: torch.nn.Module, forward: Any, kwargs: dict[str, Any], run: CFGRun
    ) -> tuple[torch.Tensor] | None:
        """Both halves of a CFG step: this call's returned, the other kept in `run` (None:
        cannot). Here one batched forward; CFG parallelism (`cfg_parallel.py`) overrides it."""
        return _batched_forward(module, forward, kwargs, run)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.run is not None:
            self.run._kept = None
        return module


def _unbatchable(
    args: tuple, kwargs: dict[str, Any], embeddings: tuple[torch.Tensor, torch.Tensor]
) -> str | None:
    """Why this call cannot start a batched step; None when it can."""
    if args:
        return "the transformer was called with positional arguments"
    unknown = set(kwargs) - _KNOWN
    if unknown:
        return f"the transformer was called with unexpected arguments {sorted(unknown)}"
    if kwargs.get("return_dict", True) is not False:
        return "the transformer was asked for a dict output"
    hidden = kwargs.get("hidden_states")
    timestep = kwargs.get("timestep")
    text = kwargs.get("encoder_hidden_states")
    image = kwargs.get("encoder_hidden_states_image")
    if text is None or not any(text is known for known in embeddings):
        return "the text embeddings are not the ones given to batching()"
    other = embeddings[1] if text is embeddings[0] else embeddings[0]
    tensors = [hidden, timestep, text, other] + ([image] if image is not None else [])
    if not all(isinstance(t, torch.Tensor) and t.ndim >= 1 for t in tensors):
        return "an input is not a batched tensor"
    assert hidden is not None  # checked among `tensors` above
    size = hidden.shape[0]
    if any(t.shape[0] != size for t in tensors):
        return "the inputs disagree on the batch size"
    if (other.shape, other.dtype, other.device) != (text.shape, text.dtype, text.device):
        return "the two text embeddings differ in shape, dtype or device"
    return None


def _batched_forward(
    module: torch.nn.Module, forward: Any, kwargs: dict[str, Any], run: CFGRun
) -> tuple[torch.Tensor] | None:
    """One forward over both halves: this call's half returned, the other kept (None: cannot)."""
    text = kwargs["encoder_hidden_states"]
    other = run.embeddings[1] if text is run.embeddings[0] else run.embeddings[0]
    both = dict(kwargs)
    for key in _BATCHED:
        value = kwargs.get(key)
        if value is not None:
            second = other if key == "encoder_hidden_states" else value
            both[key] = torch.cat([value, second])
    cache_context = getattr(module, "cache_context", None)
    with cache_context(CACHE_CONTEXT) if cache_context else contextlib.nullcontext():
        output = forward(**both)
    size = kwargs["hidden_states"].shape[0]
    if not (
        isinstance(output, tuple)
        and len(output) == 1
        and isinstance(output[0], torch.Tensor)
        and output[0].shape[0] == 2 * size
    ):
        run.stop("the transformer's output is not a batch of two halves")
        return None
    run.batched += 1
    run._kept = _Kept(module, {**kwargs, "encoder_hidden_states": other}, (output[0][size:],))
    return (output[0][:size],)


def _hook(module: torch.nn.Module | None) -> CFGBatchHook | None:
    if module is None:
        return None
    hook = HookRegistry.check_if_exists_or_initialize(module).get_hook(HOOK_NAME)
    return hook if isinstance(hook, CFGBatchHook) else None


def install(pipe: Any) -> int:
    """Register the hook on the pipeline's transformers (once each); how many have it.

    Register it before `enable_model_cpu_offload`: accelerate restores the forward it found
    when it removes its own hooks, and would drop one registered after it.
    """
    count = 0
    for part in TRANSFORMERS:
        module = getattr(pipe, part, None)
        if module is None:
            continue
        if _hook(module) is None:
            HookRegistry.check_if_exists_or_initialize(module).register_hook(
                CFGBatchHook(), HOOK_NAME
            )
        count += 1
    return count


def installed(pipe: Any) -> bool:
    """Whether `install` ran on this pipeline's transformers (or on modules it shares)."""
    return any(_hook(getattr(pipe, part, None)) is not None for part in TRANSFORMERS)


@contextlib.contextmanager
def batching(
    pipe: Any, prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor
) -> Iterator[CFGRun]:
    """While it lasts, CFG steps over these embeddings run as one forward each.

    Pass the same tensors to the pipeline as `prompt_embeds` and `negative_prompt_embeds`,
    already in the transformer's dtype (`encode_prompts`), so that the pipeline hands them
    to the transformer unchanged.
    """
    run = CFGRun((prompt_embeds, negative_prompt_embeds))
    hooks = [_hook(getattr(pipe, part, None)) for part in TRANSFORMERS]
    armed = [hook for hook in hooks if hook is not None]
    for hook in armed:
        hook.run = run
    try:
        yield run
    finally:
        for hook in armed:
            hook.run = None


def encode_prompts(
    pipe: Any, prompt: str, negative_prompt: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt's and the negative prompt's embeddings, as the pipeline's own call makes them.

    Same encoder, same text length (the call's default), cast to the transformer's dtype as
    the call would: handed back to the pipeline, these very tensors reach the transformer.
    """
    parameter = inspect.signature(pipe.__call__).parameters.get("max_sequence_length")
    length = _DEFAULT_TEXT_LENGTH
    if parameter is not None and isinstance(parameter.default, int):
        length = parameter.default
    prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(
        prompt=prompt,
        negative_prompt=negative_prompt,
        do_classifier_free_guidance=True,
        num_videos_per_prompt=1,
        max_sequence_length=length,
    )
    model = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
    return prompt_embeds.to(model.dtype), negative_prompt_embeds.to(model.dtype)

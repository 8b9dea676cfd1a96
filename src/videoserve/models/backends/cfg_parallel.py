"""CFG parallelism: a denoising step's two guidance branches on two ranks, gathered each step.

diffusers has no CFG parallelism (a TODO in `_modeling_parallel.py`), so it is ours, built on
batched CFG (`cfg.py`): the same hook recognises a step's first transformer call (it knows both
prompt embeddings, made up front by the Wan backend's `_pipeline_call`), but instead of one
forward over a batch of two, the rank of branch 0 computes the prompt's forward and the rank of
branch 1 the negative prompt's, at the same time; an all-gather over the "cfg" dimension of the
group's mesh gives every rank both outputs. The first call returns the prompt's half, the
second call of the step gets the kept negative half without a forward.

Every rank runs the same pipeline call, so every rank takes the same decisions: when the hook
does not recognise a call it runs the plain forward on all ranks alike (the same video, without
the speed-up). With Ulysses or ring each branch's forward is itself split over its sub-mesh.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from diffusers.hooks import HookRegistry

from videoserve.models.backends import cfg

CACHE_CONTEXT = "cfg-parallel"


class CFGParallelHook(cfg.CFGBatchHook):
    """On a transformer: a CFG step's two calls as one forward per rank, branch by rank."""

    def __init__(self, group: Any) -> None:
        super().__init__()
        self.group = group  # the process group of the mesh's "cfg" dimension (two ranks)
        self.branch = torch.distributed.get_rank(group)  # 0: the prompt, 1: the negative

    def forward_both(
        self, module: torch.nn.Module, forward: Any, kwargs: dict[str, Any], run: cfg.CFGRun
    ) -> tuple[torch.Tensor] | None:
        text = kwargs["encoder_hidden_states"]
        other = run.embeddings[1] if text is run.embeddings[0] else run.embeddings[0]
        mine = text if self.branch == 0 else other
        cache_context = getattr(module, "cache_context", None)
        context = f"{CACHE_CONTEXT}-{self.branch}"
        with cache_context(context) if cache_context else contextlib.nullcontext():
            output = forward(**{**kwargs, "encoder_hidden_states": mine})
        if not (isinstance(output, tuple) and len(output) == 1 and torch.is_tensor(output[0])):
            run.stop("the transformer's output is not one tensor")
            return None
        halves = [torch.empty_like(output[0]) for _ in range(2)]
        # Looked up on the module at call time, so a rank's collective count sees it.
        torch.distributed.all_gather(halves, output[0].contiguous(), group=self.group)
        run.batched += 1
        kept = {**kwargs, "encoder_hidden_states": other}
        run._kept = cfg._Kept(module, kept, (halves[1],))
        return (halves[0],)


def install(pipe: Any, group: Any) -> int:
    """Put the CFG-parallel hook on the pipeline's transformers (in place of batched CFG's,
    which it extends); how many have it. Idempotent."""
    count = 0
    for part in cfg.TRANSFORMERS:
        module = getattr(pipe, part, None)
        if module is None:
            continue
        registry = HookRegistry.check_if_exists_or_initialize(module)
        present = registry.get_hook(cfg.HOOK_NAME)
        if not isinstance(present, CFGParallelHook):
            if present is not None:
                registry.remove_hook(cfg.HOOK_NAME, recurse=False)
            registry.register_hook(CFGParallelHook(group), cfg.HOOK_NAME)
        count += 1
    return count

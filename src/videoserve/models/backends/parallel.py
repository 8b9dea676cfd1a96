"""One video over a worker group's ranks: context parallelism (diffusers) and CFG parallelism.

An entry's `parallel = { ulysses = N, ring = M, cfg = true }` splits every denoising step over
N x M x (2 with cfg) ranks, each a process of one worker group (`worker/group.py`) running the
same pipeline call with the same inputs and seed:
- Ulysses and ring attention are diffusers' own context parallelism
  (`ModelMixin.enable_parallelism` with the transformer's built-in `_cp_plan`): each rank holds
  a slice of the token sequence; Ulysses swaps heads for tokens with all-to-alls, ring passes
  keys and values round with all-gathers.
- CFG parallelism is ours (`cfg_parallel.py`): the prompt's and the negative prompt's forwards
  of a step on two ranks, their outputs gathered.
The ranks form one device mesh ("cfg", "ring", "ulysses"), so the two compose (2 x 2 on four).

`refusal` decides at startup whether an entry can split this way on this group; `enable` applies
the split on a rank after its pipeline loaded. torch is imported only by those that run it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from videoserve.models.backends.configs import read_json_config
from videoserve.models.options import ParallelOptions

log = logging.getLogger("videoserve.models")

TRANSFORMERS = ("transformer", "transformer_2")  # Wan 2.2 A14B has two experts
# What ring attention runs on when the entry names no attention backend: it needs attention
# that returns its log-sum-exp, which diffusers' `native` backend refuses.
RING_ATTENTION = "_native_flash"
# Pipelines whose calls go through the Wan backend's `_pipeline_call` (prompt embeddings made
# up front), which is where CFG parallelism learns both branches' embeddings.
CFG_PIPELINES = ("WanPipeline", "WanImageToVideoPipeline")
# Transformers diffusers 0.42 has no `_cp_plan` for, by the name the refusal gives.
_NO_PLAN_NAMES = {"HunyuanVideo15Transformer3DModel": "HunyuanVideo 1.5"}
# Transformers we bring a plan for (`own_plan`): diffusers has none.
OWN_PLANS = ("WanVACETransformer3DModel",)


def refusal(
    name: str, plan: ParallelOptions, folder: Path | None, family: str, group: int
) -> str | None:
    """Why entry `name` cannot run split as `plan` on a group of `group` ranks; None if it can.

    Reads configs only (`model_index.json`, the transformer's `config.json`); weights not here
    yet are checked by family alone, and again when they load.
    """
    prefix = f"model '{name}': parallel"
    if group < 2:
        return (
            f"{prefix} needs a worker group: set VIDEOSERVE_WORKER_DEVICES to "
            f"{plan.ranks} devices (e.g. cuda:0,cuda:1)"
        )
    if plan.ranks != group:
        return (
            f"{prefix} splits over {plan.ranks} ranks (ulysses {plan.ulysses} x ring "
            f"{plan.ring}{' x cfg 2' if plan.cfg else ''}) but this worker group has {group} "
            "devices (VIDEOSERVE_WORKER_DEVICES): they must be equal"
        )
    if family != "wan" and plan.cfg:
        return f"{prefix} cfg = true is implemented for Wan pipelines only (this is {family})"
    index = _read_json(folder / "model_index.json") if folder is not None else None
    pipeline = str((index or {}).get("_class_name", ""))
    if plan.cfg and pipeline and pipeline not in CFG_PIPELINES:
        return f"{prefix} cfg = true is implemented for {', '.join(CFG_PIPELINES)}, not {pipeline}"
    if plan.ulysses * plan.ring == 1:
        return None
    transformer = (index or {}).get("transformer")
    cls = transformer[1] if isinstance(transformer, list) and len(transformer) == 2 else None
    if cls is None and family in ("hunyuan15",):
        cls = "HunyuanVideo15Transformer3DModel"
    if cls is not None and str(cls) not in OWN_PLANS and not _has_cp_plan(str(cls)):
        what = _NO_PLAN_NAMES.get(str(cls), str(cls))
        return (
            f"{prefix} ulysses/ring needs a context-parallel plan, and diffusers has none for "
            f"{cls} ({what}); run this entry without ulysses and ring"
        )
    config = _read_json(folder / "transformer" / "config.json") if folder is not None else None
    heads = (config or {}).get("num_attention_heads")
    if isinstance(heads, int) and heads % plan.ulysses:
        return (
            f"{prefix} ulysses = {plan.ulysses} must divide the transformer's {heads} "
            "attention heads"
        )
    return None


def sequence_refusal(
    name: str, plan: ParallelOptions, size: str, duration: int, lengths: Iterable[int]
) -> str | None:
    """Why a request cannot split as `plan` (a 400 at submit), given the video tokens of each
    of its passes; None if it can. diffusers' context parallelism shards the token sequence
    evenly over ulysses x ring ranks and asserts that it divides; a request whose sequence
    does not would fail on every rank after its charge."""
    split = plan.ulysses * plan.ring
    for tokens in lengths:
        if split > 1 and tokens % split:
            return (
                f"size: model '{name}' splits each step's {tokens} video tokens ({size}, "
                f"{duration}s) over {split} ranks (parallel ulysses x ring), which must divide "
                "them: choose another size or duration"
            )
    return None


def _has_cp_plan(class_name: str) -> bool:
    import diffusers

    cls = getattr(diffusers, class_name, None)
    return cls is not None and getattr(cls, "_cp_plan", None) is not None


def _read_json(path: Path) -> dict[str, Any] | None:
    return read_json_config(os.fspath(path))


# --- on a rank ------------------------------------------------------------------------------
_meshes: dict[tuple[int, int, int], Any] = {}  # one mesh per shape per process


def mesh(plan: ParallelOptions, device: str) -> Any:
    """The ("cfg", "ring", "ulysses") device mesh over the whole group, made once per process.

    Making a mesh is a collective (every rank makes it, in the same order): the first job of
    each shape makes it, on every rank at the same point of the same call.
    """
    shape = (2 if plan.cfg else 1, plan.ring, plan.ulysses)
    made = _meshes.get(shape)
    if made is None:
        from torch.distributed.device_mesh import init_device_mesh

        kind = "cpu" if device.startswith("cpu") else device.split(":")[0]
        made = init_device_mesh(kind, shape, mesh_dim_names=("cfg", "ring", "ulysses"))
        _meshes[shape] = made
    return made


def enable(pipes: Iterable[Any], plan: ParallelOptions, device: str) -> None:
    """Split the loaded pipelines' transformers as `plan` says; a no-op where already split.

    Called on every rank after each load (a model the pool unloaded comes back unsplit).
    """
    from diffusers import ContextParallelConfig

    from videoserve.models.backends import cfg_parallel

    if device.startswith("cpu"):
        from videoserve.models.backends import cpu_shims

        cpu_shims.install(ring=plan.ring > 1)
    grid = mesh(plan, device)
    for pipe in pipes:
        for part in TRANSFORMERS:
            module = getattr(pipe, part, None)
            if module is None:
                continue
            if plan.ulysses * plan.ring > 1 and getattr(module, "_parallel_config", None) is None:
                if plan.ring > 1 and _attention_backend(module) in (None, "native"):
                    module.set_attention_backend(RING_ATTENTION)
                module.enable_parallelism(
                    config=ContextParallelConfig(
                        ulysses_degree=plan.ulysses,
                        ring_degree=plan.ring,
                        mesh=grid["ring", "ulysses"],
                    ),
                    cp_plan=own_plan(type(module).__name__),
                )
                log.info("%s split: ulysses %d, ring %d", part, plan.ulysses, plan.ring)
        if plan.cfg:
            cfg_parallel.install(pipe, grid["cfg"].get_group())


def own_plan(class_name: str) -> dict[str, Any] | None:
    """Our context-parallel plan for a transformer diffusers has none for; None: its own.

    Wan VACE (`WanVACETransformer3DModel`): Wan's plan, plus the VACE blocks' inputs. The
    VACE blocks run first, over the patch-embedded latents and the control states (padded to
    the latents' length), and their hints are added to the main blocks' states token by token:
    splitting both along the tokens at the first VACE block, as the latents are split at the
    first main block, keeps every hint on the rank that holds its tokens. Only the first VACE
    block reads the latents; the later ones take the (split) control states it returns.
    """
    if class_name != "WanVACETransformer3DModel":
        return None
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    def tokens() -> Any:
        return ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)

    return {
        "rope": {
            0: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
            1: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
        },
        "vace_blocks.0": {"hidden_states": tokens(), "control_hidden_states": tokens()},
        "blocks.0": {"hidden_states": tokens()},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
        "": {"timestep": ContextParallelInput(split_dim=1, expected_dims=2, split_output=False)},
    }


def _attention_backend(module: Any) -> str | None:
    """The attention backend the module's processors name (None: the global default)."""
    for sub in module.modules():
        processor = getattr(sub, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            backend = processor._attention_backend
            return None if backend is None else str(getattr(backend, "value", backend))
    return None

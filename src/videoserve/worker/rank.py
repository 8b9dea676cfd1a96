"""One rank of a worker group: a process that runs every parallel call on its own device.

The worker spawns one per device (`group.py`) with `multiprocessing`'s spawn start method and
talks to it over a pipe. A rank joins the group's torch.distributed process group (gloo on the
CPU, NCCL on CUDA), builds the same model registry as the worker, and then, for each call, loads
the entry's pipeline on its device, splits it as the entry says (`models/backends/parallel.py`)
and runs the same pipeline call as every other rank. Rank 0 streams progress and sends the
frames back; the others send only how the call ended. Stopping is agreed: each step every rank
adds its stop flag to an all-reduce, so all ranks stop after the same step.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import logging
import os
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from videoserve import errors
from videoserve.settings import Settings

log = logging.getLogger("videoserve.worker.rank")

# The collectives a rank counts (module attribute, function): looked up on the module at
# call time by diffusers and by our CFG hook, so a wrapper there sees each call.
COUNTED = (
    ("torch.distributed._functional_collectives", "all_to_all_single"),
    ("torch.distributed._functional_collectives", "all_gather_tensor"),
    ("torch.distributed", "all_gather"),
)


@dataclasses.dataclass(frozen=True)
class RankSetup:
    """What a rank process starts from."""

    rank: int
    world: int
    device: str  # cpu, cuda:N
    address: str  # tcp://127.0.0.1:PORT of the group's rendezvous
    timeout_seconds: float  # a collective waiting longer fails (a rank died or hangs)
    settings: Settings


@dataclasses.dataclass(frozen=True)
class RankCall:
    """One parallel generation, the same for every rank."""

    model: str  # the entry that serves it (`served_by`)
    params: dict[str, Any]  # the job's parameters, with the seed fixed by the worker
    image: Any = None  # PIL image: first frame / guide
    reference_images: tuple[Any, ...] = ()
    # Previews (rank 0 makes them, the worker stores them): None, none; else the job's
    # sink's rule, every N steps or (0) about every `preview_seconds`.
    preview_every: int | None = None
    preview_seconds: float = 0.0


@dataclasses.dataclass
class _PreviewPipe:
    """Rank 0's preview sink (`base.PreviewSink`): the frames go to the worker over the pipe."""

    conn: Connection
    every: int
    seconds: float

    def offer(self, step: int, total: int, frames: Any) -> None:
        self.conn.send(("preview", step, total, frames))


@dataclasses.dataclass(frozen=True)
class RankLoad:
    """Load an entry's pipeline on this rank's device (before a call; a no-op when loaded)."""

    model: str


# Messages a rank sends (tuples, first item the kind):
#   ("ready",) once it joined the group;
#   ("loaded", seconds) after a `RankLoad` (0.0: it was loaded);
#   ("progress", step, total) from rank 0 after each step;
#   ("preview", step, total, frames) from rank 0 when a preview is due (float RGB frames);
#   ("done", GeneratedVideo | None, {collective: count}, peak GB | None) when its call
#   ended with frames (the peak: device memory allocated during the call, on a GPU);
#   ("failed", code, message, {collective: count}) when it did not: code is "cancelled",
#   "out_of_memory", "input_invalid", "model_unavailable", "collective" or "model_error".
EXIT = "exit"  # what the worker sends for a rank to leave the group and end


def main(setup: RankSetup, conn: Connection, stop: Any) -> None:
    """The rank process: join the group, then serve calls until told to exit."""
    import torch
    import torch.distributed as dist

    logging.basicConfig(level=logging.WARNING)
    if setup.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(setup.device))
    else:  # ranks share the host's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // setup.world))
    dist.init_process_group(
        "nccl" if setup.device.startswith("cuda") else "gloo",
        init_method=setup.address,
        rank=setup.rank,
        world_size=setup.world,
        timeout=datetime.timedelta(seconds=setup.timeout_seconds),
    )
    counts = _count_collectives()
    from videoserve.models.registry import ModelRegistry

    registry = ModelRegistry.from_settings(setup.settings)
    conn.send(("ready",))
    try:
        while True:
            message = conn.recv()
            if message == EXIT:
                break
            counts.clear()
            if isinstance(message, RankLoad):
                reply = _load(setup, registry, message)
            else:
                reply = _serve(setup, registry, message, conn, stop, counts)
            conn.send(reply)
    except (EOFError, KeyboardInterrupt):  # the worker went away
        pass
    finally:
        dist.destroy_process_group()


def _serve(
    setup: RankSetup,
    registry: Any,
    call: RankCall,
    conn: Connection,
    stop: Any,
    counts: Counter[str],
) -> tuple[Any, ...]:
    import torch

    from videoserve.models.backends import parallel
    from videoserve.models.backends.base import Cancelled, GenerationInputs

    def should_stop() -> bool:
        # Every rank asks at the same points of the same call: the all-reduce makes them agree.
        flag = torch.tensor([1 if stop.is_set() else 0], device=_reduce_device(setup.device))
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def on_progress(step: int, total: int) -> None:
        if setup.rank == 0:
            conn.send(("progress", step, total))

    try:
        backend = registry.backend(call.model)
        plan = registry.parallel(call.model)
        assert plan is not None, f"model '{call.model}' is not parallel"
        backend.load()  # loaded by the `RankLoad` before; again if the pool unloaded it since
        parallel.enable(backend.loaded_pipelines(), plan, setup.device)
        params = registry.resolve(call.model).schema.model_validate(call.params)
        sink = None
        if setup.rank == 0 and call.preview_every is not None:
            sink = _PreviewPipe(conn, call.preview_every, call.preview_seconds)
        inputs = GenerationInputs(
            image=call.image, reference_images=call.reference_images, preview=sink
        )
        cuda = setup.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats(setup.device)
        video = backend.generate(params, inputs, on_progress, should_stop)
        peak = torch.cuda.max_memory_allocated(setup.device) / 2**30 if cuda else None
        return ("done", video if setup.rank == 0 else None, dict(counts), peak)
    except Cancelled as exc:
        return ("failed", "cancelled", str(exc), dict(counts))
    except Exception as exc:
        if not out_of_memory(exc):
            return _failed(setup, exc, counts)
        gc.collect()
        if setup.device.startswith("cuda"):
            torch.cuda.empty_cache()
        message = f"out of memory on rank {setup.rank} ({setup.device}): {exc}"
        return ("failed", "out_of_memory", message, dict(counts))


def _failed(setup: RankSetup, exc: Exception, counts: Counter[str]) -> tuple[Any, ...]:
    """The reply of a call that raised `exc` (not out of memory, not cancelled)."""
    if isinstance(exc, errors.ModelUnavailable):
        return ("failed", "model_unavailable", exc.message, dict(counts))
    if isinstance(exc, errors.InvalidRequest):
        return ("failed", "input_invalid", exc.message, dict(counts))
    code = "collective" if _is_collective_failure(exc) else "model_error"
    log.exception("rank %d: the call failed", setup.rank)
    return ("failed", code, f"{type(exc).__name__}: {exc}", dict(counts))


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is a device or host allocation failure. torch raises `OutOfMemoryError`
    for CUDA, but its CPU allocator a bare RuntimeError ("DefaultCPUAllocator: can't allocate
    memory"), which only its text tells apart: the one message this module reads."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def _load(setup: RankSetup, registry: Any, load: RankLoad) -> tuple[Any, ...]:
    """Load the entry's pipeline on this rank's device: ("loaded", seconds) or ("failed", ...)."""
    import time

    try:
        backend = registry.backend(load.model)
        backend.device = setup.device
        if getattr(backend, "loaded", False):
            return ("loaded", 0.0)
        begun = time.perf_counter()
        backend.load()
        return ("loaded", time.perf_counter() - begun)
    except Exception as exc:
        if out_of_memory(exc):
            message = f"out of memory on rank {setup.rank} ({setup.device}) loading: {exc}"
            return ("failed", "out_of_memory", message, {})
        if not isinstance(exc, errors.ModelUnavailable):
            log.exception("rank %d: loading %s failed", setup.rank, load.model)
            return ("failed", "model_unavailable", f"{type(exc).__name__}: {exc}", {})
        return ("failed", "model_unavailable", exc.message, {})


def _reduce_device(device: str) -> str:
    return device if device.startswith("cuda") else "cpu"


def _is_collective_failure(exc: BaseException) -> bool:
    """A collective that timed out or lost a peer (gloo and NCCL raise these)."""
    import torch.distributed as dist

    if isinstance(exc, dist.DistBackendError | dist.DistNetworkError):
        return True
    text = str(exc).lower()
    return "gloo" in text or "nccl" in text or "timed out" in text or "connection" in text


def _count_collectives() -> Counter[str]:
    """Wrap the collectives in `COUNTED` so each call adds one to its name's count."""
    import importlib

    counts: Counter[str] = Counter()
    for module_name, name in COUNTED:
        module = importlib.import_module(module_name)
        original = getattr(module, name)
        setattr(module, name, _counting(original, name, counts))
    return counts


def _counting(original: Callable[..., Any], name: str, counts: Counter[str]) -> Callable[..., Any]:
    def counted(*args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        return original(*args, **kwargs)

    return counted

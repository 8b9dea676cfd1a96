"""GPU speed options of a diffusers entry: checked against this host at startup, applied at load.

Each is off unless the entry sets it (docs/models.md says what each does and whether it is
lossless):
- `attention_backend`: diffusers' `set_attention_backend` on the transformer(s), e.g. `flash`,
  `_flash_3`, `sage`, `_native_cudnn`. Most backends are CUDA kernels; on a CPU only PyTorch's
  own SDPA (`native`, `_native_math`) runs, so the rest are refused there at startup.
- `compile = "regional"`: `compile_repeated_blocks` (torch.compile of the repeated transformer
  block, not the whole model), with `dynamic=True` so that other sizes and frame counts reuse
  the compiled code instead of recompiling; warmed up once at load (`warm_up`), so the first
  request does not pay for compiling.
- `quantize`: torchao's weight (and activation) quantization of the transformer(s) in place
  (`torchao.quantization.quantize_`). fp8 needs an NVIDIA GPU of compute capability 8.9 or
  newer (Ada, Hopper, Blackwell); int8 runs anywhere.
torch, diffusers and torchao are imported only for an entry that sets the option that needs them.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from typing import Any

from videoserve.models.options import RuntimeOptions

log = logging.getLogger("videoserve.models")

# PyTorch's own scaled_dot_product_attention: the attention backends that run on a CPU.
CPU_ATTENTION = ("native", "_native_math")
FP8 = ("fp8", "fp8_weight_only")
FP8_CAPABILITY = (8, 9)
TRANSFORMERS = ("transformer", "transformer_2")


def check_host(runtime: RuntimeOptions, device: str) -> None:
    """ValueError saying why a speed option cannot work on `device` of this host."""
    if runtime.attention_backend is not None:
        _check_attention(runtime.attention_backend, device)
    if runtime.compile is not None:
        _check_compile(device)
    if runtime.quantize is not None:
        _check_quantize(runtime.quantize, device)


def _on_gpu(device: str) -> bool:
    """Whether `device` is a CUDA GPU here (`auto` resolved as the backend resolves it)."""
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def _check_attention(name: str, device: str) -> None:
    from diffusers.models import attention_dispatch as dispatch

    known = [backend.value for backend in dispatch.AttentionBackendName]
    if name not in known:
        raise ValueError(f"attention_backend must be one of {', '.join(known)} (got {name!r})")
    try:
        # diffusers' own check of the backend's package (flash-attn, sageattention, kernels...);
        # private, but it is the one place that knows each backend's requirements.
        dispatch._check_attention_backend_requirements(dispatch.AttentionBackendName(name))
    except (RuntimeError, ImportError) as exc:
        raise ValueError(f"attention_backend {name!r} cannot run here: {exc}") from None
    if name not in CPU_ATTENTION and not _on_gpu(device):
        raise ValueError(
            f"attention_backend {name!r} is a CUDA kernel and this entry runs on {device} "
            f"without a GPU (on a CPU: {', '.join(CPU_ATTENTION)})"
        )


def _check_compile(device: str) -> None:
    if _on_gpu(device):
        if importlib.util.find_spec("triton") is None:
            raise ValueError('compile = "regional" on a GPU needs triton (pip install triton)')
    elif shutil.which("c++") is None and shutil.which("g++") is None:
        raise ValueError('compile = "regional" on a CPU needs a C++ compiler (c++ or g++)')


def _check_quantize(mode: str, device: str) -> None:
    if importlib.util.find_spec("torchao") is None:
        raise ValueError(f"quantize = {mode!r} needs torchao (pip install torchao)")
    if mode not in FP8:
        return
    if not _on_gpu(device):
        raise ValueError(
            f"quantize = {mode!r} needs an NVIDIA GPU of compute capability 8.9 or newer "
            f"(Ada, Hopper); this entry runs on {device} without one (int8 runs anywhere)"
        )
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return  # no GPU visible at startup: `cuda` was asked for, loading will say why
    index = torch.device(device if device != "auto" else "cuda").index or 0
    capability = torch.cuda.get_device_capability(index)
    if capability < FP8_CAPABILITY:
        raise ValueError(
            f"quantize = {mode!r} needs compute capability 8.9 or newer (Ada, Hopper); "
            f"{torch.cuda.get_device_name(index)} has {capability[0]}.{capability[1]}"
        )


def transformers_of(pipe: Any) -> list[Any]:
    return [m for m in (getattr(pipe, part, None) for part in TRANSFORMERS) if m is not None]


def quantize(pipe: Any, mode: str) -> None:
    """Quantize the transformer(s) in place with the torchao config `mode` names."""
    from torchao import quantization as ao

    configs = {
        "fp8": ao.Float8DynamicActivationFloat8WeightConfig,
        "fp8_weight_only": ao.Float8WeightOnlyConfig,
        "int8": ao.Int8DynamicActivationInt8WeightConfig,
        "int8_weight_only": ao.Int8WeightOnlyConfig,
    }
    for module in transformers_of(pipe):
        ao.quantize_(module, configs[mode]())


def set_attention(pipe: Any, name: str) -> None:
    for module in transformers_of(pipe):
        module.set_attention_backend(name)


def compile_regions(pipe: Any, *, cached: bool) -> None:
    """`compile_repeated_blocks` with symbolic shapes; graphs may break under First Block Cache.

    First Block Cache decides per step in Python whether to run the remaining blocks, which
    torch.compile cannot capture in one graph: with the cache on, `fullgraph` is off.
    """
    for module in transformers_of(pipe):
        module.compile_repeated_blocks(fullgraph=not cached, dynamic=True)

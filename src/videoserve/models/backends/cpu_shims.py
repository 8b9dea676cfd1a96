"""What context parallelism needs on a CPU-only host (the test bed: gloo ranks, no GPU).

Two gaps in torch 2.13 / diffusers 0.42.1 on a CPU host, filled here and only for CPU ranks
(`parallel.enable` installs them when a rank's device is `cpu`; a GPU rank never does):
- `torch.accelerator.device_count()` is 0 without an accelerator, and diffusers computes
  `rank % device_count()` when it sets up parallelism (ZeroDivisionError). The count reads at
  least 1 here.
- Ring attention needs attention that also returns its log-sum-exp. diffusers' `native` backend
  refuses that, and `_native_flash` calls `aten::_scaled_dot_product_flash_attention`, which has
  no CPU kernel. One is registered here that delegates to torch's own CPU flash attention
  (`_scaled_dot_product_flash_attention_for_cpu`), returning the fields a forward reads.
Both patch process-wide state, which is why they stay out of every GPU path.
"""

from __future__ import annotations

from typing import Any

_installed: set[str] = set()
_library: Any = None  # kept alive: dropping a torch.library.Library removes its kernels


def install(*, ring: bool) -> None:
    """Install the CPU shims this process needs (idempotent)."""
    import torch

    if "device_count" not in _installed:
        counted = torch.accelerator.device_count

        def device_count() -> int:
            return max(1, counted())

        torch.accelerator.device_count = device_count
        _installed.add("device_count")
    if ring and "flash_cpu" not in _installed:
        _register_flash_cpu()
        _installed.add("flash_cpu")


def _register_flash_cpu() -> None:
    import torch

    global _library
    _library = torch.library.Library("aten", "IMPL")

    def flash_attention_cpu(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        return_debug_mask: bool = False,
        *,
        scale: float | None = None,
    ) -> tuple[Any, ...]:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p, is_causal, scale=scale
        )
        empty = torch.empty(0, dtype=torch.long)
        length_q, length_k = query.shape[-2], key.shape[-2]
        return out, lse, empty, empty, length_q, length_k, empty, empty, empty

    _library.impl("_scaled_dot_product_flash_attention", flash_attention_cpu, "CPU")

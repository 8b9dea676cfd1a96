"""The private parts of diffusers that the model layer leans on, checked by name.

`models/speed.py` asks diffusers' private `_check_attention_backend_requirements` what an
attention backend needs and offers `_native_math` on a CPU; `models/backends/cfg.py` is a
`ModelHook` that reads `fn_ref.original_forward` and sets `_is_stateful` so the pipeline's
end-of-call reset (`_reset_stateful_cache`) clears it. pyproject.toml bounds diffusers below
the next minor; this file fails naming the piece that moved when the bound is raised.
(Here, not in tests/unit: importing torch and diffusers takes seconds.)
"""

from __future__ import annotations

import inspect

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers.hooks import HookRegistry, ModelHook  # noqa: E402
from diffusers.models import attention_dispatch  # noqa: E402
from diffusers.models.cache_utils import CacheMixin  # noqa: E402

from videoserve.models import speed  # noqa: E402
from videoserve.models.backends import cfg  # noqa: E402


def test_attention_backend_requirements_check() -> None:
    check = attention_dispatch._check_attention_backend_requirements
    assert list(inspect.signature(check).parameters) == ["backend"]
    names = {backend.value for backend in attention_dispatch.AttentionBackendName}
    assert set(speed.CPU_ATTENTION) <= names
    for name in speed.CPU_ATTENTION:  # needs nothing beyond torch: passes here
        check(attention_dispatch.AttentionBackendName(name))


class _Recorder(ModelHook):
    _is_stateful = True

    def __init__(self) -> None:
        super().__init__()
        self.forwards = 0
        self.resets = 0

    def new_forward(self, module: torch.nn.Module, *args: object, **kwargs: object) -> object:
        self.forwards += 1
        return self.fn_ref.original_forward(*args, **kwargs)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.resets += 1
        return module


class _Stateful(CacheMixin, torch.nn.Linear):
    pass


def test_model_hooks_as_the_cfg_hook_uses_them() -> None:
    assert ModelHook._is_stateful is False  # the flag cfg.CFGBatchHook overrides
    assert cfg.CFGBatchHook._is_stateful is True
    module = _Stateful(2, 2)
    registry = HookRegistry.check_if_exists_or_initialize(module)
    assert list(inspect.signature(registry.register_hook).parameters) == ["hook", "name"]
    hook = _Recorder()
    registry.register_hook(hook, "recorder")
    assert HookRegistry.check_if_exists_or_initialize(module).get_hook("recorder") is hook
    out = module(torch.ones(1, 2))  # through new_forward, to the original forward
    assert hook.forwards == 1 and out.shape == (1, 2)
    module._reset_stateful_cache()  # what a pipeline's maybe_free_model_hooks calls
    assert hook.resets == 1

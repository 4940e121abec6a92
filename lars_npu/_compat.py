"""Every private torch API lars_npu uses, in one place, each feature-checked.

lars_npu uses torch's public API everywhere else. What is here has no public equivalent (or the
public one costs too much per step), and each entry says why. ``tests/test_compat.py`` asserts
that the running torch still provides every one of them in the shape used here, so a torch that
changed one fails loudly in CI rather than silently taking a fallback.

- :func:`step_without_global_hooks`: the inner optimizer's step with its own step hooks but not
  the global ones (those fired once already, for ``LARS.step``). torch's public ``step()`` runs
  both; the wrapper it installs (``Optimizer.profile_hook_step``) keeps the undecorated step as
  ``__wrapped__`` and the per-instance hooks in ``_optimizer_step_pre_hooks`` /
  ``_optimizer_step_post_hooks``.
- :func:`instance_hooks`: the hooks ``Optimizer.register_*_hook`` stored on an instance.
  LARS overrides ``state_dict``/``load_state_dict`` (it adds its hyper-parameters and checks a
  checkpoint before anything changes) and so runs the hooks itself, as torch's methods do.
- :func:`max_abs_norms`: ``torch._foreach_norm(ts, inf)``, one multi-tensor kernel for the
  inf/nan check of many gradients (what ``torch.nn.utils.clip_grad_norm_`` uses too).
- :func:`coo_members`: a COO tensor's values and indices as stored (``_values``/``_indices``);
  the public ``values()``/``indices()`` refuse an uncoalesced tensor.
- :data:`TO_DLPACK`: ``torch._C._to_dlpack`` (``_to_dlpack_versioned`` on newer torch), the
  per-tensor capsule the native fused step reads; ``torch.utils.dlpack.to_dlpack`` adds a
  Python-level wrapper per call (a cost per tensor per step).
- :func:`flat_parameter_type`: FSDP1's ``FlatParameter`` class, in the private module
  ``torch.distributed.fsdp._flat_param`` (to refuse it with a recipe; never imported here).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = [
    "TO_DLPACK",
    "coo_members",
    "features",
    "flat_parameter_type",
    "instance_hooks",
    "max_abs_norms",
    "step_without_global_hooks",
]

TO_DLPACK: Callable[[torch.Tensor], Any] = (
    getattr(torch._C, "_to_dlpack", None)
    or getattr(torch._C, "_to_dlpack_versioned", None)
    or torch.utils.dlpack.to_dlpack
)


def _hook_wrapper_parts(opt: Optimizer) -> tuple[Callable[..., Any], Any, Any] | None:
    """(undecorated step, instance pre-hooks, instance post-hooks) when ``type(opt).step`` is
    torch's hook wrapper, else None."""
    fn = type(opt).step
    raw = getattr(fn, "__wrapped__", None)
    pre = getattr(opt, "_optimizer_step_pre_hooks", None)
    post = getattr(opt, "_optimizer_step_post_hooks", None)
    if raw is None or not getattr(fn, "hooked", False) or pre is None or post is None:
        return None
    return raw, pre, post


def step_without_global_hooks(opt: Optimizer) -> None:
    """``opt.step()`` with ``opt``'s own step hooks, without the global ones. An optimizer whose
    ``step`` is not torch's hook wrapper is stepped as it is."""
    parts = _hook_wrapper_parts(opt)
    if parts is None:
        opt.step()
        return
    raw, pre_hooks, post_hooks = parts
    args: tuple[Any, ...] = (opt,)
    kwargs: dict[str, Any] = {}
    for pre in list(pre_hooks.values()):
        out = pre(opt, args, kwargs)
        if out is not None:
            args, kwargs = out
    raw(*args, **kwargs)
    marker = getattr(opt, "_optimizer_step_code", None)  # the profiler's marker
    if marker is not None:
        marker()
    for post in list(post_hooks.values()):
        post(opt, args, kwargs)


_HOOK_KINDS = (
    "step_pre",
    "step_post",
    "state_dict_pre",
    "state_dict_post",
    "load_state_dict_pre",
    "load_state_dict_post",
)


def instance_hooks(opt: Optimizer, kind: str) -> list[Callable[..., Any]]:
    """The hooks registered on ``opt`` with ``register_<kind>_hook`` (``kind``: ``step_pre``,
    ``step_post``, ``state_dict_pre``, ``state_dict_post``, ``load_state_dict_pre``,
    ``load_state_dict_post``), in order: LARS overrides ``state_dict`` and
    ``load_state_dict`` and runs them itself, as torch's own methods do."""
    return list(getattr(opt, f"_optimizer_{kind}_hooks").values())


def max_abs_norms(tensors: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
    """max|x| of each (non-empty) tensor, one multi-tensor kernel where torch has one."""
    foreach = getattr(torch, "_foreach_norm", None)
    if foreach is None:
        return [t.abs().max() for t in tensors]
    return foreach(list(tensors), float("inf"))


def coo_members(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of a COO tensor as it stores them (coalesced or not)."""
    return g._values(), g._indices()


def flat_parameter_type() -> type | None:
    """FSDP1's ``FlatParameter`` class when its module is loaded (no tensor can be one before)."""
    mod = sys.modules.get("torch.distributed.fsdp._flat_param")
    return getattr(mod, "FlatParameter", None) if mod is not None else None


def features() -> dict[str, bool]:
    """Which of the private APIs above the running torch provides as used here (tests assert
    every one; the code keeps working, more slowly or with a plainer hook order, without)."""
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sparse = torch.sparse_coo_tensor(
        torch.zeros(1, 1, dtype=torch.long), torch.ones(1), (2,), check_invariants=True
    )
    return {
        "step hook wrapper": _hook_wrapper_parts(probe) is not None
        and callable(getattr(probe, "_optimizer_step_code", None)),
        "instance hook dicts": all(
            isinstance(getattr(probe, f"_optimizer_{k}_hooks", None), dict) for k in _HOOK_KINDS
        ),
        "_foreach_norm": hasattr(torch, "_foreach_norm"),
        "coo _values/_indices": coo_members(sparse)[0].shape == (1,),
        "_to_dlpack": any(hasattr(torch._C, k) for k in ("_to_dlpack", "_to_dlpack_versioned")),
        "fsdp FlatParameter module": _flat_parameter_module_exists(),
    }


def _flat_parameter_module_exists() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch.distributed.fsdp._flat_param") is not None
    except ModuleNotFoundError:
        return False

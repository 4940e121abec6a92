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
- :func:`optimizers_take_names` (the torch floor's feature test): torch's own
  ``Optimizer.add_param_group`` on a stand-in, undecorated (``__wrapped__``), so that asking does
  not import torch._dynamo.
- :func:`gloo_reduce_scatter_averages` (:mod:`lars_npu._upstream`'s FSDP2-on-gloo test): a
  private two-rank gloo group in two threads (``ProcessGroupGloo._Options``,
  ``_reduce_scatter_base``), so that the test needs no process group of the caller's.
- :func:`fsdp1_managed`, :func:`fsdp1_units`: which parameters FSDP1 manages, and each
  unit's original parameters and full shapes (``_fsdp_flattened``, ``_handle``,
  ``_use_orig_params``, ``FlatParameter._params`` / ``_shapes``), for ``mark_fsdp1``.
- :func:`flat_parameter_type`: FSDP1's ``FlatParameter`` class, in the private module
  ``torch.distributed.fsdp._flat_param`` (to refuse it with a recipe; never imported here).
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = [
    "coo_members",
    "features",
    "flat_parameter_type",
    "fsdp1_managed",
    "fsdp1_units",
    "gloo_reduce_scatter_averages",
    "instance_hooks",
    "max_abs_norms",
    "optimizers_take_names",
    "step_without_global_hooks",
]

_PROBE_TIMEOUT = timedelta(seconds=10)


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


class _Groups:
    """What ``Optimizer.add_param_group`` reads and appends to: its checks run on this alone."""

    def __init__(self) -> None:
        self.defaults: dict[str, Any] = {"lr": 0.1}
        self.param_groups: list[dict[str, Any]] = []


def optimizers_take_names() -> bool:
    """Whether torch's optimizers accept ``(name, parameter)`` pairs and keep the names.

    torch's own ``Optimizer.add_param_group`` runs on a stand-in, without the decorator that
    imports torch._dynamo (1-2 s on first use), so this costs well under a millisecond."""
    add = torch.optim.Optimizer.add_param_group
    add = getattr(add, "__wrapped__", add)
    groups = _Groups()
    try:
        add(groups, {"params": [("w", torch.nn.Parameter(torch.zeros(1)))]})  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return groups.param_groups[0].get("param_names") == ["w"]


@functools.cache
def gloo_reduce_scatter_averages() -> bool | None:
    """Whether this torch's gloo ``reduce_scatter_tensor`` honours ``ReduceOp.AVG``.

    Tested, not looked up: two threads of this process form a private two-rank gloo group over
    127.0.0.1 (an in-process store; no group of the caller's is touched, and nothing needs to
    be initialised) and reduce-scatter ``[1, 1]`` and ``[2, 2]`` with AVG: 1.5 is an average,
    3.0 the sum. About 30 ms, once per process (cached). ``None`` when the test could not run
    (no gloo in this build, no loopback connection, a timeout)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        return None
    store = dist.HashStore()
    got: list[float | None] = [None, None]

    def rank_main(rank: int) -> None:
        try:
            opts = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
            opts._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
            opts._timeout = _PROBE_TIMEOUT
            opts._threads = 1
            pg = dist.ProcessGroupGloo(store, rank, 2, opts)
            rs = dist.ReduceScatterOptions()
            rs.reduceOp = dist.ReduceOp.AVG  # type: ignore[assignment]
            out = torch.zeros(1)
            work = pg._reduce_scatter_base(  # type: ignore[attr-defined]
                out, torch.full((2,), float(rank + 1)), rs
            )
            work.wait()
            got[rank] = float(out.item())
        except Exception:  # any failure: the answer is "unknown"
            got[rank] = None

    threads = [threading.Thread(target=rank_main, args=(r,), daemon=True) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(3 * _PROBE_TIMEOUT.total_seconds())
    if any(t.is_alive() for t in threads) or None in got:
        return None
    if all(v == 1.5 for v in got):
        return True
    if all(v == 3.0 for v in got):
        return False
    return None


def fsdp1_managed(p: torch.Tensor) -> bool:
    """Whether FSDP1 (``use_orig_params=True``) manages ``p`` (its private marker)."""
    return bool(getattr(p, "_fsdp_flattened", False))


def fsdp1_units(module: torch.nn.Module) -> list[tuple[bool, Any, Any]]:
    """Per FSDP1 unit in ``module`` with parameters of its own: (``use_orig_params``, the
    original parameters it hands the optimizer, their full shapes), read from the unit's flat
    parameter (FSDP1 keeps them in private attributes; FSDP1 is in maintenance, FSDP2's DTensors
    describe themselves)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    out = []
    for m in module.modules():
        if not isinstance(m, FullyShardedDataParallel):
            continue
        handle = getattr(m, "_handle", None)
        if handle is None:  # a unit without parameters of its own
            continue
        flat = handle.flat_param
        orig = bool(getattr(handle, "_use_orig_params", False)) and flat._params is not None
        out.append((orig, flat._params, flat._shapes))
    return out


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
        "fsdp FlatParameter module": _flat_parameter_module_exists(),
        "optimizers take names (undecorated add_param_group)": optimizers_take_names(),
        "gloo probe API": _gloo_probe_api(),
    }


def _flat_parameter_module_exists() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch.distributed.fsdp._flat_param") is not None
    except ModuleNotFoundError:
        return False


def _gloo_probe_api() -> bool:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        return True  # nothing to probe on this build
    return hasattr(dist.ProcessGroupGloo, "_Options") and hasattr(
        dist.ProcessGroupGloo, "_reduce_scatter_base"
    )

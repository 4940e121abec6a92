"""LARS as the local optimizer of torch's ``ZeroRedundancyOptimizer``
(``ZeroRedundancyOptimizer(params, optimizer_class=lars_npu.LARSSGD, ...)``).

Each rank steps only its share of the parameters, so a non-finite gradient would skip that
share alone. The ranks agree first, with one all-reduce of a flag: any rank's non-finite
gradient skips the step on every rank.

How LARS learns it is inside a ZeRO: a global optimizer step pre-hook (torch's public
``torch.optim.optimizer.register_optimizer_step_pre_hook``), registered once when the first LARS
is built. It runs before every optimizer's step in the process; for a ``ZeroRedundancyOptimizer``
whose local optimizer (its public ``optim``) is a LARS, it hands that LARS the ZeRO's process
group. The hook costs one type check per optimizer step.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from .functional import all_finite, sparse_values

_registered = False


def watch_zero() -> None:
    """Register the hook (once per process)."""
    global _registered
    if _registered:
        return
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    register_optimizer_step_pre_hook(_before_step)
    _registered = True


def _before_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    mod = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")
    zero_type = getattr(mod, "ZeroRedundancyOptimizer", None)
    if zero_type is None or not isinstance(optimizer, zero_type):
        return
    local = getattr(optimizer, "optim", None)
    agree = getattr(local, "agree_skips_over", None)
    if agree is not None:
        import torch.distributed as dist

        group = optimizer.process_group
        agree(group if group is not None else dist.group.WORLD)


def skip_agreed(opt: Any, group: Any) -> bool:
    """Whether every rank of ``group`` must skip this step (some rank's gradient holds inf/nan);
    one all-reduce of a flag. When so, ``opt`` records the skip."""
    import torch.distributed as dist

    grads = [
        p.grad if p.grad.layout == torch.strided else sparse_values(p.grad)
        for g in opt.param_groups
        for p in g["params"]
        if p.grad is not None
    ]
    device = grads[0].device if grads else torch.device("cpu")
    if dist.get_backend(group) == "gloo":
        device = torch.device("cpu")
    flag = torch.tensor([0.0 if all_finite(grads) else 1.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return float(flag.item()) != 0.0

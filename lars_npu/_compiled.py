"""The step that ``torch.compile(opt.step)`` traces: one ``torch.ops.lars_npu.fused_step_`` node.

The eager step (``LARS.step``) plans groups with NumPy, reads the skip flag on the host and keeps
caches; none of that belongs in a graph. When dynamo traces ``LARS.step`` it takes this path
instead: it collects the parameters, gradients and momentum buffers of every group, the per-tensor
flags (the filter's committed results) and the groups' values, and calls the operator once. The
operator checks every tensor natively, as in eager mode, and decides the skip on its own (a
non-finite gradient writes nothing), so the graph holds no data-dependent branch.

What differs from the eager CPU step, and why:
- A momentum buffer created at a skipped step joins the optimizer state as zeros (the eager CPU
  step adds it only when the step ran; the NPU step joins it too). The next step's
  ``m = μ·0 + g'`` equals a first step's ``m = g'``, so parameters and buffers are the same.
- The skip warning is given when ``opt.found_inf`` is read, as after an NPU step.
- A refusal is the operator's ValueError (role and index), not a TensorError naming the
  parameter: the graph runs without the Python that would translate it.

Configurations this path does not cover (a sharded or ZeRO optimizer, an inner optimizer other
than plain momentum SGD, ``fused=False``, parameters off the CPU, a backend other than the CPU
operator) run the eager step, which dynamo does not trace (a graph break, said in
docs/operators.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ._fused import unsupported_reason
from ._groups import MASK_KEY
from ._ops import ADAPT, FIRST, MOMENTUM

if TYPE_CHECKING:
    from .optim import LARS


def traceable(opt: LARS) -> bool:
    """Whether ``opt``'s step can be the single operator node (decided at trace time, on
    the optimizer's structure; dynamo guards on what it reads)."""
    if opt._engine is not None or opt._zero_group is not None or opt.fused is False:
        return False
    if unsupported_reason(opt.optimizer) is not None:
        return False
    if opt.backend not in ("auto", "cpu"):
        return False
    return all(
        p.device.type == "cpu" and MASK_KEY in g for g in opt.param_groups for p in g["params"]
    )


def _value(v: Any) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64)


def step(opt: LARS) -> None:
    """One fused step as a single operator call (see the module docstring)."""
    groups = opt.param_groups
    state = opt.state
    params: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    bufs: list[torch.Tensor] = []
    flags: list[int] = []
    group: list[int] = []
    names: list[str] = []
    adapt: list[bool] = []
    rows = []
    for gi, g in enumerate(groups):
        momentum = g["momentum"] != 0
        mask = g[MASK_KEY]
        pnames = g.get("param_names")
        for j, p in enumerate(g["params"]):
            if p.grad is None:
                continue
            f = (ADAPT if mask[j] else 0) | (MOMENTUM if momentum else 0)
            if momentum:
                buf = state[p].get("momentum_buffer")
                if buf is None:
                    buf = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    state[p]["momentum_buffer"] = buf
                    f |= FIRST
                bufs.append(buf)
            params.append(p)
            grads.append(p.grad)
            flags.append(f)
            group.append(gi)
            names.append(pnames[j] if pnames else f"param_groups[{gi}][{j}]")
            adapt.append(bool(mask[j]))
        rows.append(
            torch.stack(
                [
                    _value(g["lr"]),
                    _value(g["weight_decay"]),
                    _value(g["momentum"]),
                    _value(float(bool(g["nesterov"]))),
                ]
            )
        )
    h = opt._hyper
    found, lam, _, _ = torch.ops.lars_npu.fused_step_(
        params,
        grads,
        bufs,
        torch.tensor(group, dtype=torch.int64),
        torch.tensor(flags, dtype=torch.uint8),
        torch.stack(rows),
        h.epsilon,
        h.coefficient,
        h.use_clip,
        h.guard_zero_norm,
    )
    opt._record.traced(found, lam, names, adapt)

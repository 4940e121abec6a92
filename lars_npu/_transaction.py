"""The unfused step as a transaction: gather and check everything the gradient rewrite and the
inner optimizer's step will read or write, rewrite the adapted gradients in place
(``g' = λ·(g + wd·w)``), then step the inner optimizer with its weight decay held at 0. If the
rewrite or the inner step raises, every rewritten gradient is put back exactly.

Shared by :class:`lars_npu.LARS` (``fused=False``, or an inner optimizer the fused step cannot
stand in for) and the sharded step (:mod:`lars_npu.distributed.engine`, ``local``: a DTensor's
local shard)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer

from ._backends import Hyper, MultiResult
from ._checks import (
    MOMENTUM,
    check_buffer,
    check_state_entry,
    check_storage,
    check_written,
    refuse_shard,
)
from ._compat import step_without_global_hooks
from ._engines import dtensor_type, is_dtensor
from ._groups import GroupPlan, GroupPlanner, param_name
from ._sharing import check_disjoint
from .functional import all_finite, check_pair, lars_, sparse_members, sparse_values

Local = Callable[[torch.Tensor], torch.Tensor]
Saved = list[tuple[torch.Tensor, torch.Tensor]]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class StepInputs:
    """What :func:`gather` collects for a step (one entry per parameter with a dense gradient,
    in group order; ``slots``: its index among all parameters)."""

    plans: list[GroupPlan] = field(default_factory=list)
    params: list[torch.Tensor] = field(default_factory=list)
    weights: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)
    adapt: list[bool] = field(default_factory=list)
    wds: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)  # each entry's group index
    # (parameter, sparse gradient, name) of excluded parameters with a sparse gradient
    sparse: list[tuple[torch.Tensor, torch.Tensor, str]] = field(default_factory=list)

    def sparse_finite(self) -> bool:
        """No sparse gradient holds inf/nan."""
        return all_finite([sparse_values(g) for _, g, _ in self.sparse])


def gather(
    groups: list[dict[str, Any]],
    state: Any,
    planner: GroupPlanner,
    *,
    local: Local | None = None,
    takes_shards: bool = False,
) -> StepInputs:
    """Everything a rewrite + inner step reads, checked before anything is written: the groups'
    plans, and per parameter with a gradient its (local) weight and gradient, filter result,
    weight decay, lr and name; its state must fit it, and nothing the step writes may share
    memory with anything else it touches."""
    out = StepInputs()
    slot = 0
    dtensors = dtensor_type() is not None  # none can exist before their module is loaded
    for gi, group in enumerate(groups):
        plan = planner.plan(gi, group)
        out.plans.append(plan)
        for j, p in enumerate(group["params"]):
            here, slot = slot, slot + 1
            g = p.grad
            if g is None:
                continue
            name = param_name(group, gi, j)
            if not takes_shards:
                refuse_shard(p, name)
            if g.is_sparse or g.layout != torch.strided:
                if plan.mask[j]:
                    raise ValueError(
                        f"parameter {name!r} has a sparse gradient; LARS cannot adapt it "
                        "(exclude it with lars_filter to let the inner optimizer handle it)"
                    )
                # excluded: the inner optimizer writes the parameter (checked below) and reads
                # the gradient (its inf/nan skips the step like any other's)
                out.sparse.append((p, g, name))
                continue
            if dtensors:
                _check_dtensor_pair(p, g, name)
            if local is not None:
                w, gl = local(p), local(g)
                check_pair(w, gl, f"parameter {name!r}", f"gradient of parameter {name!r}")
            else:  # plain tensors: lars_ checks the pairs itself, by name
                w, gl = p, g
            if plan.mask[j]:  # rewritten in place
                check_written(gl, f"gradient of parameter {name!r}")
            else:  # read (the kernels' inf/nan check reads every gradient)
                check_storage(gl, f"gradient of parameter {name!r}")
            out.params.append(p)
            out.weights.append(w)
            out.grads.append(gl)
            out.adapt.append(plan.mask[j])
            out.wds.append(plan.weight_decay)
            out.lrs.append(plan.lr)
            out.names.append(name)
            out.slots.append(here)
            out.groups.append(gi)
    _check_sharing(state, out, local)
    return out


def _check_dtensor_pair(p: Any, g: Any, name: str) -> None:
    if is_dtensor(p) != is_dtensor(g):
        raise TypeError(
            f"parameter {name!r}: a DTensor parameter needs a DTensor gradient and a plain one "
            "a plain gradient"
        )
    if is_dtensor(g) and tuple(g.placements) != tuple(p.placements):
        raise ValueError(
            f"gradient of parameter {name!r} has placements {tuple(g.placements)}, "
            f"the parameter {tuple(p.placements)}; redistribute it first"
        )


def check_inner_state(
    state: Any,
    params: list[torch.Tensor],
    names: list[str],
    local: Local | None = None,
    dense: int | None = None,
) -> dict[str, list[torch.Tensor | None]]:
    """Each parameter can be written in place, and every entry of its state fits it
    (:func:`check_state_entry`). Returns the state tensors the inner step may write, by key,
    aligned with ``params`` (None where absent). ``dense``: how many of ``params`` (the first)
    have a dense gradient (the others a sparse one, for which torch's SGD keeps a sparse
    buffer)."""
    to_local = local or _same
    written: dict[str, list[torch.Tensor | None]] = {}
    if dense is None:
        dense = len(params)
    for k, (p, name) in enumerate(zip(params, names, strict=True)):
        w = to_local(p)
        check_written(w, f"parameter {name!r}")
        st = state.get(p)
        if not st:
            continue
        for key, v in st.items():
            if (
                key == MOMENTUM
                and isinstance(v, torch.Tensor)
                and (
                    k < dense or v.layout == torch.strided  # dense gradient: dense buffer
                )
            ):
                vl = to_local(v)
                check_buffer(w, vl, name)  # tensor, floating, shape, device, storage
            else:
                check_state_entry(key, v, p, name, finite=False)
                if not (isinstance(v, torch.Tensor) and v.dim() > 0 and v.layout == torch.strided):
                    continue  # counters, scalars, sparse buffers: torch's own to write
                vl = to_local(v)
                check_written(vl, f"state[{key!r}] of parameter {name!r}")
            slots = written.get(key)
            if slots is None:
                slots = written[key] = [None] * len(params)
            slots[k] = vl
    return written


def _check_sharing(state: Any, out: StepInputs, local: Local | None) -> None:
    """The state checks of every parameter the inner step writes (sparse-gradient ones too),
    then one sharing check over everything the step writes or reads (:mod:`lars_npu._sharing`):
    parameters and state tensors are written, the gradients LARS rewrites are written, the
    others read."""
    sparse_params = [p for p, _, _ in out.sparse]
    names = out.names + [n for _, _, n in out.sparse]
    st = check_inner_state(state, out.params + sparse_params, names, local, dense=len(out.params))
    to_local = local or _same
    parts: list[Any] = [
        ("parameter {}", out.weights + [to_local(p) for p in sparse_params], True),
        ("gradient of parameter {}", out.grads + [None] * len(out.sparse),
         out.adapt + [False] * len(out.sparse)),
    ]  # fmt: skip
    parts += [(f"state[{key!r}] of parameter {{}}", ts, True) for key, ts in st.items()]
    if out.sparse:  # the inner step reads a sparse gradient's values and indices
        members = [sparse_members(g) for _, g, _ in out.sparse]
        pad = [None] * len(out.params)
        for k in range(max(map(len, members))):
            ts = pad + [m[k] if k < len(m) else None for m in members]
            parts.append(("sparse gradient of parameter {}", ts, False))
    check_disjoint(parts, names)


def save_grads(grads: list[torch.Tensor], adapt: list[bool], scratch: list[torch.Tensor]) -> Saved:
    """(gradient, copy) of every gradient LARS rewrites: what a failed inner step restores. The
    copies live in ``scratch``, allocated once and reused while shapes stay."""
    out = []
    k = 0
    for g, a in zip(grads, adapt, strict=True):
        if not a:
            continue
        s = scratch[k] if k < len(scratch) else None
        if s is None or s.shape != g.shape or s.dtype != g.dtype or s.device != g.device:
            s = torch.empty_like(g, memory_format=torch.contiguous_format)
            if k < len(scratch):
                scratch[k] = s
            else:
                scratch.append(s)
        s.copy_(g)
        out.append((g, s))
        k += 1
    del scratch[k:]
    return out


def restore_grads(saved: Saved) -> None:
    """Put back the gradients :func:`save_grads` copied (a rewrite or inner step raised)."""
    for g, old in saved:
        g.copy_(old)


def skipped(n: int, device: torch.device) -> MultiResult:
    """The result of a step skipped for a non-finite gradient (λ nan for each of ``n``)."""
    nan = torch.full((n,), math.nan, dtype=torch.float64)
    return MultiResult(torch.tensor(True, device=device), nan)


def rewrite(
    inp: StepInputs, hyper: Hyper, backend: str, scratch: list[torch.Tensor]
) -> tuple[MultiResult, Saved]:
    """Rewrite the adapted gradients of a gathered step in place (nothing when any gradient,
    dense or sparse, is non-finite). Returns the result and the copies that undo it."""
    if not inp.sparse_finite():  # the dense gradients are checked by lars_ below
        return skipped(len(inp.grads), inp.sparse[0][1].device), []
    saved = save_grads(inp.grads, inp.adapt, scratch)
    try:
        result = lars_(
            inp.weights,
            inp.grads,
            adapt=inp.adapt,
            weight_decays=inp.wds,
            lrs=inp.lrs,
            hyper=hyper,
            backend=backend,
            names=inp.names,
        )
    except BaseException:  # whatever a backend raised after a write: gradients put back
        restore_grads(saved)
        raise
    if inp.grads:
        result.found_inf = result.found_inf.to(inp.grads[0].device)
    return result, saved


def inner_step(optimizer: Optimizer, saved: Saved) -> None:
    """The inner optimizer's step, with its weight decay 0 for the duration (LARS applied it)
    and its own step hooks, but not the global ones (they fired for LARS.step). If it raises,
    every rewritten gradient is put back from ``saved``."""
    held = [(g, g["weight_decay"]) for g in optimizer.param_groups if "weight_decay" in g]
    try:
        for g, _ in held:
            g["weight_decay"] = 0.0
        step_without_global_hooks(optimizer)
    except BaseException:
        restore_grads(saved)
        raise
    finally:
        for g, wd in held:
            g["weight_decay"] = wd

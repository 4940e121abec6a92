"""The step's reduction: the local Σw², Σg² of every parameter into one fp32 buffer, ONE
all-reduce of it, λ per parameter from the global sums, the in-place rewrite of the local
gradients, and the inner optimizer's step."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from .._backends import MultiResult, resolve
from .._backends.base import Backend, lambdas_from_sums
from .._fused import FusedCall, unsupported_reason
from .._groups import GroupPlan
from .._ops import group_table
from .._transaction import gather, restore_grads, save_grads, skipped
from .shards import global_shape, local_of

if TYPE_CHECKING:
    from .engine import ShardedEngine

_SCALER_RECIPE = (
    "ShardedLARS under a GradScaler: {}. With sharded parameters the ranks must agree on every "
    "step's inf check and keep one loss scale: use "
    "torch.distributed.fsdp.sharded_grad_scaler.ShardedGradScaler (its unscale_ all-reduces the "
    "check) and call scaler.unscale_(opt) before scaler.step(opt)"
)


@dataclass
class _Prepared:
    """A checked step, before its collective: the buffer of local sums to all-reduce, and per
    parameter with a gradient (aligned lists) what the rewrite needs."""

    sums: torch.Tensor
    plans: list[GroupPlan]
    slots: list[int]
    weights: list[torch.Tensor]
    grads: list[torch.Tensor]
    adapt: list[bool]
    wds: list[float]
    lrs: list[float]
    names: list[str]
    backend: Backend
    device: torch.device
    params: list[torch.Tensor]  # the (sharded) parameters themselves, keys of the state
    groups: list[int]  # each entry's group index
    sparse: int  # excluded parameters with a sparse gradient


def _step_device(engine: ShardedEngine) -> torch.device:
    """The device of the step's buffer: the first parameter's, in any group (the layout check
    made sure they share one; read each step, in case the parameters were moved since), else
    the one the last layout check recorded (the collective's, for a layout without
    parameters). Never raises: the error path's NaN all-reduce depends on it."""
    with contextlib.suppress(Exception):
        for group in engine.opt.param_groups:
            for p in group["params"]:
                return local_of(p).device
    return engine.agreement.device


def sharded_step(engine: ShardedEngine, loss: Any) -> Any:
    """One sharded LARS step (one all-reduce); skipped on every rank when a gradient on any
    rank holds inf/nan, or when a check fails on any rank (that rank raises; nothing is
    written anywhere).

    The inner optimizer's step runs after the collective. If it raises, this rank puts back
    every gradient LARS rewrote and re-raises; when it raises on some ranks only, the others
    have already stepped and the ranks are out of step: stop the run or reload a checkpoint on
    every rank (finding out would cost a second collective per step)."""
    opt = engine.opt
    try:
        return _checked_step(engine, loss)
    except BaseException:
        # GradScaler deletes what it set (grad_scale, found_inf) only after a step returns:
        # a refused step must not leave them for the next one.
        opt.__dict__.pop("grad_scale", None)
        opt._given_found_inf = None
        raise


def _checked_step(engine: ShardedEngine, loss: Any) -> Any:
    # GradScaler (a sharded LARS has _step_supports_amp_scaling) calls step() on EVERY rank,
    # with found_inf set (and grad_scale: None when the user already unscaled). Each rank's
    # flag joins the step's one all-reduce, so every rank skips together, and scalers that
    # disagree (their scales would diverge) are a clear error on every rank.
    opt, agreement = engine.opt, engine.agreement
    given = opt._given_found_inf
    scaled = given is not None
    local_inf = given is not None and bool(given)
    n = agreement.n
    try:
        if scaled and opt.__dict__.get("grad_scale") is not None:
            raise ValueError(_SCALER_RECIPE.format(
                "the gradients are still scaled: GradScaler.step without unscale_"
            ))  # fmt: skip
        prep = _prepare(engine)
    except Exception:
        # Join the step's one collective with NaN sums, so the other ranks skip this step
        # instead of waiting for us; then report (the original error, not a later one).
        size = 2 * n + (1 if scaled else 0)
        poison = torch.full((size,), math.nan, dtype=torch.float32, device=_step_device(engine))
        with contextlib.suppress(Exception):
            dist.all_reduce(poison, group=agreement.process_group)
        raise
    buf = prep.sums
    if scaled:
        flag = torch.tensor([1.0 if local_inf else 0.0], dtype=buf.dtype, device=buf.device)
        buf = torch.cat([buf, flag])
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=agreement.process_group)
    total = buf.to(device="cpu", dtype=torch.float64).numpy()
    w_tot, g_tot = total[:n], total[n : 2 * n]
    found = not bool(np.isfinite(total).all())  # a NaN flag: a rank's checks failed
    if scaled and math.isfinite(total[-1]):
        flags = round(total[-1])
        if 0 < flags < agreement.world_size:  # whatever the sums say: the scales would diverge
            raise ValueError(_SCALER_RECIPE.format(
                f"the ranks' GradScalers disagree ({flags} of {agreement.world_size} found "
                "inf; every rank skipped this step)"
            ))  # fmt: skip
        found = found or flags > 0
    gs, adapt, slots = prep.grads, prep.adapt, prep.slots
    k = len(gs)
    if found:
        result = skipped(k, prep.device)
        return opt._finish(result, prep.names, adapt, prep.plans, loss, inner=True)
    if _fusable(opt, prep):
        result = _fused_given_sums(opt, prep, w_tot, g_tot)
        return opt._finish(result, prep.names, adapt, prep.plans, loss, inner=False)
    lam = np.ones(k)
    todo = [i for i in range(k) if adapt[i] and gs[i].numel() > 0]
    # λ of adapted parameters with no elements here (the backend reports the rest)
    empty = [i for i in range(k) if adapt[i] and gs[i].numel() == 0]
    if empty:
        se = [slots[i] for i in empty]
        lam[empty] = lambdas_from_sums(w_tot[se], g_tot[se], [prep.wds[i] for i in empty],
                                       [prep.lrs[i] for i in empty], opt._hyper)  # fmt: skip
    saved = save_grads(gs, adapt, opt._undo)  # put back if the inner step raises
    if todo:  # one backend call for every tensor (natively where the backend can)
        sl = [slots[i] for i in todo]
        try:
            lam[todo] = prep.backend.rewrite_given_sums_(
                [prep.weights[i] for i in todo], [gs[i] for i in todo], w_tot[sl], g_tot[sl],
                [prep.wds[i] for i in todo], [prep.lrs[i] for i in todo], opt._hyper,
            )  # fmt: skip
        except BaseException:
            restore_grads(saved)
            raise
    result = MultiResult(torch.tensor(False, device=prep.device), torch.from_numpy(lam))
    return opt._finish(result, prep.names, adapt, prep.plans, loss, inner=True, saved=saved)


def _fusable(opt: Any, prep: _Prepared) -> bool:
    """Whether the step after the all-reduce can be ONE fused operator call with the global sums
    (LARS + momentum SGD on the local shards, as the unsharded fused step), instead of the
    gradient rewrite and the inner optimizer's step."""
    return (
        opt.fused is not False
        and prep.sparse == 0
        and getattr(prep.backend, "takes_given_sums", False)
        and unsupported_reason(opt.optimizer) is None
    )


def _fused_given_sums(
    opt: Any, prep: _Prepared, w_tot: np.ndarray, g_tot: np.ndarray
) -> MultiResult:
    """The fused step over the local shards with the all-reduced sums (every tensor checked by
    the operator before it writes; gradients are left as they are). Momentum buffers are the
    inner SGD's own state entries (DTensors for DTensor parameters: their local shards are
    written); a new one joins the state once the step ran."""
    state = opt.state
    plans = prep.plans
    k = len(prep.grads)
    first = np.zeros(k, dtype=np.uint8)
    has_m = np.zeros(k, dtype=np.uint8)
    bufs: list[torch.Tensor | None] = []
    new: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i, (p, gi) in enumerate(zip(prep.params, prep.groups, strict=True)):
        if plans[gi].momentum == 0:
            bufs.append(None)
            continue
        has_m[i] = 1
        buf = state[p].get("momentum_buffer") if p in state else None
        if buf is None:
            buf = torch.zeros_like(p, memory_format=torch.contiguous_format)
            first[i] = 1
            new.append((p, buf))
        bufs.append(local_of(buf))
    gidx = np.asarray(prep.groups, dtype=np.int64)
    adapt = np.asarray(prep.adapt, dtype=np.uint8)
    lr_g = np.asarray([pl.lr for pl in plans], dtype=np.float64)
    wd_g = np.asarray([pl.weight_decay for pl in plans], dtype=np.float64)
    mu_g = np.asarray([pl.momentum for pl in plans], dtype=np.float64)
    nest_g = np.asarray([pl.nesterov for pl in plans], dtype=np.uint8)
    sl = np.asarray(prep.slots, dtype=np.int64)
    call = FusedCall(
        params=prep.weights, grads=prep.grads, bufs=bufs, first=first, adapt=adapt,
        has_m=has_m, wd=np.where(adapt != 0, wd_g[gidx], 0.0), lr=lr_g[gidx], mu=mu_g[gidx],
        nesterov=nest_g[gidx], hyper=opt._hyper, group=gidx,
        table=group_table(lr_g, wd_g, mu_g, nest_g), names=prep.names,
        given=torch.from_numpy(np.stack([w_tot[sl], g_tot[sl]]).astype(np.float64)),
    )  # fmt: skip
    result = prep.backend.fused_sgd_(call)
    if not bool(result.found_inf):
        for p, buf in new:
            state[p]["momentum_buffer"] = buf
    return result


def _prepare(engine: ShardedEngine) -> _Prepared:
    """Validate (the unfused step's gathering, on the local shards), check the parameters
    against the layout the ranks agreed on, and compute the local sums into the buffer to
    all-reduce. Writes nothing."""
    opt, agreement = engine.opt, engine.agreement
    inp = gather(opt.param_groups, opt.state, opt._planner, local=local_of, takes_shards=True)
    key: list[Any] = []
    for group, plan in zip(opt.param_groups, inp.plans, strict=True):
        key.append((len(group["params"]), tuple(plan.mask)))
        key.extend((id(p), local_of(p).numel(), tuple(global_shape(p) or ()))
                   for p in group["params"])  # fmt: skip
    if tuple(key) != agreement.key:
        raise ValueError(
            "ShardedLARS: the parameters changed since their layout was verified (another "
            "parameter, a new shape or filter result); call opt.verify_layout() on every "
            "rank after changing them"
        )
    device = _step_device(engine)  # one device: verified
    backend = resolve(device, opt.backend)
    sums = _local_sums(engine, backend, device, inp.slots, inp.weights, inp.grads, inp.adapt)
    if not inp.sparse_finite() and sums.numel():  # every rank skips, as for a dense one
        sums[0] = math.nan
    return _Prepared(sums, inp.plans, inp.slots, inp.weights, inp.grads, inp.adapt, inp.wds,
                     inp.lrs, inp.names, backend, device, inp.params, inp.groups,
                     len(inp.sparse))  # fmt: skip


def _local_sums(
    engine: ShardedEngine,
    backend: Backend,
    device: torch.device,
    slots: list[int],
    ws: list[torch.Tensor],
    gs: list[torch.Tensor],
    adapt: list[bool],
) -> torch.Tensor:
    """The buffer to all-reduce: fp32 ``[Σw² of every parameter | Σg² of every parameter]``
    over this rank's elements, on ``device``; 0 where this rank has no gradient or (Σw²) the
    filter excludes the parameter. A rank whose copy does not count (replicas) adds 0·x: 0 when
    x is finite, nan when not, so a non-finite gradient anywhere reaches every rank. The sums
    come from the backend's ``square_sums`` (one native call on ``cpu``, one launch per dtype
    on the AscendC kernels, else once per tensor)."""
    n = engine.agreement.n
    if not gs:
        return torch.zeros(2 * n, dtype=torch.float32, device=device)
    w_s, g_s = backend.square_sums(ws, gs, adapt)
    at = w_s.device
    acc = torch.float64 if at.type == "cpu" else torch.float32
    idx = torch.as_tensor(slots, dtype=torch.int64, device=at)
    contrib = engine.agreement.contrib[np.asarray(slots, dtype=np.int64)]
    c = torch.from_numpy(contrib).to(at, acc)
    vals = torch.zeros(2 * n, dtype=acc, device=at)
    vals[idx] = w_s.to(acc) * c
    vals[idx + n] = g_s.to(acc) * c
    buf = vals.to(torch.float32)  # beyond the fp32 range: inf, and the step is skipped
    return buf if buf.device == device else buf.to(device)

"""LARS across processes (docs/distributed.md), with real gloo process groups on this machine.

One spawn per world size (2 and 4) runs every multi-process check in the same process group (spawn
costs seconds); the tests below then judge each check's results against a single-process run of
``lars_npu.LARS`` on the full tensors, computed here in the parent:

- DDP + LARS on per-rank batches == LARS on the concatenated batch;
- ShardedLARS on flat (ZeRO-style) shards, on DTensors and on FSDP2 ``fully_shard`` == LARS on the
  full tensors (parameters and momentum, two configurations, param groups, an LR scheduler, a
  state_dict round trip mid-run);
- exactly one collective per step (Python-level calls and the process group's sequence number);
- inf/nan on one rank skips the step on every rank; mismatched layouts raise on every rank.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import queue
import time
import traceback
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lars_npu import LARS, LARSSGD, available_backends, exclude_bias_and_norm
from lars_npu._upstream import cpu_fsdp2_stream_gap, dtensor_defects, fsdp2_gloo_defect
from lars_npu.distributed import (
    ShardedLARS,
    ShardInfo,
    flat_shard,
    global_shape,
    mark_flat_shard,
    run_and_exit,
)
from tests._problem import batch, make_net
from tests.conftest import free_port

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)

RTOL, ATOL = 1e-5, 1e-6  # fp32 rounding: the sums travel in fp32, the reference keeps fp64
SPAWN_TIMEOUT = 240.0  # whole suite of one world size (a hang fails instead of blocking CI)
COLLECTIVE_TIMEOUT = timedelta(seconds=60)  # init waits for every rank to import torch

# -- the problem both sides build: parameters, gradients, optimizer ------------------------------

SHAPES = {
    "fc1.weight": (8, 5),
    "fc1.bias": (8,),
    "LayerNorm.weight": (8,),
    "fc2.weight": (3, 8),
    "fc2.bias": (3,),  # 3 < 4 ranks: some hold an empty shard
    "zero.weight": (4, 2),  # zero-initialised: λ = 0, or 1 with guard_zero_norm
    "tiny": (1, 1),  # one element: a single rank holds it
}
GROUP0 = ["fc1.weight", "fc2.weight", "zero.weight", "tiny"]
GROUP1 = ["fc1.bias", "LayerNorm.weight", "fc2.bias"]
CONFIGS: dict[str, dict[str, Any]] = {
    # exclude_bias_and_norm needs the GLOBAL ndim: on 1-D flat shards it would exclude everything
    "a": dict(coefficient=0.01, lars_filter=exclude_bias_and_norm),
    "b": dict(coefficient=0.02, use_clip=True, guard_zero_norm=True),  # default filter, by name
}
STEPS = 5


def init_value(name: str) -> torch.Tensor:
    i = list(SHAPES).index(name)
    if name == "LayerNorm.weight":
        return torch.ones(SHAPES[name])
    if name == "zero.weight":
        return torch.zeros(SHAPES[name])
    return torch.randn(SHAPES[name], generator=torch.Generator().manual_seed(100 + i))


def grad_value(step: int, name: str) -> torch.Tensor | None:
    if step == 2 and name == "fc2.bias":
        return None  # a parameter without a gradient this step
    i = list(SHAPES).index(name)
    gen = torch.Generator().manual_seed(1000 * step + i)
    return torch.randn(SHAPES[name], generator=gen) * (1.0 + i)


def make_inner(params: dict[str, torch.Tensor]) -> torch.optim.SGD:
    """Two groups; parameters not in SHAPES join the first."""
    group0 = GROUP0 + [n for n in params if n not in SHAPES]
    return torch.optim.SGD(
        [
            {
                "params": [(n, params[n]) for n in group0],
                "lr": 0.1,
                "momentum": 0.9,
                "weight_decay": 1e-4,
                "nesterov": True,
            },
            {
                "params": [(n, params[n]) for n in GROUP1],
                "lr": 0.05,
                "momentum": 0.5,
                "weight_decay": 1e-3,
            },
        ]
    )


def momentum_of(opt: torch.optim.Optimizer, p: torch.Tensor) -> torch.Tensor | None:
    return opt.state.get(p, {}).get("momentum_buffer")


def reference_run(
    cfg: str, steps: int = STEPS, *, skip: tuple[int, ...] = (), sched: bool = True
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Single-process LARS on the full tensors: (parameter, momentum buffer) by name."""
    params = {n: nn.Parameter(init_value(n)) for n in SHAPES}
    opt = LARS(make_inner(params), **CONFIGS[cfg])
    sch = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5) if sched else None
    for step in range(steps):
        if step in skip:
            continue
        for n, p in params.items():
            p.grad = grad_value(step, n)
        opt.step()
        if sch is not None:
            sch.step()
    out = {}
    for n, p in params.items():
        m = momentum_of(opt, p)
        out[n] = (p.detach().numpy().copy(), None if m is None else m.numpy().copy())
    return out


def _kind(opt: Any) -> str:
    """The optimizer's class, and whether it sums norms over the ranks."""
    return f"{type(opt).__name__}{'[sharded]' if opt._engine is not None else ''}"


def train_net(
    make_opt: Callable[[nn.Module], Any],
    model: nn.Module,
    rank: int,
    world: int,
    groups: tuple[Any, ...] = (),
) -> list[dict[str, Any]]:
    """Four steps on this rank's rows of each batch; the collectives of each opt.step()."""
    opt = make_opt(model)
    counts = []
    for step in range(4):
        x, y = batch(step, rank, world)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        with CollectiveCounter(groups) as cc:
            opt.step()
        counts.append(cc.summary())
    return counts


def reference_net(filt: Callable[..., bool] | None = None) -> dict[str, np.ndarray]:
    model = make_net()
    kw = {} if filt is None else {"lars_filter": filt}
    inner = torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt = LARS(inner, coefficient=0.01, **kw)
    for step in range(4):
        x, y = batch(step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


# -- counting collectives inside a worker --------------------------------------------------------

_COLLECTIVES = (
    "all_reduce",
    "all_reduce_coalesced",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_gather_coalesced",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "monitored_barrier",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
    "send",
    "recv",
    "isend",
    "irecv",
    "batch_isend_irecv",
)


class CollectiveCounter:
    """Counts collectives two ways while active: every torch.distributed collective function is
    wrapped (outermost calls recorded, with the all-reduced tensor's size and dtype), and the
    process groups' own sequence numbers are read before and after (that also sees collectives
    that bypass the Python API, e.g. DTensor's functional collectives)."""

    def __init__(self, extra_groups: tuple[Any, ...] = ()) -> None:
        groups = [dist.distributed_c10d._get_default_group(), *extra_groups]
        self.groups = list({id(g): g for g in groups}.values())
        self.calls: list[tuple[str, int, str]] = []
        self._depth = 0

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self._depth == 0:
                t = args[0] if args and isinstance(args[0], torch.Tensor) else None
                if t is None:
                    self.calls.append((name, -1, ""))
                else:
                    self.calls.append((name, t.numel(), str(t.dtype)))
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1

        return counted

    def __enter__(self) -> CollectiveCounter:
        self._saved = []
        for mod in (dist, dist.distributed_c10d):
            for name in _COLLECTIVES:
                fn = getattr(mod, name, None)
                if fn is not None:
                    self._saved.append((mod, name, fn))
                    setattr(mod, name, self._wrap(name, fn))
        self._seq = [g._get_sequence_number_for_group() for g in self.groups]
        return self

    def __exit__(self, *exc: object) -> None:
        for mod, name, fn in self._saved:
            setattr(mod, name, fn)
        self.seq = [
            g._get_sequence_number_for_group() - s
            for g, s in zip(self.groups, self._seq, strict=True)
        ]

    def summary(self) -> dict[str, Any]:
        return {"calls": list(self.calls), "seq": sum(self.seq)}


# -- the checks each rank runs --------------------------------------------------------------------


def _shards_and_momentum(opt: Any, params: dict[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {"params": {}, "momentum": {}}
    for n, p in params.items():
        m = momentum_of(opt, p)
        out["params"][n] = p.detach().numpy().copy()
        out["momentum"][n] = None if m is None else m.numpy().copy()
    return out


def check_flat(
    rank: int,
    world: int,
    cfg: str,
    *,
    restart_after: int | None = None,
    poison: int | None = None,
    scaler: bool = False,
    fused: bool | None = None,
) -> dict[str, Any]:
    """ShardedLARS on flat shards for STEPS steps. ``poison``: at that step the LAST rank puts
    inf into one of its gradients (no scheduler then; the reference skips that step).
    ``scaler``: the gradients are scaled as by ``scaler.scale(loss).backward()`` and the step is
    the documented recipe, ``scaler.unscale_(opt); scaler.step(opt); scaler.update()`` with torch's
    ShardedGradScaler on CPU (its unscale_ all-reduces the inf check)."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    params = {n: flat_shard(nn.Parameter(init_value(n))) for n in SHAPES}
    opt = ShardedLARS(make_inner(params), fused=fused, **CONFIGS[cfg])
    inner_steps = [0]  # the inner SGD's own steps: none when the fused operator steps
    opt.optimizer.register_step_pre_hook(lambda *_: inner_steps.__setitem__(0, inner_steps[0] + 1))
    gs = ShardedGradScaler("cpu", init_scale=2.0**8, growth_interval=1000) if scaler else None
    if gs is not None:
        gs.scale(torch.ones(()))  # initialises the scale, as the first scale(loss) does
    sch = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5) if poison is None else None
    res: dict[str, Any] = {"counts": [], "found_inf": [], "warnings": [], "untouched": None}
    res["masks"] = [list(g["lars_mask"]) for g in opt.param_groups]
    for step in range(STEPS):
        factor = 1.0 if gs is None else float(gs.get_scale())
        for n, p in params.items():
            g = grad_value(step, n)
            p.grad = None if g is None else flat_shard(g * factor)
        snapshot = None
        if step == poison:
            if rank == world - 1:
                params["fc1.weight"].grad[-1] = math.inf
            # (under a GradScaler, its unscale_ rewrites the gradients: not LARS's write)
            snapshot = [
                t.clone()
                for p in params.values()
                for t in (p.detach(), p.grad if gs is None else None, momentum_of(opt, p))
                if t is not None
            ]
        with CollectiveCounter() as cc, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if gs is None:
                opt.step()
            else:
                gs.unscale_(opt)
                gs.step(opt)
                gs.update()
        if gs is not None:  # unscale_'s own all-reduce of the inf flags comes first
            res["scales"] = [*res.get("scales", []), float(gs.get_scale())]
            cc_summary = cc.summary()
            cc_summary["calls"] = [
                c for c in cc_summary["calls"] if c[0] != "all_reduce" or c[1] != 1
            ]
            cc_summary["seq"] = 1
            res["counts"].append(cc_summary)
        else:
            res["counts"].append(cc.summary())
        res["found_inf"].append(bool(opt.found_inf))
        res["warnings"].append([str(w.message) for w in caught])
        if snapshot is not None:
            now = [
                t
                for p in params.values()
                for t in (p.detach(), p.grad if gs is None else None, momentum_of(opt, p))
                if t is not None
            ]
            res["untouched"] = len(now) == len(snapshot) and all(
                torch.equal(a, b) for a, b in zip(now, snapshot, strict=True)
            )
        if sch is not None:
            sch.step()
        if step == restart_after:  # checkpoint, rebuild both objects, load, continue
            sd, ssd = opt.state_dict(), sch.state_dict()
            opt = ShardedLARS(make_inner(params), **CONFIGS[cfg])
            opt.load_state_dict(sd)
            sch = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
            sch.load_state_dict(ssd)
    res["inner_steps"] = inner_steps[0]
    return res | _shards_and_momentum(opt, params)


def check_ddp(rank: int, world: int) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = make_net()
    ddp = DDP(model)

    def make_opt(m: nn.Module) -> LARS:
        inner = torch.optim.SGD(m.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        return LARS(inner, coefficient=0.01)

    counts = train_net(make_opt, ddp, rank, world)
    params = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}

    # gradient_as_bucket_view (the gradients are views into DDP's buckets, which the fused
    # step takes as they are) and no_sync (two micro-batches, the first without a reduction)
    model2 = make_net()
    ddp2 = DDP(model2, gradient_as_bucket_view=True)
    opt = make_opt(ddp2)
    for step in range(4):
        x, y = batch(step, rank, world)
        half = len(x) // 2
        opt.zero_grad()
        with ddp2.no_sync():
            (0.5 * nn.functional.cross_entropy(ddp2(x[:half]), y[:half])).backward()
        (0.5 * nn.functional.cross_entropy(ddp2(x[half:]), y[half:])).backward()
        opt.step()
    bucket = {n: p.detach().numpy().copy() for n, p in model2.named_parameters()}
    return {"params": params, "counts": counts, "bucket_no_sync": bucket}


def _fsdp2_grad_scale(model: nn.Module, rank: int, world: int) -> tuple[float, float]:
    """FSDP2's gradient of fc1.weight after one backward over the ranks' rows of a batch, as a
    multiple s of the one-process gradient of the whole batch: (s, |g - s·g_ref| / |g|)."""
    x, y = batch(0, rank, world)
    nn.functional.cross_entropy(model(x), y).backward()
    got = model.fc1.weight.grad.full_tensor().double()
    ref = make_net()
    x, y = batch(0)
    nn.functional.cross_entropy(ref(x), y).backward()
    want = ref.fc1.weight.grad.double()
    scale = float((got * want).sum() / (want * want).sum())
    return scale, float((got - scale * want).norm() / got.norm())


def check_fsdp2(rank: int, world: int) -> dict[str, Any]:
    from torch.distributed.fsdp import fully_shard

    gap = cpu_fsdp2_stream_gap()
    if gap is not None:  # FSDP2 fails in the first backward on CPU
        return {"skip": gap}
    model = make_net()
    fully_shard(model.fc1)
    fully_shard(model.fc2)
    fully_shard(model)
    defect = fsdp2_gloo_defect(model.fc1.weight.device_mesh.get_group())
    if defect is not None:  # what FSDP2 gives the optimizer is off: show by how much
        return {"skip": defect, "grad_scale": _fsdp2_grad_scale(model, rank, world)}
    holder: dict[str, Any] = {}

    def make_opt(m: nn.Module) -> LARS:
        # the plain LARS line: DTensor parameters make it the sharded optimizer
        inner = torch.optim.SGD(m.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        holder["opt"] = LARS(inner, coefficient=0.01, lars_filter=exclude_bias_and_norm)
        return holder["opt"]

    counts = train_net(make_opt, model, rank, world, (model.fc1.weight.device_mesh.get_group(),))
    full = {n: p.full_tensor().detach().numpy().copy() for n, p in model.named_parameters()}
    types = sorted({type(p).__name__ for p in model.parameters()})
    return {"params": full, "counts": counts, "types": types, "opt": _kind(holder["opt"])}


def _fsdp2_net() -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = make_net()
    fully_shard(model.fc1)
    fully_shard(model.fc2)
    fully_shard(model)
    return model


def _train_steps(model: nn.Module, opt: Any, steps: range, rank: int, world: int) -> None:
    for step in steps:
        x, y = batch(step, rank, world)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def check_dcp(rank: int, world: int, port: int) -> dict[str, Any]:
    """FSDP2 + LARS checkpointed with torch.distributed.checkpoint after 2 of 4 steps: the recipe
    (get_state_dict / dcp.save, then dcp.load / set_state_dict into a fresh model and optimizer)
    resumes bit-exactly; a raw dcp.load into a fresh optimizer's state_dict() restores no
    momentum (DCP loads only the entries the target already has), as documented."""
    import shutil
    import tempfile

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    gap = cpu_fsdp2_stream_gap()
    if gap is not None:  # FSDP2 fails in the first backward on CPU
        return {"skip": gap}
    # (on a torch whose gloo sums FSDP2's gradients the run is off, but it resumes exactly)
    path = os.path.join(tempfile.gettempdir(), f"lars_npu_dcp_{port}_{world}")
    out: dict[str, Any] = {}
    model = _fsdp2_net()
    opt = LARS(_sgd(model.named_parameters()), coefficient=0.01)
    _train_steps(model, opt, range(2), rank, world)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)
    raw = opt.state_dict()
    dcp.save({"optim": raw}, checkpoint_id=path + "_raw")
    _train_steps(model, opt, range(2, 4), rank, world)
    full = {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}

    model2 = _fsdp2_net()
    opt2 = LARS(_sgd(model2.named_parameters()), coefficient=0.5)  # the checkpoint's value wins
    msd2, osd2 = get_state_dict(model2, opt2)
    dcp.load({"model": msd2, "optim": osd2}, checkpoint_id=path)
    set_state_dict(model2, opt2, model_state_dict=msd2, optim_state_dict=osd2)
    out["coefficient"] = opt2.coefficient
    _train_steps(model2, opt2, range(2, 4), rank, world)
    out["bit_exact"] = all(
        torch.equal(p.full_tensor(), full[n]) for n, p in model2.named_parameters()
    )

    model3 = _fsdp2_net()
    opt3 = LARS(_sgd(model3.named_parameters()), coefficient=0.01)
    target = opt3.state_dict()
    dcp.load({"optim": target}, checkpoint_id=path + "_raw")
    opt3.load_state_dict(target)
    out["raw_state_entries"] = len(opt3.state)
    dist.barrier()
    if rank == 0:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(path + "_raw", ignore_errors=True)
    return out


def _fsdp1_net(use_orig_params: bool) -> nn.Module:
    """Net under FSDP1: fc1 its own unit, the rest in the root unit (uneven, some empty shards)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    cpu = torch.device("cpu")
    model = make_net()
    model.fc1 = FSDP(model.fc1, use_orig_params=use_orig_params, device_id=cpu)
    return FSDP(model, use_orig_params=use_orig_params, device_id=cpu)


def _sgd(params: Any) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)


def check_fsdp1(rank: int, world: int) -> dict[str, Any]:
    """FSDP1: plain LARS refuses its FlatParameters and its unmarked original parameters (before
    writing anything), naming the recipe; after mark_fsdp1 the same LARS line is exact."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from lars_npu.distributed import mark_fsdp1

    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FSDP1's deprecation notice
        flat = _fsdp1_net(use_orig_params=False)
        out["flat"] = _outcome(lambda: LARS(_sgd(flat.named_parameters()), coefficient=0.01))
        out["mark_flat"] = _outcome(lambda: mark_fsdp1(flat))
        model = _fsdp1_net(use_orig_params=True)
        out["orig"] = _outcome(lambda: LARS(_sgd(model.named_parameters()), coefficient=0.01))
        out["marked"] = mark_fsdp1(model)
        holder: dict[str, Any] = {}

        def make_opt(m: nn.Module) -> LARS:
            holder["opt"] = LARS(_sgd(m.named_parameters()), coefficient=0.01)
            return holder["opt"]

        out["counts"] = train_net(make_opt, model, rank, world)
        with FSDP.summon_full_params(model):
            out["params"] = {
                # a copy first: .numpy() would pin the storage FSDP frees on exit
                n.replace("_fsdp_wrapped_module.", ""): p.detach().clone().numpy()
                for n, p in model.named_parameters()
            }
    out["opt"] = _kind(holder["opt"])
    return out


def check_zero(rank: int, world: int) -> dict[str, Any]:
    """torch's ZeroRedundancyOptimizer: LARS inside it (optimizer_class=LARSSGD) is exact, as
    ZeRO shards whole parameters; LARS around it is refused with that recipe."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lars_npu import LARSSGD

    out: dict[str, Any] = {}
    model = make_net()
    ddp = DDP(model)
    out["as_class"] = _outcome(
        lambda: ZeroRedundancyOptimizer(model.parameters(), optimizer_class=LARS, lr=0.1)
    )
    out["around"] = _outcome(
        lambda: LARS(
            ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.SGD, lr=0.1)
        )
    )

    def make_opt(m: nn.Module) -> Any:
        return ZeroRedundancyOptimizer(
            m.parameters(),
            optimizer_class=LARSSGD,
            lr=0.1,
            momentum=0.9,
            weight_decay=1e-4,
            coefficient=0.01,
            lars_filter=exclude_bias_and_norm,
        )

    train_net(make_opt, ddp, rank, world)
    out["params"] = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}

    # a non-finite gradient in ONE parameter (one rank's share): every rank skips, none writes
    zero = make_opt(ddp)
    x, y = batch(0, rank, world)
    nn.functional.cross_entropy(ddp(x), y).backward()
    model.fc2.bias.grad[0] = math.nan
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zero.step()
    out["nan_found"] = bool(zero.optim.found_inf)
    out["nan_unchanged"] = all(torch.equal(before[n], p) for n, p in model.named_parameters())
    out["owns_fc2_bias"] = any(p is model.fc2.bias for g in zero.optim.param_groups
                               for p in g["params"])  # fmt: skip

    # a checkpoint round trip (the filter by name: it loads with weights_only=True); ZeRO copies
    # every group key into each rank's local optimizer, masks included: each rank must keep the
    # filter results of ITS parameters
    import io

    from lars_npu.filters import ParamInfo

    zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=LARSSGD, lr=0.1,
                                   momentum=0.9, lars_filter="exclude_bias_and_norm")  # fmt: skip
    x, y = batch(1, rank, world)
    zero.zero_grad()
    nn.functional.cross_entropy(ddp(x), y).backward()
    zero.step()
    zero.consolidate_state_dict(to=0)
    blob = [None]
    if rank == 0:
        buf = io.BytesIO()
        torch.save(zero.state_dict(), buf)
        blob = [buf.getvalue()]
    dist.broadcast_object_list(blob, src=0)
    sd = torch.load(io.BytesIO(blob[0]), weights_only=True)
    zero.load_state_dict(sd)
    zero.zero_grad()
    nn.functional.cross_entropy(ddp(x), y).backward()
    zero.step()
    own = [p for g in zero.optim.param_groups for p in g["params"]]
    want_mask = [exclude_bias_and_norm(ParamInfo("", p)) for p in own]
    got_mask = [b for g in zero.optim.param_groups for b in g["lars_mask"]]
    out["mask_after_load"] = (got_mask, want_mask)

    # a factory building LARS(SGD) (not LARSSGD): the ranks still agree on skipping
    def factory(params: Any, **kw: Any) -> LARS:
        return LARS(torch.optim.SGD(params, **kw), lars_filter="exclude_bias_and_norm")

    zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=factory, lr=0.1)
    zero.zero_grad()
    nn.functional.cross_entropy(ddp(x), y).backward()
    zero.step()  # LARS learns of the ZeRO around it before its first step
    out["factory_agrees"] = zero.optim._zero_group is not None
    return out


def check_hsdp(rank: int, world: int) -> dict[str, Any]:
    """FSDP2 HSDP: a 2-D (replicate, shard) mesh; the same plain LARS line. Every rank's full
    parameters must equal one process's; a step is one all-reduce (over the mesh's ranks, the
    replicas adding 0)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    gap = cpu_fsdp2_stream_gap()
    if gap is not None:  # FSDP2 fails in the first backward on CPU
        return {"skip": gap}
    mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
    model = make_net()
    fully_shard(model.fc1, mesh=mesh)
    fully_shard(model.fc2, mesh=mesh)
    fully_shard(model, mesh=mesh)
    defects = dtensor_defects(model.parameters())  # the shard dimension's group: gloo
    if defects:
        return {"skip": "; ".join(defects)}
    holder: dict[str, Any] = {}

    def make_opt(m: nn.Module) -> LARS:
        holder["opt"] = LARS(_sgd(m.named_parameters()), coefficient=0.01)
        return holder["opt"]

    counts = train_net(make_opt, model, rank, world)
    full = {n: p.full_tensor().detach().numpy().copy() for n, p in model.named_parameters()}
    placements = str(model.fc1.weight.placements)
    return {"params": full, "counts": counts, "opt": _kind(holder["opt"]),
            "placements": placements}  # fmt: skip


def check_dtensor(rank: int, world: int) -> dict[str, Any]:
    """Plain DTensors: Shard(0), Shard(1) and Replicate placements; at step 1 the last rank puts
    inf into its copy of a REPLICATED gradient (whose sums other ranks do not count)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    place = {n: [Shard(0)] for n in SHAPES} | {
        "fc2.weight": [Shard(1)],
        "fc1.bias": [Replicate()],
        "fc2.bias": [Replicate()],
    }

    # src_data_rank=None: each rank keeps its own copy (all equal), no communication; torch 2.6
    # lacks the argument and sends rank 0's copy, which gives the same tensors
    takes = inspect.signature(distribute_tensor).parameters
    own = {"src_data_rank": None} if "src_data_rank" in takes else {}

    def dt(t: torch.Tensor, n: str) -> torch.Tensor:
        return distribute_tensor(t, mesh, place[n], **own)

    params = {n: nn.Parameter(dt(init_value(n), n)) for n in SHAPES}
    opt = ShardedLARS(make_inner(params), **CONFIGS["a"])
    counts, found = [], []
    for step in range(3):
        for n, p in params.items():
            g = grad_value(step, n)
            p.grad = None if g is None else dt(g, n)
        if step == 1 and rank == world - 1:
            params["fc1.bias"].grad.to_local()[0] = math.inf
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with CollectiveCounter((mesh.get_group(),)) as cc:
                opt.step()
        counts.append(cc.summary())
        found.append(bool(opt.found_inf))
    full = {n: p.full_tensor().detach().numpy().copy() for n, p in params.items()}
    return {"params": full, "counts": counts, "found_inf": found}


def _outcome(fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        fn()
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc)}
    return {"raised": None, "message": ""}


def check_layouts(rank: int, world: int) -> dict[str, Any]:
    """Each case builds shards that disagree on one rank; every rank must raise the same
    ValueError and leave the inner optimizer as it was."""
    last = world - 1
    out: dict[str, Any] = {}

    def build(edit: Callable[[dict[str, torch.Tensor]], None]) -> dict[str, Any]:
        params = {n: flat_shard(nn.Parameter(init_value(n))) for n in SHAPES}
        edit(params)
        inner = make_inner(params)
        res = _outcome(lambda: ShardedLARS(inner, **CONFIGS["a"]))
        res["restored"] = [
            (g["weight_decay"], "lars_mask" in g, "lars_weight_decay" in g)
            for g in inner.param_groups
        ]
        return res

    def extra(params: dict[str, torch.Tensor]) -> None:
        if rank == last:
            params["extra.weight"] = flat_shard(nn.Parameter(torch.ones(2, 2)))

    out["count"] = build(extra)

    def reshape(params: dict[str, torch.Tensor]) -> None:
        if rank == last:
            mark_flat_shard(params["fc1.weight"], (5, 8))

    out["shape"] = build(reshape)

    def resize(params: dict[str, torch.Tensor]) -> None:
        if rank == last:
            p = params["fc1.weight"]
            params["fc1.weight"] = mark_flat_shard(
                nn.Parameter(torch.cat([p.detach(), torch.ones(1)])), (8, 5)
            )

    out["sizes"] = build(resize)

    def unmarked(params: dict[str, torch.Tensor]) -> None:
        if rank == 0:
            params["fc1.weight"] = nn.Parameter(params["fc1.weight"].detach().clone())

    out["unmarked"] = build(unmarked)

    # A step that fails its checks on one rank: that rank raises, the others skip the step (the
    # failing rank joined the all-reduce with NaN sums) instead of hanging; the next step is fine.
    # And a non-finite sparse gradient (of a parameter LARS excludes) on one rank: every rank
    # skips, none raises.
    def sparse(params: dict[str, torch.Tensor]) -> None:  # sparse on a parameter LARS adapts
        params["fc1.weight"].grad = params["fc1.weight"].grad.to_sparse()

    def aliased(params: dict[str, torch.Tensor]) -> None:  # the gradient is its parameter
        params["fc1.weight"].grad = params["fc1.weight"].detach()

    def state(params: dict[str, torch.Tensor]) -> None:  # a 0-dim momentum buffer
        opt.state[params["fc2.weight"]]["momentum_buffer"] = torch.tensor(0.5)

    def sparse_nan(params: dict[str, torch.Tensor]) -> None:
        g = torch.zeros_like(params["fc1.bias"].grad)
        g[0] = float("nan")
        params["fc1.bias"].grad = g.to_sparse()

    for case, edit in [("sparse", sparse), ("aliased", aliased), ("state", state),
                       ("sparse_nan", sparse_nan)]:  # fmt: skip
        params = {n: flat_shard(nn.Parameter(init_value(n))) for n in SHAPES}
        opt = ShardedLARS(make_inner(params), **CONFIGS["a"])
        for step in (0, 1):
            for n, p in params.items():
                g = grad_value(step, n)
                p.grad = None if g is None else flat_shard(g)
            if step == 0:
                opt.step()  # momentum buffers
        if rank == last:
            edit(params)
        before = _opt_snapshot(opt)
        weights = {n: p.detach().clone() for n, p in params.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = _outcome(opt.step)
        res["found_inf"] = bool(opt.found_inf)
        res["untouched"] = _same_snapshot(before, _opt_snapshot(opt)) and all(
            torch.equal(weights[n], p.detach()) for n, p in params.items()
        )
        for n, p in params.items():
            g = grad_value(2, n)
            p.grad = None if g is None else flat_shard(g)
        for st in opt.state.values():
            if st["momentum_buffer"].dim() == 0:
                del st["momentum_buffer"]
        with CollectiveCounter() as cc:
            opt.step()
        res["next"] = (bool(opt.found_inf), cc.summary())
        out[f"local_error_{case}"] = res

    # A parameter swapped behind the optimizer's back (on every rank; "tiny" becomes a 3x3
    # shard): the step refuses, on every rank, until verify_layout() has checked the new layout.
    new = flat_shard(nn.Parameter(torch.full((3, 3), 0.5)))
    new.grad = flat_shard(torch.full((3, 3), 0.25))
    opt.param_groups[0]["params"][GROUP0.index("tiny")] = new
    out["changed"] = _outcome(opt.step)
    opt.verify_layout()
    before = new.detach().clone()
    with CollectiveCounter() as cc:
        opt.step()
    moved = new.numel() == 0 or not torch.equal(before, new.detach())
    out["changed"]["after_verify"] = (bool(opt.found_inf), cc.summary(), moved)
    return out


def _opt_snapshot(opt: Any) -> Any:
    """Everything a load / add could change: groups (less params), hyper-parameters, state."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    state = {
        id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
        for p, s in opt.state.items()
    }
    hyper = (opt.epsilon, opt.coefficient, opt.use_clip, opt.guard_zero_norm)
    return copy.deepcopy(groups), state, hyper, opt._engine.agreement.n


def _same_snapshot(a: Any, b: Any) -> bool:
    (ga, sa, ha, na), (gb, sb, hb, nb) = a, b
    if ga != gb or ha != hb or na != nb or sa.keys() != sb.keys():
        return False
    for k in sa:
        if sa[k].keys() != sb[k].keys():
            return False
        for key, va in sa[k].items():
            vb = sb[k][key]
            same = torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb
            if not same:
                return False
    return True


def check_local_failures(rank: int, world: int) -> dict[str, Any]:
    """A change that fails LOCALLY on one rank (before the layout check): every rank must still
    join the check and raise the same error at once (not after the collective timeout), and no
    rank may change anything; the optimizer then steps as before (one collective)."""
    last = world - 1
    out: dict[str, Any] = {}
    params = {n: flat_shard(nn.Parameter(init_value(n))) for n in SHAPES}
    opt = ShardedLARS(make_inner(params), **CONFIGS["a"])

    def set_grads(step: int) -> None:
        for n, p in params.items():
            g = grad_value(step, n)
            p.grad = None if g is None else flat_shard(g)

    set_grads(0)
    opt.step()  # momentum buffers: state a wrong load would replace

    def attempt(name: str, fn: Callable[[], Any]) -> None:
        before = _opt_snapshot(opt)
        t0 = time.perf_counter()
        res = _outcome(fn)
        res["seconds"] = time.perf_counter() - t0
        res["unchanged"] = _same_snapshot(before, _opt_snapshot(opt))
        out[name] = res

    # load_state_dict: a checkpoint every rank could load (other lr, coefficient and momentum, so
    # a load would show), except that the last rank's has one parameter group too many.
    sd = copy.deepcopy(opt.state_dict())
    sd["lars"]["coefficient"] = 0.5
    for g in sd["param_groups"]:
        g["lr"] = 0.5
    for s in sd["state"].values():
        s["momentum_buffer"] = s["momentum_buffer"] + 1.0
    if rank == last:
        sd["param_groups"].append(dict(sd["param_groups"][0]))
    attempt("load", lambda: opt.load_state_dict(sd))

    # add_param_group: torch refuses the last rank's group (a parameter already in group 0)
    extra = flat_shard(nn.Parameter(torch.ones(2, 3)))
    dup = params["tiny"] if rank == last else extra
    attempt("add", lambda: opt.add_param_group({"params": [("extra.weight", dup)], "lr": 0.1}))

    # verify_layout: LARS refuses a group on the last rank only (maximize=True)
    if rank == last:
        opt.param_groups[1]["maximize"] = True
    attempt("verify", opt.verify_layout)
    opt.param_groups[1]["maximize"] = False

    set_grads(1)
    with CollectiveCounter() as cc:
        opt.step()
    out["next"] = (bool(opt.found_inf), cc.summary())

    # the constructor: the user's filter raises on the last rank only
    def filt(info: Any) -> bool:
        if rank == last:
            raise KeyError(f"no rule for {info.name}")
        return exclude_bias_and_norm(info)

    inner = make_inner({n: flat_shard(nn.Parameter(init_value(n))) for n in SHAPES})
    groups_before = copy.deepcopy(
        [{k: v for k, v in g.items() if k != "params"} for g in inner.param_groups]
    )
    t0 = time.perf_counter()
    res = _outcome(lambda: ShardedLARS(inner, lars_filter=filt))
    res["seconds"] = time.perf_counter() - t0
    res["unchanged"] = groups_before == [
        {k: v for k, v in g.items() if k != "params"} for g in inner.param_groups
    ]
    out["construct"] = res
    return out


def check_scaler_misuse(rank: int, world: int) -> dict[str, Any]:
    """GradScaler recipes that would let the ranks' loss scales diverge are refused on every
    rank at once, nothing written, no GradScaler state left behind: a plain GradScaler whose inf
    check differs across ranks, and scaler.step without unscale_ first."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    out: dict[str, Any] = {}
    cases = {
        "plain_disagree": (lambda: torch.amp.GradScaler("cpu", init_scale=256.0), True, True),
        "no_unscale": (lambda: ShardedGradScaler("cpu", init_scale=256.0), False, False),
    }
    for name, (make, unscale_first, poison) in cases.items():
        params = {n: flat_shard(nn.Parameter(init_value(n))) for n in SHAPES}
        opt = ShardedLARS(make_inner(params), **CONFIGS["a"])
        sc = make()
        sc.scale(torch.ones(()))
        for n, p in params.items():
            g = grad_value(0, n)
            p.grad = None if g is None else flat_shard(g * 256.0)
        if poison and rank == world - 1:
            params["fc1.weight"].grad[-1] = math.inf
        before = {n: (p.detach().clone(), None if p.grad is None else p.grad.clone())
                  for n, p in params.items()}  # fmt: skip

        def go(sc=sc, opt=opt, unscale_first=unscale_first) -> None:
            if unscale_first:
                sc.unscale_(opt)
            sc.step(opt)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = _outcome(go)
        res["params_unchanged"] = all(torch.equal(before[n][0], p) for n, p in params.items())
        res["stale"] = "grad_scale" in opt.__dict__ or opt._given_found_inf is not None
        out[name] = res
    return out


def check_transactions(rank: int, world: int) -> dict[str, Any]:
    """ShardedLARS's steps and loads are transactions: a refused one changes nothing on any rank
    (parameters, gradients, momentum buffers, groups); afterwards the optimizer equals a twin that
    never saw the refusals. The refusals: the inner step raising (on every rank), a momentum buffer
    re-pointed on one rank, a NaN or negative momentum, a checkpoint whose buffer does not fit
    (one rank) or holds NaN. Last: the inner step raising on ONE rank (after the collective):
    that rank puts its gradients back and raises; the others have stepped."""
    last = world - 1
    out: dict[str, Any] = {}

    def build() -> tuple[dict[str, torch.Tensor], ShardedLARS]:
        params = {n: flat_shard(nn.Parameter(init_value(n))) for n in SHAPES}
        return params, ShardedLARS(make_inner(params), **CONFIGS["a"])

    def set_grads(params: dict[str, torch.Tensor], step: int) -> None:
        for n, p in params.items():
            g = grad_value(step, n)
            p.grad = None if g is None else flat_shard(g)

    params, opt = build()
    twin_params, twin = build()
    for ps, o in ((params, opt), (twin_params, twin)):
        set_grads(ps, 0)
        o.step()  # momentum buffers exist from here on
        set_grads(ps, 1)

    def snap() -> Any:
        return (
            {n: p.detach().clone() for n, p in params.items()},
            {n: None if p.grad is None else p.grad.clone() for n, p in params.items()},
            _opt_snapshot(opt),
        )

    def same(a: Any, b: Any) -> bool:
        (pa, ga, oa), (pb, gb, ob) = a, b
        return (
            all(torch.equal(pa[n], pb[n]) for n in pa)
            and all((ga[n] is None) == (gb[n] is None) for n in ga)
            and all(ga[n] is None or torch.equal(ga[n], gb[n]) for n in ga)
            and _same_snapshot(oa, ob)
        )

    def attempt(name: str, fn: Callable[[], Any], before: Any = None) -> dict[str, Any]:
        before = snap() if before is None else before
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the skipped step's found_inf warning
            res = _outcome(fn)
        res["found_inf"] = bool(opt.found_inf)
        out[name] = res
        return res

    def boom(*_: object) -> None:
        raise RuntimeError("inner step failed")

    # the inner step raises on every rank, after LARS rewrote the gradients in place (the
    # unfused step: the fused one does not run the inner optimizer's step)
    before = snap()
    handle = opt.optimizer.register_step_pre_hook(boom)
    opt.fused = False
    attempt("inner_all", opt.step)
    opt.fused = None
    handle.remove()
    out["inner_all"]["unchanged"] = same(before, snap())

    # a momentum buffer re-pointed to a 1-element tensor on the last rank
    before = snap()
    buf = opt.state[params["fc1.weight"]]["momentum_buffer"]
    kept = buf.data
    if rank == last:
        buf.data = torch.zeros(1)
    attempt("buffer", opt.step)
    buf.data = kept
    out["buffer"]["unchanged"] = same(before, snap())

    # a NaN momentum on every rank, then a negative one on rank 0 only
    for name, value, where in (
        ("nan_momentum", math.nan, range(world)),
        ("neg_momentum", -0.5, [0]),
    ):
        before = snap()
        if rank in where:
            opt.param_groups[1]["momentum"] = value
        attempt(name, opt.step)
        opt.param_groups[1]["momentum"] = 0.5
        out[name]["unchanged"] = same(before, snap())

    # checkpoints: a buffer of another shape (last rank), a buffer holding NaN (rank 0)
    for name, bad_rank, edit in (
        ("load_shape", last, lambda t: torch.zeros(t.numel() + 1)),
        ("load_nan", 0, lambda t: torch.full_like(t, math.nan)),
    ):
        sd = copy.deepcopy(opt.state_dict())
        for g in sd["param_groups"]:
            g["lr"] = 0.5  # a load would show
        if rank == bad_rank:
            key = next(k for k, s in sd["state"].items() if s["momentum_buffer"].numel() > 0)
            sd["state"][key]["momentum_buffer"] = edit(sd["state"][key]["momentum_buffer"])
        before = snap()
        attempt(name, lambda sd=sd: opt.load_state_dict(sd))
        out[name]["unchanged"] = same(before, snap())

    # after all that, one step on each: equal to the twin
    opt.step()
    twin.step()
    out["twin_equal"] = all(torch.equal(params[n], twin_params[n]) for n in SHAPES) and all(
        torch.equal(
            opt.state[params[n]]["momentum_buffer"], twin.state[twin_params[n]]["momentum_buffer"]
        )
        for n in SHAPES
        if params[n].grad is not None
    )

    # the inner step raises on the last rank only (the unfused step, as above)
    set_grads(params, 2)
    handle = opt.optimizer.register_step_pre_hook(boom) if rank == last else None
    before = snap()
    opt.fused = False
    attempt("inner_one", opt.step)
    opt.fused = None
    if handle is not None:
        handle.remove()
    out["inner_one"]["unchanged"] = same(before, snap())
    return out


def _suite(rank: int, world: int, port: int) -> dict[str, Any]:
    checks: dict[str, Callable[[], dict[str, Any]]] = {
        "ddp": lambda: check_ddp(rank, world),
        "flat_a": lambda: check_flat(rank, world, "a", restart_after=2),
        "flat_b": lambda: check_flat(rank, world, "b"),
        "flat_b_unfused": lambda: check_flat(rank, world, "b", fused=False),
        "nonfinite": lambda: check_flat(rank, world, "a", poison=1),
        "scaler": lambda: check_flat(rank, world, "a", poison=1, scaler=True),
        "layouts": lambda: check_layouts(rank, world),
        "local_failures": lambda: check_local_failures(rank, world),
        "transactions": lambda: check_transactions(rank, world),
        "scaler_misuse": lambda: check_scaler_misuse(rank, world),
        "dtensor": lambda: check_dtensor(rank, world),
        "fsdp2": lambda: check_fsdp2(rank, world),
        "fsdp1": lambda: check_fsdp1(rank, world),
        "hsdp": lambda: check_hsdp(rank, world),
        "zero": lambda: check_zero(rank, world),
        "dcp": lambda: check_dcp(rank, world, port),
    }
    out: dict[str, Any] = {}
    for name, fn in checks.items():
        t0 = time.perf_counter()
        try:
            out[name] = {"ok": True, **fn()}
        except Exception:
            out[name] = {"ok": False, "error": traceback.format_exc()}
        out[name]["seconds"] = time.perf_counter() - t0
    return out


def _rank_main(rank: int, world: int, port: int, results: Any) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=COLLECTIVE_TIMEOUT,
        )
        payload: Any = _suite(rank, world, port)
    except Exception:
        payload = {"__error__": traceback.format_exc()}
    results.put((rank, payload))
    results.close()
    results.join_thread()  # the feeder thread has written the payload into the pipe
    if dist.is_initialized():
        try:
            dist.barrier()  # nobody tears the group down while a peer still uses it
        finally:
            dist.destroy_process_group()


def _worker(rank: int, world: int, port: int, results: Any) -> None:
    # ends with os._exit: gloo's threads can abort a normal interpreter exit (docs/distributed.md,
    # "Exiting a gloo process"); a rank that raises still exits 1 with its traceback
    run_and_exit(_rank_main, rank, world, port, results)


def _spawn(world: int) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    env = {"OMP_NUM_THREADS": "1", "LARS_NPU_BACKEND": None}
    saved = {k: os.environ.get(k) for k in env}
    procs = []
    try:
        for k, v in env.items():  # inherited by the children at start
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for rank in range(world):
            p = ctx.Process(target=_worker, args=(rank, world, port, results), daemon=True)
            p.start()
            procs.append(p)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    got: dict[int, Any] = {}
    deadline = time.monotonic() + SPAWN_TIMEOUT
    try:
        while len(got) < world and time.monotonic() < deadline:
            try:
                rank, payload = results.get(timeout=1.0)
                got[rank] = payload
            except queue.Empty:
                dead = [i for i, p in enumerate(procs) if p.exitcode is not None and i not in got]
                if dead:
                    time.sleep(1.0)  # its last put may still be in flight
                    while not results.empty():
                        rank, payload = results.get()
                        got[rank] = payload
                    if any(i not in got for i in dead):
                        break
    finally:
        for p in procs:
            p.join(timeout=max(1.0, min(20.0, deadline - time.monotonic())))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    codes = [p.exitcode for p in procs]
    missing = [r for r in range(world) if r not in got]
    if missing:
        pytest.fail(f"ranks {missing} of {world} reported nothing (exit codes {codes})")
    for r in range(world):
        if "__error__" in got[r]:
            pytest.fail(f"rank {r} failed to set up:\n{got[r]['__error__']}")
    if any(codes):  # e.g. -6: gloo's threads aborted the exit after the rank reported
        pytest.fail(f"ranks of {world} exited with codes {codes} after reporting")
    return [got[r] for r in range(world)]


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def ranks(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return _spawn(request.param)


def results_of(
    ranks: list[dict[str, Any]], check: str, *, skip: bool = True
) -> list[dict[str, Any]]:
    """Every rank's results of ``check``. A check the ranks skipped (the running torch cannot
    run it, or runs it wrong: the reason is theirs) skips the test, unless ``skip=False``."""
    out = []
    for r, res in enumerate(ranks):
        c = res[check]
        assert c["ok"], f"rank {r}, check {check!r} failed:\n{c['error']}"
        out.append(c)
    reasons = {c.get("skip") for c in out}
    assert len(reasons) == 1, f"check {check!r}: the ranks disagree on skipping it: {reasons}"
    if skip and out[0].get("skip") is not None:
        pytest.skip(f"{check}: {out[0]['skip']}")
    return out


def unshard(per_rank: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([np.asarray(x).reshape(-1) for x in per_rank]).reshape(shape)


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=what)


def assert_one_collective(counts: list[dict[str, Any]], n: int | None, what: str) -> None:
    for step, c in enumerate(counts):
        assert len(c["calls"]) == 1, f"{what}, step {step}: collectives {c['calls']}"
        name, numel, dtype = c["calls"][0]
        assert name == "all_reduce" and dtype == "torch.float32", f"{what}: {c['calls']}"
        if n is not None:
            assert numel == 2 * n, f"{what}: all-reduced {numel} values, expected 2·{n}"
        assert c["seq"] == 1, f"{what}, step {step}: the process group ran {c['seq']} collectives"


# -- the tests ------------------------------------------------------------------------------------


def test_ddp_with_lars_equals_single_process_on_the_concatenated_batch(ranks):
    want = reference_net()
    for r, res in enumerate(results_of(ranks, "ddp")):
        # DDP reduced the gradients in backward; LARS's step adds no collective
        assert all(c == {"calls": [], "seq": 0} for c in res["counts"]), res["counts"]
        for n, w in want.items():
            assert_close(res["params"][n], w, f"rank {r}, {n}")
            assert_close(res["bucket_no_sync"][n], w, f"rank {r}, {n} (bucket views, no_sync)")


@pytest.mark.parametrize("cfg", ["flat_a", "flat_b"])
def test_flat_shards_equal_the_unsharded_run(ranks, cfg):
    """Parameters and momentum buffers: the ranks' shards put together == single-process LARS
    (config a also saves and reloads the optimizer mid-run)."""
    res = results_of(ranks, cfg)
    want = reference_run(cfg[-1])
    moved = 0
    for n, (w, m) in want.items():
        assert_close(unshard([x["params"][n] for x in res], w.shape), w, f"{cfg}: {n}")
        assert_close(unshard([x["momentum"][n] for x in res], w.shape), m, f"{cfg}: momentum {n}")
        moved += not np.array_equal(w, init_value(n).numpy())
    assert moved >= 5  # the comparison is not vacuous
    # the filter saw the global shapes: exclude_bias_and_norm adapts the 2-D weights (on 1-D
    # local shards it would adapt nothing)
    assert res[0]["masks"] == [[True] * 4, [False] * 3]


def test_sharded_step_is_one_fused_call_and_equals_the_unfused_step(ranks):
    """After the all-reduce, a sharded LARS over plain momentum SGD steps the local shards with
    one fused operator call (the inner SGD never steps); fused=False rewrites the gradients and
    steps the inner SGD. Both equal the single-process run."""
    fused, unfused = results_of(ranks, "flat_b"), results_of(ranks, "flat_b_unfused")
    want = reference_run("b")
    assert all(x["inner_steps"] == 0 for x in fused), [x["inner_steps"] for x in fused]
    assert all(x["inner_steps"] == STEPS for x in unfused), [x["inner_steps"] for x in unfused]
    for res, what in ((fused, "fused"), (unfused, "unfused")):
        for n, (w, m) in want.items():
            assert_close(unshard([x["params"][n] for x in res], w.shape), w, f"{what}: {n}")
            assert_close(unshard([x["momentum"][n] for x in res], w.shape), m,
                         f"{what}: momentum {n}")  # fmt: skip


@pytest.mark.parametrize("cfg", ["flat_a", "flat_b", "nonfinite"])
def test_exactly_one_collective_per_step(ranks, cfg):
    for r, res in enumerate(results_of(ranks, cfg)):
        assert len(res["counts"]) == STEPS
        assert_one_collective(res["counts"], len(SHAPES), f"rank {r}, {cfg}")


@pytest.mark.parametrize("check", ["nonfinite", "scaler"])
def test_non_finite_gradient_on_one_rank_skips_the_step_on_every_rank(ranks, check):
    """Also under a GradScaler (``scaler``): the rank whose scaled gradient overflowed does not
    skip alone (leaving the others waiting in the all-reduce); GradScaler calls step() on every
    rank (ShardedLARS has ``_step_supports_amp_scaling``), every rank skips that step, and each
    unscales its own sums and gradients, so the run equals the unscaled reference."""
    res = results_of(ranks, check)
    for r, x in enumerate(res):
        # under a GradScaler the step's one all-reduce also carries each rank's inf flag
        assert_one_collective(x["counts"], None if check == "scaler" else len(SHAPES), f"rank {r}")
        if check == "scaler":
            assert all(c["calls"][0][1] == 2 * len(SHAPES) + 1 for c in x["counts"]), x["counts"]
            assert len(set(x["scales"])) <= 2 and x["scales"] == res[0]["scales"], x["scales"]
        assert x["found_inf"] == [False, True, False, False, False], f"rank {r}"
        assert x["untouched"], f"rank {r}: the skipped step wrote something"
        assert [len(w) for w in x["warnings"]] == [0, 1, 0, 0, 0], f"rank {r}"
        assert "inf/nan" in x["warnings"][1][0]
    want = reference_run("a", skip=(1,), sched=False)
    for n, (w, m) in want.items():
        assert_close(unshard([x["params"][n] for x in res], w.shape), w, n)
        assert_close(unshard([x["momentum"][n] for x in res], w.shape), m, f"momentum {n}")


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("count", ["differ across ranks", "rank 0 has 7 parameters", "has 8 parameters"]),
        ("shape", ["'fc1.weight'", "global shape (8, 5) on rank 0 but (5, 8) on rank"]),
        ("sizes", ["'fc1.weight'", "(sum 41)", "neither partition it nor replicate it"]),
        ("unmarked", ["rank 0", "'fc1.weight'", "no recorded global shape", "flat_shard"]),
    ],
)
def test_mismatched_layout_is_the_same_error_on_every_rank(ranks, case, needles):
    res = [x[case] for x in results_of(ranks, "layouts")]
    for r, x in enumerate(res):
        assert x["raised"] == "ValueError", f"rank {r}: {x}"
        assert x["message"] == res[0]["message"], f"rank {r} said something else"
        for needle in needles:
            assert needle in x["message"], x["message"]
        # the inner optimizer is left as given: weight decay not taken over, no LARS keys
        assert x["restored"] == [(1e-4, False, False), (1e-3, False, False)]


@pytest.mark.parametrize(
    ("case", "needle"),
    [("sparse", "sparse"), ("aliased", "share memory"), ("state", "has shape ()"),
     ("sparse_nan", None)],
)  # fmt: skip
def test_local_error_on_one_rank_skips_the_others_and_does_not_hang(ranks, case, needle):
    """One rank's step fails its checks (a sparse gradient LARS would adapt, a gradient sharing
    its parameter's memory, a momentum buffer that does not fit): that rank raises, the others
    skip; or one rank's excluded parameter has a NaN sparse gradient: every rank skips. Nothing
    is written anywhere, and the next step is one collective."""
    res = [x[f"local_error_{case}"] for x in results_of(ranks, "layouts")]
    last = len(res) - 1
    for r, x in enumerate(res):
        if r == last and needle is not None:
            assert x["raised"] == "ValueError" and needle in x["message"], x
        else:
            assert x["raised"] is None and x["found_inf"], f"rank {r}: {x}"
        assert x["untouched"], f"rank {r}"
        found, counts = x["next"]
        assert not found
        assert_one_collective([counts], len(SHAPES), f"rank {r}, next step")


@pytest.mark.parametrize(
    ("case", "kind", "needles"),
    [
        ("load", "ValueError", ["different number of parameter groups"]),
        ("add", "ValueError", ["appear in more than one parameter group"]),
        ("verify", "ValueError", ["maximize=True"]),
        ("construct", "RuntimeError", ["KeyError", "no rule for"]),
    ],
)
def test_local_failure_on_one_rank_is_the_same_error_everywhere_at_once(ranks, case, kind, needles):
    """One rank's checkpoint / group / filter fails before the layout check. Every rank raises
    the same error (naming that rank) well within the collective timeout, and no rank has
    changed its optimizer (state, groups, hyper-parameters; inner optimizer as given)."""
    res = [x[case] for x in results_of(ranks, "local_failures")]
    last = len(res) - 1
    for r, x in enumerate(res):
        assert x["raised"] == kind, f"rank {r}: {x}"
        assert x["message"] == res[0]["message"], f"rank {r} said something else: {x}"
        assert x["message"].startswith(f"ShardedLARS: rank {last}: "), x["message"]
        for needle in needles:
            assert needle in x["message"], x["message"]
        assert x["unchanged"], f"rank {r}: {case} changed the optimizer"
        # no rank waited for the others' collective timeout (60 s)
        assert x["seconds"] < 10.0, f"rank {r}: {case} took {x['seconds']:.1f} s"


@pytest.mark.parametrize(
    ("case", "needle"),
    [("plain_disagree", "GradScalers disagree"), ("no_unscale", "without unscale_")],
)
def test_gradscaler_recipes_that_would_diverge_are_refused_everywhere(ranks, case, needle):
    """ShardedGradScaler checks inf across ranks only in unscale_, and a plain GradScaler never
    does, so the ranks' loss scales could diverge (then FSDP reduces gradients scaled
    differently). Refused on every rank, with the recipe; nothing written; no stale grad_scale /
    found_inf left for the next step (which would unscale twice)."""
    res = [x[case] for x in results_of(ranks, "scaler_misuse")]
    for r, x in enumerate(res):
        assert x["raised"] == "ValueError" and needle in x["message"], (r, x)
        assert "ShardedGradScaler" in x["message"] and "unscale_" in x["message"], x
        assert x["params_unchanged"] and not x["stale"], (r, x)


def test_sharded_step_and_load_are_transactions_on_every_rank(ranks):
    """ShardedLARS's step and load are transactions, across processes: each refusal below leaves
    every rank as it was (parameters, gradients, momentum, groups), and the optimizer then equals
    a twin that never saw them."""
    res = results_of(ranks, "transactions")
    last = len(res) - 1
    for r, x in enumerate(res):
        what = f"rank {r}"
        # the inner step raised on every rank: each raises it, LARS's gradient rewrite undone
        assert x["inner_all"]["raised"] == "RuntimeError", (what, x["inner_all"])
        # a re-pointed buffer on the last rank: it names the parameter, the others skip
        if r == last:
            assert x["buffer"]["raised"] == "ValueError", (what, x["buffer"])
            assert "fc1.weight" in x["buffer"]["message"], x["buffer"]
        else:
            assert x["buffer"]["raised"] is None and x["buffer"]["found_inf"], (what, x["buffer"])
        assert x["nan_momentum"]["raised"] == "ValueError", (what, x["nan_momentum"])
        assert "momentum" in x["nan_momentum"]["message"], x["nan_momentum"]
        if r == 0:
            assert x["neg_momentum"]["raised"] == "ValueError", x["neg_momentum"]
            assert "momentum" in x["neg_momentum"]["message"], x["neg_momentum"]
        else:
            assert x["neg_momentum"]["found_inf"], (what, x["neg_momentum"])
        # a checkpoint that does not fit one rank: the same error on every rank
        for case, bad in (("load_shape", last), ("load_nan", 0)):
            y = x[case]
            assert y["raised"] == "ValueError", (what, case, y)
            assert y["message"] == res[0][case]["message"], (what, case, y)
            assert y["message"].startswith(f"ShardedLARS: rank {bad}: "), y["message"]
        for case in ("inner_all", "buffer", "nan_momentum", "neg_momentum", "load_shape",
                     "load_nan"):  # fmt: skip
            assert x[case]["unchanged"], f"{what}: {case} changed something"
        assert x["twin_equal"], f"{what}: differs from the twin after the refusals"
        # the inner step raised on the last rank only, after the collective: that rank is as it
        # was and says so; the others stepped (documented in ShardedLARS.step)
        y = x["inner_one"]
        if r == last:
            assert y["raised"] == "RuntimeError" and y["unchanged"], (what, y)
        else:
            assert y["raised"] is None and not y["found_inf"] and not y["unchanged"], (what, y)


def test_after_a_refused_change_the_next_step_is_one_collective(ranks):
    for r, x in enumerate(results_of(ranks, "local_failures")):
        found, counts = x["next"]
        assert not found
        assert_one_collective([counts], len(SHAPES), f"rank {r}, step after refused changes")


def test_changed_parameters_are_refused_until_verified(ranks):
    for r, res in enumerate(results_of(ranks, "layouts")):
        x = res["changed"]
        assert x["raised"] == "ValueError" and "verify_layout" in x["message"], f"rank {r}: {x}"
        found, counts, moved = x["after_verify"]
        assert not found and moved
        assert_one_collective([counts], len(SHAPES), f"rank {r}, after verify_layout")


def test_dtensor_parameters_equal_the_unsharded_run(ranks):
    res = results_of(ranks, "dtensor")
    want = reference_run("a", steps=3, skip=(1,), sched=False)
    for r, x in enumerate(res):
        assert x["found_inf"] == [False, True, False], f"rank {r}: inf in a replica not seen"
        assert_one_collective(x["counts"], len(SHAPES), f"rank {r}, dtensor")
        for n, (w, _) in want.items():
            assert_close(x["params"][n], w, f"rank {r}, {n}")


def test_fsdp2_fully_shard_equals_single_process(ranks):
    """Skipped where torch cannot run FSDP2 on CPU, or where gloo sums what FSDP2 asks it to
    average: then the gradient FSDP2 hands to the optimizer must be world_size times the
    one-process gradient, as lars_npu._upstream.fsdp2_gloo_defect says (that is what the skip
    reports)."""
    res = results_of(ranks, "fsdp2", skip=False)
    for r, x in enumerate(res):
        if "grad_scale" in x:
            scale, off = x["grad_scale"]
            assert scale == pytest.approx(len(res), rel=1e-5) and off < 1e-5, (r, scale, off)
    want = reference_net(exclude_bias_and_norm)
    for r, x in enumerate(results_of(ranks, "fsdp2")):
        assert x["types"] == ["DTensor"]
        assert x["opt"] == "LARS[sharded]"  # LARS(...) on DTensor parameters: sharded
        assert_one_collective(x["counts"], len(want), f"rank {r}, fsdp2")
        for n, w in want.items():
            assert_close(x["params"][n], w, f"rank {r}, {n}")


def test_hsdp_two_dimensional_mesh_equals_single_process(ranks):
    want = reference_net()
    for r, x in enumerate(results_of(ranks, "hsdp")):
        assert x["opt"] == "LARS[sharded]" and "Replicate" in x["placements"], x["placements"]
        assert_one_collective(x["counts"], len(want), f"rank {r}, hsdp")
        for n, w in want.items():
            assert_close(x["params"][n], w, f"rank {r}, {n}")


def test_fsdp1_is_refused_until_marked_then_exact(ranks):
    """FSDP1: plain LARS took λ from each rank's slice (weights off by 0.18 after 6 steps); now
    it refuses both modes before any write, naming the recipe, and after ``mark_fsdp1`` the same
    LARS line equals one process with one all-reduce per step."""
    want = reference_net()
    for r, x in enumerate(results_of(ranks, "fsdp1")):
        assert x["flat"]["raised"] == "ValueError", x["flat"]
        assert "FlatParameter" in x["flat"]["message"], x["flat"]
        assert "use_orig_params=True" in x["flat"]["message"], x["flat"]
        assert x["mark_flat"]["raised"] == "ValueError", x["mark_flat"]
        assert x["orig"]["raised"] == "ValueError", x["orig"]
        assert "FSDP1" in x["orig"]["message"] and "mark_fsdp1" in x["orig"]["message"], x
        assert x["marked"] == len(want) and x["opt"] == "LARS[sharded]"
        assert_one_collective(x["counts"], len(want), f"rank {r}, fsdp1")
        for n, w in want.items():
            assert_close(x["params"][n], w, f"rank {r}, {n}")


def test_dcp_recipe_resumes_bit_exactly_and_raw_load_restores_no_state(ranks):
    for r, x in enumerate(results_of(ranks, "dcp")):
        assert x["bit_exact"], f"rank {r}: the resumed run differs"
        assert x["coefficient"] == 0.01  # LARS's hyper-parameters travel in the checkpoint
        assert x["raw_state_entries"] == 0, x  # DCP's behaviour, documented with the recipe


def test_zero_redundancy_optimizer_with_larssgd_inside_is_exact(ranks):
    want = reference_net(exclude_bias_and_norm)
    for r, x in enumerate(results_of(ranks, "zero")):
        assert x["around"]["raised"] == "TypeError", x["around"]
        assert "optimizer_class=lars_npu.LARSSGD" in x["around"]["message"], x["around"]
        for n, w in want.items():
            assert_close(x["params"][n], w, f"rank {r}, {n}")
        assert x["as_class"]["raised"] == "TypeError", x["as_class"]
        assert "unexpected keyword argument" in x["as_class"]["message"], x["as_class"]
        # the ranks that do not own the poisoned parameter skip too (one agreed flag)
        assert x["nan_found"] and x["nan_unchanged"], f"rank {r}: {x}"
    assert sum(x["owns_fc2_bias"] for x in results_of(ranks, "zero")) == 1
    for r, x in enumerate(results_of(ranks, "zero")):
        got, want = x["mask_after_load"]
        assert got == want, f"rank {r}: another rank's filter results after a ZeRO load"
        assert x["factory_agrees"], f"rank {r}: a LARS built by a factory under ZeRO"


# -- in this process: argument checks, and a one-rank group for the non-native paths -------------


def test_sharded_lars_needs_an_initialised_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    p = mark_flat_shard(nn.Parameter(torch.ones(4)), (2, 2))
    with pytest.raises(RuntimeError, match="init_process_group"):
        ShardedLARS(torch.optim.SGD([p], lr=0.1))
    with pytest.raises(RuntimeError, match="init_process_group"):
        flat_shard(torch.ones(4))


def test_mark_flat_shard_checks_its_arguments():
    t = torch.ones(3)
    assert global_shape(t) is None
    assert mark_flat_shard(t, [2, 3]) is t and global_shape(t) == torch.Size([2, 3])
    with pytest.raises(TypeError, match="tensor"):
        mark_flat_shard([1.0], (1,))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="global_shape"):
        mark_flat_shard(t, "23")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="global_shape"):
        mark_flat_shard(t, (2.0, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="global_shape"):
        mark_flat_shard(t, (-1, 3))
    info = ShardInfo("layer.weight", torch.ones(3), torch.Size([2, 3]))
    assert info.shape == (2, 3) and info.ndim == 2 and exclude_bias_and_norm(info)


@pytest.mark.parametrize(
    "backend",
    ["auto", "numpy", "torch", pytest.param("emu", marks=pytest.mark.skipif(
        "emu" not in available_backends(), reason="no AscendC emulation built"))],
)  # fmt: skip
def test_one_rank_equals_lars_on_every_backend(one_rank, backend):
    """World size 1: the flat shard is the whole tensor, so ShardedLARS must follow LARS; the
    numpy/torch backends take the non-native paths (per-tensor SquareSumAll, lars_update), and a
    non-contiguous gradient is staged and written back."""
    for cfg in CONFIGS:
        params = {n: flat_shard(nn.Parameter(init_value(n))) for n in SHAPES}
        opt = ShardedLARS(make_inner(params), backend=backend, **CONFIGS[cfg])
        sch = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
        for step in range(STEPS):
            for n, p in params.items():
                g = grad_value(step, n)
                if g is None:
                    p.grad = None
                    continue
                spread = torch.zeros(2 * g.numel())
                spread[::2] = g.reshape(-1)
                p.grad = spread[::2]  # non-contiguous
            opt.step()
            sch.step()
        for n, (w, m) in reference_run(cfg).items():
            assert_close(params[n].detach().numpy().reshape(w.shape), w, f"{backend} {cfg} {n}")
            got_m = momentum_of(opt, params[n]).numpy().reshape(w.shape)
            assert_close(got_m, m, f"{backend} {cfg} momentum {n}")


@pytest.mark.skipif("emu" not in available_backends(), reason="no AscendC emulation")
def test_one_rank_kernels_take_two_launches_per_step(one_rank, monkeypatch):
    """On the AscendC kernels (emu here, npu on an NPU) the local sums are ONE square-sums launch
    and the rewrite ONE update launch, whatever the number of tensors."""
    from lars_npu._backends import emu as emu_mod

    launches: list[tuple[bool, bool]] = []
    real = emu_mod.EmuBackend._launch

    def counting(self, blob, layout, code, *, run_square_sums, run_update, device):
        launches.append((run_square_sums, run_update))
        return real(self, blob, layout, code, run_square_sums=run_square_sums,
                    run_update=run_update, device=device)  # fmt: skip

    monkeypatch.setattr(emu_mod.EmuBackend, "_launch", counting)
    params = {n: flat_shard(nn.Parameter(init_value(n))) for n in SHAPES}
    opt = ShardedLARS(make_inner(params), backend="emu", lars_filter=exclude_bias_and_norm)
    for step in range(2):
        for n, p in params.items():
            g = grad_value(step, n)
            p.grad = None if g is None else g.reshape(-1).clone()
        opt.step()
    assert launches == [(True, False), (False, True)] * 2
    lam = opt.trust_ratios()  # λ as the update kernel applied it, for every adapted parameter
    assert set(lam) == {"fc1.weight", "fc2.weight", "zero.weight", "tiny"}  # 2-D: adapted
    assert lam["zero.weight"] == 0.0  # zero weights, no guard: λ = 0
    assert all(math.isfinite(v) and v > 0 for n, v in lam.items() if n != "zero.weight")


def test_one_rank_argument_and_step_checks(one_rank):
    params = {n: flat_shard(nn.Parameter(init_value(n))) for n in SHAPES}
    with pytest.raises(TypeError, match="process_group"):
        ShardedLARS(make_inner(params), process_group="world")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lars_filter"):
        ShardedLARS(make_inner(params), lars_filter=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fused=True"):
        ShardedLARS(make_inner(params), fused=True)
    with pytest.raises(TypeError, match="fused"):
        ShardedLARS(make_inner(params), fused="yes")  # type: ignore[arg-type]
    opt = ShardedLARS(make_inner(params))
    assert "ShardedLARS" in repr(opt) and "over 1 ranks" in repr(opt)
    with pytest.raises(TypeError, match="pickled"):
        import copy

        copy.deepcopy(opt)
    # a sparse gradient on an adapted parameter: refused before anything is written
    for p in params.values():
        p.grad = torch.ones_like(p)
    params["fc1.weight"].grad = torch.ones_like(params["fc1.weight"]).to_sparse()
    before = {n: p.detach().clone() for n, p in params.items()}
    with pytest.raises(ValueError, match="sparse"):
        opt.step()
    assert all(torch.equal(before[n], p) for n, p in params.items())
    assert opt.param_groups[0]["lr"] == 0.1
    # add_param_group is verified too
    extra = flat_shard(nn.Parameter(torch.ones(2, 3)))
    opt.add_param_group({"params": [("extra.weight", extra)], "lr": 0.1})
    assert opt._engine.agreement.n == len(SHAPES) + 1
    with pytest.raises(ValueError, match="no recorded global shape"):
        opt.add_param_group({"params": [("x", nn.Parameter(torch.ones(2)))]})
    assert len(opt.param_groups) == 3 and opt._engine.agreement.n == len(SHAPES) + 1


def test_one_rank_empty_first_group_and_no_parameters(one_rank):
    """The step's device comes from the first parameter of ANY group (an empty first group used
    to raise IndexError, also in the error path that sends the NaN all-reduce)."""
    p = flat_shard(nn.Parameter(init_value("fc1.weight")))
    q = nn.Parameter(init_value("fc1.weight"))
    opt = ShardedLARS(
        torch.optim.SGD([{"params": []}, {"params": [p]}], lr=0.1, momentum=0.9),
        lars_filter=exclude_bias_and_norm,
    )
    ref = LARS(torch.optim.SGD([q], lr=0.1, momentum=0.9), lars_filter=exclude_bias_and_norm)
    assert opt._engine.agreement.device == torch.device("cpu") and opt._engine.agreement.n == 1
    for step in range(2):
        g = grad_value(step, "fc1.weight")
        p.grad, q.grad = flat_shard(g), g.clone()
        opt.step()
        ref.step()
    assert_close(p.detach().numpy(), q.detach().reshape(-1).numpy(), "empty first group")
    p.grad = torch.ones_like(p).to_sparse()  # the error path: joins the all-reduce, then raises
    with pytest.raises(ValueError, match="sparse"):
        opt.step()
    # no parameters at all: the buffer (2·0 values) lives on the collective's device
    empty = ShardedLARS(
        torch.optim.SGD([{"params": []}], lr=0.1), lars_filter=exclude_bias_and_norm
    )
    assert empty._engine.agreement.n == 0 and empty._engine.agreement.device == torch.device("cpu")
    empty.step()
    assert not bool(empty.found_inf)


def test_one_rank_zero_agreement_skips_a_step_with_a_nan_sparse_gradient(one_rank):
    """Inside ZeroRedundancyOptimizer the ranks agree on the skip before stepping their shares;
    a sparse gradient's inf/nan counts (an excluded embedding, the documented recipe)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    torch.manual_seed(0)
    emb, fc = nn.Embedding(10, 4, sparse=True), nn.Linear(4, 2)
    opt = ZeroRedundancyOptimizer([*emb.parameters(), *fc.parameters()],
                                  optimizer_class=LARSSGD, lr=0.1, momentum=0.9,
                                  lars_filter="exclude_bias_and_norm")  # fmt: skip
    fc(emb(torch.tensor([1, 2]))).sum().backward()
    g = emb.weight.grad
    emb.weight.grad = torch.sparse_coo_tensor(
        g._indices(), torch.full_like(g._values(), float("nan")), g.shape, check_invariants=True
    )
    before = [t.detach().clone() for t in (emb.weight, fc.weight, fc.bias)]
    with pytest.warns(RuntimeWarning, match="inf/nan"):
        opt.step()
    assert bool(opt.optim.found_inf)
    assert opt.optim._zero_group is not None  # found by the global step pre-hook
    after = (emb.weight, fc.weight, fc.bias)
    assert all(torch.equal(b, t) for b, t in zip(before, after, strict=True))


def test_one_rank_refused_load_and_add_change_nothing(one_rank):
    """The checks before the layout check: a refused checkpoint or group leaves the optimizer
    as it was; a TypeError stays a TypeError; an iterator of parameters is read once."""
    params = {n: flat_shard(nn.Parameter(init_value(n))) for n in SHAPES}
    opt = ShardedLARS(make_inner(params), **CONFIGS["a"])
    for n, p in params.items():
        g = grad_value(0, n)
        p.grad = None if g is None else flat_shard(g)
    opt.step()
    good = copy.deepcopy(opt.state_dict())
    before = _opt_snapshot(opt)
    bad = copy.deepcopy(good)
    bad["lars"]["coefficient"] = -1.0
    bad["param_groups"][0]["lr"] = 0.5
    with pytest.raises(ValueError, match=r"rank 0: .*coefficient"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(good)
    bad["lars"] = 3
    with pytest.raises(TypeError, match=r"'lars'.* must be a dict"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(good)
    bad["param_groups"][1]["params"] = bad["param_groups"][1]["params"][:-1]
    with pytest.raises(ValueError, match=r"param_groups\[1\] has 2 parameters"):
        opt.load_state_dict(bad)
    with pytest.raises(TypeError, match="param_group must be a dict"):
        opt.add_param_group([params["tiny"]])  # type: ignore[arg-type]
    assert _same_snapshot(before, _opt_snapshot(opt))
    # a good checkpoint still loads (the hyper-parameters and lr from the checkpoint)
    good["lars"]["coefficient"] = 0.25
    good["param_groups"][0]["lr"] = 0.5
    opt.load_state_dict(good)
    assert opt.coefficient == 0.25 and opt.param_groups[0]["lr"] == 0.5
    # a group given as an iterator: read once for the checks, all of it added
    extra = [flat_shard(nn.Parameter(torch.ones(2, 3))), flat_shard(nn.Parameter(torch.ones(4)))]
    opt.add_param_group({"params": iter([("extra.a", extra[0]), ("extra.b", extra[1])])})
    added = opt.param_groups[-1]
    assert [a is b for a, b in zip(added["params"], extra, strict=True)] == [True, True]
    assert added["param_names"] == ["extra.a", "extra.b"]
    assert opt._engine.agreement.n == len(SHAPES) + 2


def test_lars_npu_exports_sharded_lars_lazily():
    import lars_npu

    assert lars_npu.ShardedLARS is ShardedLARS
    assert lars_npu.distributed.flat_shard is flat_shard
    with pytest.raises(AttributeError):
        lars_npu.no_such_name  # noqa: B018

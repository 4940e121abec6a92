"""The optimizer side of the fused LARS + momentum-SGD step (``LARS(SGD(...))`` in one call).

``FusedDriver`` turns the optimizer's param groups into one :class:`FusedCall` per step and gives
it to the backend's ``fused_sgd_``.

What is cached, and why that is safe (the invariants, all here):

- The driver caches only WHICH tensors take part: the flat list of parameter objects, their
  names, group index, filter result and whether their group has momentum. It is checked every
  step by identity (the same parameter objects in the same order), the masks' values and the
  groups' momentum on/off; any difference rebuilds it.
- WHERE tensors live is never cached here: every step reads each parameter's gradient and each
  momentum buffer from ``p.grad`` and ``optimizer.state`` afresh, and a call carries tensors only
  (no pointers).
- A backend may cache a work plan in ``FusedCall.cache`` (the CPU backend does), but must prove
  each step, before writing, that every tensor still fits it. The CPU backend does this natively
  from DLPack capsules and storages made that step (``_C.FusedPlan.step``: shape, strides,
  dtype, device, writability, and the bytes it touches inside the tensor's storage) and raises
  :class:`LayoutMismatch` otherwise; the driver then runs the named checks and the staged path.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import torch

from ._backends.base import Backend, Hyper, LayoutMismatch, MultiResult
from ._engines import is_dtensor, refusal, shard_kind
from ._sharing import check_disjoint
from .functional import FP32_MAX, SUPPORTED_DTYPES, check_pair, sparse_values, to_float

_GRAD = operator.attrgetter("grad")

FUSED_REQUIREMENTS = (
    "plain torch.optim.SGD (not a subclass) with dampening=0, maximize=False, "
    "differentiable=False in every group (momentum >= 0 and nesterov are fine)"
)


def unsupported_reason(optimizer: torch.optim.Optimizer) -> str | None:
    """Why the fused step cannot stand in for ``optimizer.step()`` (None when it can)."""
    if type(optimizer) is not torch.optim.SGD:
        return f"the inner optimizer is {type(optimizer).__name__}"
    for i, g in enumerate(optimizer.param_groups):
        if g.get("dampening", 0) != 0:
            return f"param_groups[{i}] has dampening={g['dampening']}"
        if g.get("maximize", False):
            return f"param_groups[{i}] has maximize=True"
        if g.get("differentiable", False):
            return f"param_groups[{i}] has differentiable=True"
    return None


@dataclass
class FusedCall:
    """One fused step for a backend. Lists are aligned; ``bufs[i]`` is None without momentum."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    bufs: list[torch.Tensor | None]
    first: np.ndarray  # uint8: the buffer is new this step (m = g')
    adapt: np.ndarray  # uint8: the filter's result
    has_m: np.ndarray  # uint8: the group's momentum != 0
    wd: np.ndarray  # float64 (0 where not adapted)
    lr: np.ndarray
    mu: np.ndarray
    nesterov: np.ndarray  # uint8
    hyper: Hyper
    cache: dict[str, Any]  # the backend's own (e.g. a work plan), kept while the structure is
    # the same; whatever it holds, the backend re-proves against the tensors every step
    checked: bool = False  # every tensor passed the driver's named checks (else a backend that
    # verifies natively may take its zero-copy path, raising LayoutMismatch on any misfit)
    # fp16/bf16 gradients of fp32 parameters: the kernel supports them, but the optimizer keeps
    # torch's rule (gradient dtype == parameter dtype, on both paths); direct callers opt in
    mixed_grad_dtypes: bool = False


@dataclass
class _Structure:
    """Which tensors take part, checked by identity every step (see the module docstring)."""

    params: list[torch.Tensor]
    names: list[str]
    group_of: np.ndarray
    adapt: np.ndarray
    has_m: np.ndarray
    masks: list[list[bool]]  # copies, to notice in-place edits
    momentum_on: list[bool]  # per group: momentum != 0
    subsets: dict[tuple[int, ...], _Structure] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)


class SparseGradientError(ValueError):
    """A sparse gradient reached the fused step (the inner SGD handles those: use the unfused
    path)."""


class MixedDevicesError(ValueError):
    """Parameters on several devices reached the fused step (the unfused path handles them)."""


def _momentum_on(opt: Any) -> list[bool]:
    return [g.get("momentum", 0) != 0 for g in opt.param_groups]


class FusedDriver:
    """Builds and runs the fused step for one LARS optimizer.

    ``stats`` counts steps by how they ran: ``zero_copy`` (the backend's own verified fast
    path), ``checked`` (named checks, then the general path) and ``rebuilds`` of the structure.
    """

    def __init__(self) -> None:
        self._s: _Structure | None = None
        self.stats = {"zero_copy": 0, "checked": 0, "rebuilds": 0}

    def invalidate(self) -> None:
        """Forget cached structure (after load_state_dict, new groups...)."""
        self._s = None

    def _build(self, opt: Any, masks: list[list[bool]]) -> _Structure:
        params: list[torch.Tensor] = []
        names: list[str] = []
        group_of: list[int] = []
        adapt: list[bool] = []
        has_m: list[bool] = []
        for gi, g in enumerate(opt.param_groups):
            pn = g.get("param_names")
            mom = g.get("momentum", 0) != 0
            for j, p in enumerate(g["params"]):
                name = pn[j] if pn else f"param_groups[{gi}][{j}]"
                refuse_shard(p, name)  # the structure is reused only for these same objects
                params.append(p)
                names.append(name)
                group_of.append(gi)
                adapt.append(bool(masks[gi][j]))
                has_m.append(mom)
        self.stats["rebuilds"] += 1
        return _Structure(
            params=params,
            names=names,
            group_of=np.asarray(group_of, dtype=np.int64),
            adapt=np.asarray(adapt, dtype=np.uint8),
            has_m=np.asarray(has_m, dtype=np.uint8),
            masks=[list(m) for m in masks],
            momentum_on=_momentum_on(opt),
        )

    @staticmethod
    def _current(opt: Any, s: _Structure, masks: list[list[bool]]) -> bool:
        """The same parameter objects in the same order (also after in-place edits of a group's
        list), the same filter results and the same groups with momentum."""
        if masks != s.masks or _momentum_on(opt) != s.momentum_on:
            return False
        flat = [p for g in opt.param_groups for p in g["params"]]
        return len(flat) == len(s.params) and all(map(operator.is_, flat, s.params))

    def _subset(self, s: _Structure, idx: tuple[int, ...]) -> _Structure:
        sub = s.subsets.get(idx)
        if sub is None:
            ii = np.asarray(idx, dtype=np.int64)
            sub = _Structure(
                params=[s.params[i] for i in idx],
                names=[s.names[i] for i in idx],
                group_of=s.group_of[ii],
                adapt=s.adapt[ii],
                has_m=s.has_m[ii],
                masks=s.masks,
                momentum_on=s.momentum_on,
            )
            s.subsets[idx] = sub
        return sub

    def step(
        self,
        opt: Any,
        backend: Backend,
        hyper: Hyper,
        wds: list[float],
        masks: list[list[bool]],
    ) -> tuple[MultiResult, list[str], np.ndarray]:
        """Validate and run one fused step. Writes parameters and momentum buffers (and the
        optimizer state, for new buffers) only when the backend reports success."""
        s = self._s
        if s is None or not self._current(opt, s, masks):
            s = self._s = self._build(opt, masks)
        grads = list(map(_GRAD, s.params))
        if any(map(operator.is_, grads, repeat(None))):
            idx = tuple(i for i, g in enumerate(grads) if g is not None)
            grads = [grads[i] for i in idx]
            sub = self._subset(s, idx)
        else:
            sub = s
        n = len(grads)

        groups = opt.param_groups
        lr_g = np.empty(len(groups))
        mu_g = np.empty(len(groups))
        nest_g = np.empty(len(groups), dtype=np.uint8)
        for gi, g in enumerate(groups):
            lr_g[gi] = to_float(g["lr"], f"param_groups[{gi}]['lr']", minimum=0.0, maximum=FP32_MAX)
            mu_g[gi] = to_float(
                g.get("momentum", 0.0), f"param_groups[{gi}]['momentum']", minimum=0.0
            )
            nest_g[gi] = bool(g.get("nesterov", False))
        wd_g = np.asarray(wds, dtype=np.float64)

        # momentum buffers: read from the state afresh every step, never cached
        state = opt.state
        get = state.get
        bufs: list[Any] = [
            ((st.get("momentum_buffer") if (st := get(p)) is not None else None) if m else None)
            for p, m in zip(sub.params, sub.has_m.tolist(), strict=True)
        ]
        first = np.zeros(n, dtype=np.uint8)
        new_bufs: list[int] = []
        for i in np.flatnonzero(sub.has_m).tolist():
            if bufs[i] is None:
                bufs[i] = torch.zeros_like(sub.params[i], memory_format=torch.contiguous_format)
                first[i] = 1
                new_bufs.append(i)

        gidx = sub.group_of
        call = FusedCall(
            params=sub.params,
            grads=grads,
            bufs=bufs,
            first=first,
            adapt=sub.adapt,
            has_m=sub.has_m,
            wd=np.where(sub.adapt != 0, wd_g[gidx], 0.0),
            lr=lr_g[gidx],
            mu=mu_g[gidx],
            nesterov=nest_g[gidx],
            hyper=hyper,
            cache=sub.cache,
        )
        if n == 0:  # no parameter has a gradient: nothing to do, as in torch SGD
            empty = torch.zeros(0, dtype=torch.float64)
            return MultiResult(torch.tensor(False), empty), [], sub.adapt
        result = None
        if getattr(backend, "verifies_layout", False):
            try:
                result = backend.fused_sgd_(call)
                self.stats["zero_copy"] += 1
            except LayoutMismatch:
                result = None
        if result is None:
            self.precise_checks(sub.params, grads, bufs, sub.names)
            call.checked = True
            result = backend.fused_sgd_(call)
            self.stats["checked"] += 1
        # New momentum buffers join the state when the step ran. On an accelerator the host
        # does not wait to find out: they join anyway, as zeros when the kernels skipped the
        # step, which the next step's m = μ·0 + g' makes the same as a first step (dampening 0).
        flag = result.found_inf
        if new_bufs and (flag.device.type != "cpu" or not bool(flag)):
            for i in new_bufs:
                state[sub.params[i]]["momentum_buffer"] = bufs[i]
        return result, sub.names, sub.adapt

    @staticmethod
    def precise_checks(
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        bufs: list[Any],
        names: list[str],
    ) -> None:
        """Every check the fused step needs, each error naming the parameter."""
        if any(g.layout != torch.strided for g in grads):
            raise SparseGradientError("a parameter has a sparse gradient")
        devices = set()
        for p, g, b, name in zip(params, grads, bufs, names, strict=True):
            refuse_shard(p, name)
            check_pair(p, g, f"parameter {name!r}", f"gradient of parameter {name!r}")
            check_written(p, f"parameter {name!r}")
            check_storage(g, f"gradient of parameter {name!r}")
            if b is not None:
                check_buffer(p, b, name)
            devices.add(p.device)
        if len(devices) > 1:
            raise MixedDevicesError(
                "the fused step needs every parameter on one device; "
                "use LARS(..., fused=False) for a model split across devices"
            )
        # the fused step writes parameters and buffers and reads gradients
        check_disjoint(
            [
                ("parameter {}", params, True),
                ("gradient of parameter {}", grads, False),
                ("momentum_buffer of parameter {}", bufs, True),
            ],
            names,
        )


def refuse_shard(p: torch.Tensor, name: str) -> None:
    """Plain LARS never takes a norm from a shard (``lars_npu._engines``)."""
    kind = shard_kind(p)
    if kind is not None:
        raise ValueError(f"LARS: {refusal(kind, name)}")


def check_storage(t: torch.Tensor, label: str) -> None:
    """The elements ``t`` addresses lie inside its storage (a storage resized under a tensor,
    e.g. freed by ``untyped_storage().resize_(0)``, is refused)."""
    n = t.numel()
    if n == 0:
        return
    if t.data_ptr() == 0:
        raise ValueError(
            f"{label} has no memory (a meta tensor or a ZeroTensor); LARS needs real values"
        )
    if t.is_contiguous():  # the common case, without a Python loop over dimensions
        need = (t.storage_offset() + n) * t.element_size()
        if t.untyped_storage().nbytes() >= need:
            return
    stride = t.stride()
    last = t.storage_offset() + sum((d - 1) * st for d, st in zip(t.shape, stride, strict=True))
    need = (last + 1) * t.element_size()
    if min(stride, default=0) < 0 or t.untyped_storage().nbytes() < need:
        raise ValueError(
            f"{label}: its storage holds {t.untyped_storage().nbytes()} bytes, fewer than the "
            f"{need} its shape {tuple(t.shape)} addresses (storage freed or resized?)"
        )


def check_written(t: torch.Tensor, label: str) -> None:
    """A tensor LARS writes in place: inside its storage, no element stored twice, and not an
    inference tensor (those cannot be written in place outside torch.inference_mode())."""
    check_storage(t, label)
    if t.is_inference():
        raise ValueError(
            f"{label} is an inference tensor (made under torch.inference_mode()); it cannot be "
            "written in place outside inference mode: clone it outside"
        )
    if torch._debug_has_internal_overlap(t) == 1:
        raise ValueError(
            f"{label} has overlapping elements (e.g. from expand()); it cannot be written in place"
        )


def check_buffer(p: torch.Tensor, b: Any, name: str) -> None:
    """A momentum buffer that can belong to parameter ``p``."""
    if not isinstance(b, torch.Tensor):
        raise TypeError(
            f"momentum_buffer of parameter {name!r} must be a tensor, got {type(b).__name__}"
        )
    if b.shape != p.shape:
        raise ValueError(
            f"momentum_buffer of parameter {name!r} has shape {tuple(b.shape)}, the "
            f"parameter {tuple(p.shape)}"
        )
    if b.device != p.device:
        raise ValueError(f"momentum_buffer of parameter {name!r} is on {b.device}")
    if b.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"momentum_buffer of parameter {name!r} has dtype {b.dtype}; supported: float32, "
            "float16, bfloat16, float64"
        )
    if b.layout != torch.strided:  # torch SGD keeps a sparse buffer only for sparse gradients
        raise ValueError(
            f"momentum_buffer of parameter {name!r} is sparse ({b.layout}) but its gradient is "
            "dense (a checkpoint of a model with sparse gradients?): torch's SGD cannot add them"
        )
    check_written(b, f"momentum_buffer of parameter {name!r}")


MOMENTUM = "momentum_buffer"  # torch SGD's state key, the one state entry the fused step uses


def check_state_entry(
    key: str, v: Any, p: torch.Tensor, name: str, *, finite: bool, loaded: bool = False
) -> None:
    """One entry of a parameter's optimizer state, as the inner optimizer will read it: SGD's
    ``momentum_buffer`` is None or a tensor of a supported floating dtype and the parameter's
    shape (0-dim only for a 0-dim parameter); any other tensor of several elements has the
    parameter's shape (one-element ones are counters or scalars, such as ``step``). With
    ``finite`` (checkpoint loads), floating tensors (sparse ones by their values) and Python
    floats must hold no inf/nan, judged in the parameter's dtype, which torch's load casts
    floating state to (all but ``step``). (Per-step paths add the storage checks.)"""
    what = f"{'loaded ' if loaded else ''}state[{key!r}] of parameter {name!r}"
    misfit = "; this checkpoint does not fit the model" if loaded else ""
    if key == MOMENTUM and v is not None:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{what} must be a tensor or None, got {type(v).__name__}{misfit}")
        if v.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"{what} has dtype {v.dtype}; supported: float32, float16, bfloat16, "
                f"float64{misfit}"
            )
    if (
        isinstance(v, torch.Tensor)
        and (key == MOMENTUM or (v.dim() > 0 and v.numel() != 1))
        and v.shape != p.shape
    ):
        raise ValueError(
            f"{what} has shape {tuple(v.shape)}, the parameter {tuple(p.shape)}{misfit}"
        )
    if not finite:
        return
    if isinstance(v, torch.Tensor):
        t = v.to_local() if is_dtensor(v) else v  # this rank's elements: no collective here
        if t.layout != torch.strided:
            t = sparse_values(t)
        if not (t.is_floating_point() or t.is_complex()):
            return
        if key != "step" and p.is_floating_point() and t.is_floating_point():
            t = t.to(p.dtype)  # what the load will hold: finite in fp64 may be inf in fp16
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what} holds inf/nan (in the parameter's dtype, {p.dtype})")
    elif isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{what} is {v}")

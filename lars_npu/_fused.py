"""The optimizer side of the fused LARS + momentum-SGD step (``LARS(SGD(...))`` in one call).

``FusedDriver`` turns the optimizer's param groups into one :class:`FusedCall` per step and gives
it to the backend's ``fused_sgd_``. Everything that depends only on the optimizer's structure
(the flat parameter list, names, filter results, per-parameter group index, momentum buffers and
the backend's work plan) is built once and cached; it is rebuilt when the groups, the filter
results, the state dict or a parameter's storage change. Per step, the Python cost is a few bulk
``map`` calls over the gradients (pointers and the metadata checks that keep the kernel safe).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import torch

from ._backends.base import Backend, Hyper, LayoutMismatch, MultiResult
from .functional import check_pair, to_float

_GRAD = operator.attrgetter("grad")
_DTYPE = operator.attrgetter("dtype")
_IS_CPU = operator.attrgetter("is_cpu")
_DATA_PTR = torch.Tensor.data_ptr
_NUMEL = torch.Tensor.numel
_IS_CONTIGUOUS = torch.Tensor.is_contiguous
# One call per gradient that exposes pointer, shape, strides, dtype and device together.
_TO_DLPACK = getattr(torch._C, "_to_dlpack", None)
_BUF_ITEM = operator.itemgetter("momentum_buffer")

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
    cache: dict[str, Any]  # the backend's, valid while the structure is unchanged
    fast: bool  # every tensor contiguous, on the CPU, gradient dtype == parameter dtype
    w_ptr: list[int] | None = None  # parameter data pointers, when fast
    bufs_version: int = 0  # changes whenever a buffer object changes
    g_caps: list[Any] | None = None  # DLPack capsules of the gradients (checked natively)
    # fp16/bf16 gradients of fp32 parameters: the kernel supports them, but the optimizer keeps
    # torch's rule (gradient dtype == parameter dtype, on both paths); direct callers opt in
    mixed_grad_dtypes: bool = False


@dataclass
class _Structure:
    key: tuple[Any, ...]
    params: list[torch.Tensor]
    names: list[str]
    group_of: np.ndarray
    adapt: np.ndarray
    has_m: np.ndarray
    numel: list[int]
    dtypes: list[torch.dtype]
    w_ptr: list[int]
    params_ok: bool  # all parameters contiguous CPU tensors of a supported dtype
    bufs: list[torch.Tensor | None]
    masks: list[list[bool]] = field(default_factory=list)  # copies, to notice in-place edits
    state_dicts: list[Any] = field(default_factory=list)  # per-parameter state dicts (momentum)
    state_values: list[Any] = field(default_factory=list)  # opt.state's values when built
    present_dicts: list[Any] = field(default_factory=list)  # state dicts holding a buffer
    present_bufs: list[Any] = field(default_factory=list)  # ...and those buffers
    bufs_version: int = 0
    bufs_ok: bool | None = None
    bufs_complete: bool = False
    subsets: dict[tuple[int, ...], _Structure] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)


class SparseGradientError(ValueError):
    """A sparse gradient reached the fused step (the inner SGD handles those: use the unfused
    path)."""


def _structure_key(opt: Any, masks: list[list[bool]]) -> tuple[Any, ...]:
    """O(groups) part of the cache key; the O(parameters) checks are in FusedDriver._current."""
    groups = opt.param_groups
    return (
        id(groups),
        id(opt.state),
        len(opt.state),
        tuple(
            (id(g["params"]), len(g["params"]), id(m), g.get("momentum", 0) != 0)
            for g, m in zip(groups, masks, strict=True)
        ),
    )


class FusedDriver:
    """Builds and runs the fused step for one LARS optimizer."""

    def __init__(self) -> None:
        self._s: _Structure | None = None
        self._version = 0

    def invalidate(self) -> None:
        """Forget cached structure (after load_state_dict, an unfused step, new groups...)."""
        self._s = None

    def _build(self, opt: Any, key: tuple[Any, ...], masks: list[list[bool]]) -> _Structure:
        params: list[torch.Tensor] = []
        names: list[str] = []
        group_of: list[int] = []
        adapt: list[bool] = []
        has_m: list[bool] = []
        for gi, g in enumerate(opt.param_groups):
            pn = g.get("param_names")
            mom = g.get("momentum", 0) != 0
            for j, p in enumerate(g["params"]):
                params.append(p)
                names.append(pn[j] if pn else f"param_groups[{gi}][{j}]")
                group_of.append(gi)
                adapt.append(bool(masks[gi][j]))
                has_m.append(mom)
        state = opt.state
        bufs = [
            (state[p].get("momentum_buffer") if p in state else None) if m else None
            for p, m in zip(params, has_m, strict=True)
        ]
        state_dicts = [
            state[p] if (m and p in state) else None for p, m in zip(params, has_m, strict=True)
        ]
        present = [
            (d, d["momentum_buffer"])
            for d in state_dicts
            if d is not None and "momentum_buffer" in d
        ]
        from .functional import SUPPORTED_DTYPES

        dtypes = list(map(_DTYPE, params))
        params_ok = (
            all(map(_IS_CPU, params))
            and all(map(_IS_CONTIGUOUS, params))
            and all(d in SUPPORTED_DTYPES for d in dtypes)
        )
        self._version += 1
        return _Structure(
            key=key,
            params=params,
            names=names,
            group_of=np.asarray(group_of, dtype=np.int64),
            adapt=np.asarray(adapt, dtype=np.uint8),
            has_m=np.asarray(has_m, dtype=np.uint8),
            numel=list(map(_NUMEL, params)),
            dtypes=dtypes,
            w_ptr=list(map(_DATA_PTR, params)),
            params_ok=params_ok,
            bufs=bufs,
            masks=[list(m) for m in masks],
            state_dicts=state_dicts,
            state_values=list(state.values()),
            present_dicts=[d for d, _ in present],
            present_bufs=[b for _, b in present],
            bufs_version=self._version,
        )

    def _current(self, opt: Any, s: _Structure, masks: list[list[bool]]) -> bool:
        """Whether the cached structure still describes the optimizer: the same parameter
        objects (also after in-place edits of a group's list), filter results, contiguous
        parameters at the same addresses, and the same momentum buffers in the state."""
        flat = [p for g in opt.param_groups for p in g["params"]]
        if len(flat) != len(s.params) or not all(map(operator.is_, flat, s.params)):
            return False
        if masks != s.masks:
            return False
        # a parameter whose storage was swapped (p.data = ...) or made non-contiguous
        if list(map(_DATA_PTR, s.params)) != s.w_ptr or not all(map(_IS_CONTIGUOUS, s.params)):
            return False
        # momentum buffers replaced, dropped or added by the user: state.clear() or a new
        # entry changes len(state) (in the key); state[p] = {...} or
        # state[p]["momentum_buffer"] = t are seen here, without hashing a single tensor
        vals = list(opt.state.values())
        if len(vals) != len(s.state_values) or not all(map(operator.is_, vals, s.state_values)):
            return False
        try:
            return all(map(operator.is_, map(_BUF_ITEM, s.present_dicts), s.present_bufs))
        except KeyError:  # a buffer was deleted
            return False

    def _subset(self, s: _Structure, idx: tuple[int, ...]) -> _Structure:
        sub = s.subsets.get(idx)
        if sub is None:
            ii = np.asarray(idx, dtype=np.int64)
            sub = _Structure(
                key=s.key,
                params=[s.params[i] for i in idx],
                names=[s.names[i] for i in idx],
                group_of=s.group_of[ii],
                adapt=s.adapt[ii],
                has_m=s.has_m[ii],
                numel=[s.numel[i] for i in idx],
                dtypes=[s.dtypes[i] for i in idx],
                w_ptr=[s.w_ptr[i] for i in idx],
                params_ok=s.params_ok,
                bufs=[s.bufs[i] for i in idx],
                bufs_version=s.bufs_version,
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
        key = _structure_key(opt, masks)
        s = self._s
        if s is None or s.key != key or not self._current(opt, s, masks):
            s = self._s = self._build(opt, key, masks)
        grads = list(map(_GRAD, s.params))
        if any(map(operator.is_, grads, repeat(None))):
            idx = tuple(i for i, g in enumerate(grads) if g is not None)
            grads = [grads[i] for i in idx]
            sub = self._subset(s, idx)
        else:
            idx = None
            sub = s
        n = len(grads)

        groups = opt.param_groups
        lr_g = np.empty(len(groups))
        mu_g = np.empty(len(groups))
        nest_g = np.empty(len(groups), dtype=np.uint8)
        for gi, g in enumerate(groups):
            lr_g[gi] = to_float(g["lr"], f"param_groups[{gi}]['lr']", minimum=0.0)
            mu_g[gi] = to_float(
                g.get("momentum", 0.0), f"param_groups[{gi}]['momentum']", minimum=0.0
            )
            nest_g[gi] = bool(g.get("nesterov", False))
        wd_g = np.asarray(wds, dtype=np.float64)

        first = np.zeros(n, dtype=np.uint8)
        bufs = sub.bufs
        new_bufs: list[int] = []
        if not sub.bufs_complete:  # some tensor with momentum has no buffer yet
            bufs = list(bufs)
            for i in np.flatnonzero(sub.has_m).tolist():
                if bufs[i] is None:
                    bufs[i] = torch.zeros_like(sub.params[i], memory_format=torch.contiguous_format)
                    first[i] = 1
                    new_bufs.append(i)
            if not new_bufs:
                sub.bufs_complete = True
        if new_bufs:
            self._version += 1
        if sub.bufs_ok is None or new_bufs:
            sub.bufs_ok = self._check_bufs(sub.params, bufs, sub.names)

        caps = None
        native_fast = backend.name == "cpu" and sub.params_ok
        if native_fast and _TO_DLPACK is not None:
            try:  # the kernel checks every capsule against its plan before writing
                caps = list(map(_TO_DLPACK, grads))
            except (RuntimeError, TypeError, ValueError):
                caps = None
            fast = caps is not None
        else:
            fast = native_fast and self._grads_fast(grads, sub)
        if not fast:
            self._precise_checks(sub, grads, bufs)

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
            fast=fast and sub.bufs_ok,
            w_ptr=sub.w_ptr if fast else None,
            bufs_version=self._version if new_bufs else sub.bufs_version,
            g_caps=caps,
        )
        if n == 0:  # no parameter has a gradient: nothing to do, as in torch SGD
            empty = torch.zeros(0, dtype=torch.float64)
            return MultiResult(torch.tensor(False), empty), [], sub.adapt
        try:
            result = backend.fused_sgd_(call)
        except LayoutMismatch:
            self._precise_checks(sub, grads, bufs)  # raises with the parameter's name, or...
            call.fast, call.g_caps, call.w_ptr = False, None, None  # ...the general path
            result = backend.fused_sgd_(call)
            self._s = None  # sizes or layouts changed under the cache: rebuild next step
        if not bool(result.found_inf) and new_bufs:
            state = opt.state
            for i in new_bufs:
                state[sub.params[i]]["momentum_buffer"] = bufs[i]
            self._s = None  # the state gained entries: rebuild from it on the next step
        return result, sub.names, sub.adapt

    @staticmethod
    def _check_bufs(
        params: list[torch.Tensor], bufs: list[torch.Tensor | None], names: list[str]
    ) -> bool:
        """Raise if a momentum buffer cannot belong to its parameter; True when every buffer is
        a contiguous tensor of the parameter's dtype and device (the fast path's layout)."""
        ok = True
        for p, b, name in zip(params, bufs, names, strict=True):
            if b is None:
                continue
            if b.shape != p.shape:
                raise ValueError(
                    f"momentum_buffer of parameter {name!r} has shape {tuple(b.shape)}, the "
                    f"parameter {tuple(p.shape)}"
                )
            if b.device != p.device:
                raise ValueError(f"momentum_buffer of parameter {name!r} is on {b.device}")
            ok = ok and b.is_contiguous() and b.dtype == p.dtype
        return ok

    @classmethod
    def _precise_checks(
        cls, sub: _Structure, grads: list[torch.Tensor], bufs: list[torch.Tensor | None]
    ) -> None:
        if any(g.layout != torch.strided for g in grads):
            raise SparseGradientError("a parameter has a sparse gradient")
        for p, g, name in zip(sub.params, grads, sub.names, strict=True):
            check_pair(p, g, f"parameter {name!r}", f"gradient of parameter {name!r}")
        cls._check_bufs(sub.params, bufs, sub.names)
        if len({p.device for p in sub.params}) > 1:
            raise ValueError(
                "the fused step needs every parameter on one device; "
                "use LARS(..., fused=False) for a model split across devices"
            )

    @staticmethod
    def _grads_fast(grads: list[torch.Tensor], s: _Structure) -> bool:
        """Bulk checks: same dtype and size as the parameter, on the CPU, dense, contiguous."""
        try:
            return (
                list(map(_DTYPE, grads)) == s.dtypes
                and list(map(_NUMEL, grads)) == s.numel
                and all(map(_IS_CPU, grads))
                and all(map(_IS_CONTIGUOUS, grads))  # raises for sparse gradients
            )
        except (RuntimeError, NotImplementedError):
            return False

"""The optimizer side of the fused LARS + momentum-SGD step (``LARS(SGD(...))`` in one call).

``FusedDriver`` turns the optimizer's param groups into one :class:`FusedCall` per step and gives
it to the backend's ``fused_sgd_``.

What is cached, and why that is safe (the invariants, all here):

- The driver caches only WHICH tensors take part: the flat list of parameter objects, their
  names, group index, filter result and whether their group has momentum. It is checked every
  step by identity (the same parameter objects in the same order), the masks' values and the
  groups' momentum on/off; any difference rebuilds it.
- WHERE tensors live is never cached: every step reads each parameter's gradient and each
  momentum buffer from ``p.grad`` and ``optimizer.state`` afresh, and a call carries tensors only
  (no pointers).
- The CPU backend's operator (``torch.ops.lars_npu.fused_step_``, csrc/ops) checks every tensor it
  is given natively, each step, before it writes anything: shape, strides, dtype, device, storage
  bounds, internal overlap, the negative bit and memory shared between tensors. A refusal comes
  back as a :class:`lars_npu.TensorError` naming the parameter; the driver keeps no per-tensor
  loop of its own for it. Backends that do not check natively get the driver's named checks
  (:meth:`FusedDriver.precise_checks`) first.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any

import numpy as np
import torch

from ._backends.base import Backend, Hyper, MultiResult
from ._checks import check_buffer, check_storage, check_written, refuse_shard
from ._groups import GroupPlan, param_name
from ._ops import TensorError, TensorTypeError, group_table
from ._sharing import check_disjoint
from .functional import check_pair

_GRAD = operator.attrgetter("grad")

FUSED_REQUIREMENTS = (
    "plain torch.optim.SGD (not a subclass) with dampening=0 and maximize=False in every "
    "group (momentum >= 0 and nesterov are fine)"
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
    return None


@dataclass
class FusedCall:
    """One fused step for a backend. Lists are aligned; ``bufs[i]`` is None without momentum."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    bufs: Sequence[torch.Tensor | None]
    first: np.ndarray  # uint8: the buffer is new this step (m = g')
    adapt: np.ndarray  # uint8: the filter's result
    has_m: np.ndarray  # uint8: the group's momentum != 0
    wd: np.ndarray  # float64 (0 where not adapted)
    lr: np.ndarray
    mu: np.ndarray
    nesterov: np.ndarray  # uint8
    hyper: Hyper
    # the operators' form of the per-tensor values: each tensor's group (int64) and the groups'
    # rows (float64 (groups, 4): lr, weight decay, momentum, nesterov); None: one group per tensor
    group: np.ndarray | None = None
    table: torch.Tensor | None = None
    names: Sequence[str] | None = None  # the parameters' names, for errors
    # float64 (2, n): Σw², Σg² per tensor computed elsewhere (the sharded step's all-reduced
    # sums), which λ then comes from; only for backends with ``takes_given_sums``
    given: torch.Tensor | None = None
    checked: bool = False  # every tensor passed the driver's named checks
    # fp16/bf16 gradients of fp32 parameters: the kernel supports them, but the optimizer keeps
    # torch's rule (gradient dtype == parameter dtype, on both paths); direct callers opt in
    mixed_grad_dtypes: bool = False

    def op_groups(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(group, hyper) for the operators."""
        if self.group is not None and self.table is not None:
            return torch.from_numpy(self.group), self.table
        n = len(self.params)
        # one row per tensor; wd is already 0 where not adapted
        table = group_table(self.lr, self.wd, self.mu, self.nesterov)
        return torch.arange(n, dtype=torch.int64), table


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


class SparseGradientError(ValueError):
    """A sparse gradient reached the fused step (the inner SGD handles those: use the unfused
    path)."""


class MixedDevicesError(ValueError):
    """Parameters on several devices reached the fused step (the unfused path handles them)."""


def _momentum_on(opt: Any) -> list[bool]:
    return [g.get("momentum", 0) != 0 for g in opt.param_groups]


_BUFFER = operator.methodcaller("get", "momentum_buffer")
_BUFFER_ITEM = operator.itemgetter("momentum_buffer")


def _buffers(state: Any, params: list[torch.Tensor], has_m: np.ndarray) -> list[Any]:
    """Each parameter's momentum buffer from the optimizer state (None: none yet, or no
    momentum). When the state holds exactly these parameters, in this order (the usual case:
    SGD added them in parameter order), the buffers come from the state's values without a
    lookup per parameter (a tensor's hash is a Python call); the keys are compared by identity,
    every step."""
    if len(state) == len(params) and all(map(operator.is_, state, params)):
        values = state.values()
        try:  # (itemgetter is the cheapest per entry; a state without the key takes .get)
            bufs = list(map(_BUFFER_ITEM, values))
        except (KeyError, TypeError):
            bufs = list(map(_BUFFER, values))
        if has_m.all():
            return bufs
        return [b if m else None for b, m in zip(bufs, has_m.tolist(), strict=True)]
    get = state.get
    return [
        ((st.get("momentum_buffer") if (st := get(p)) is not None else None) if m else None)
        for p, m in zip(params, has_m.tolist(), strict=True)
    ]


def _refuse(exc: TensorError | TensorTypeError) -> None:
    """The operator's refusals that mean "not for the fused step" rather than "bad tensor": the
    optimizer falls back to the unfused path for these (sparse gradients, several devices)."""
    if exc.role == "gradient" and "not a dense tensor" in str(exc):
        raise SparseGradientError("a parameter has a sparse gradient") from None
    if exc.role == "parameter" and " is on " in str(exc):
        raise MixedDevicesError(
            "the fused step needs every parameter on one device; "
            "use LARS(..., fused=False) for a model split across devices"
        ) from None


class FusedDriver:
    """Builds and runs the fused step for one LARS optimizer.

    ``stats`` counts steps by how they ran: ``native`` (the backend's operator checked every
    tensor itself), ``checked`` (the driver's named checks, then the backend) and ``rebuilds`` of
    the structure.
    """

    def __init__(self) -> None:
        self._s: _Structure | None = None
        self.stats = {"native": 0, "checked": 0, "rebuilds": 0}

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
            mom = g.get("momentum", 0) != 0
            for j, p in enumerate(g["params"]):
                name = param_name(g, gi, j)
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
        groups = opt.param_groups
        if sum(len(g["params"]) for g in groups) != len(s.params):
            return False
        flat = chain.from_iterable(g["params"] for g in groups)
        return all(map(operator.is_, flat, s.params))

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
        plans: list[GroupPlan],
    ) -> tuple[MultiResult, list[str], np.ndarray]:
        """Validate and run one fused step (``plans``: the groups', checked). Writes parameters
        and momentum buffers (and the optimizer state, for new buffers) only when the backend
        reports success."""
        masks = [plan.mask for plan in plans]
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

        lr_g = np.asarray([plan.lr for plan in plans], dtype=np.float64)
        mu_g = np.asarray([plan.momentum for plan in plans], dtype=np.float64)
        nest_g = np.asarray([plan.nesterov for plan in plans], dtype=np.uint8)
        wd_g = np.asarray([plan.weight_decay for plan in plans], dtype=np.float64)

        # momentum buffers: read from the state afresh every step, never cached
        state = opt.state
        bufs = _buffers(state, sub.params, sub.has_m)
        first = np.zeros(n, dtype=np.uint8)
        new_bufs: list[int] = []
        missing = any(map(operator.is_, bufs, repeat(None)))  # (C-level: the steady state)
        for i in np.flatnonzero(sub.has_m).tolist() if missing else ():
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
            group=gidx,
            table=group_table(lr_g, wd_g, mu_g, nest_g),
            names=sub.names,
        )
        if n == 0:  # no parameter has a gradient: nothing to do, as in torch SGD
            empty = torch.zeros(0, dtype=torch.float64)
            return MultiResult(torch.tensor(False), empty), [], sub.adapt
        if backend.verifies_layout:  # the backend's operator checks every tensor natively
            try:
                result = backend.fused_sgd_(call)
            except (TensorError, TensorTypeError) as exc:
                _refuse(exc)
                raise
            except (TypeError, RuntimeError):
                # not a per-tensor refusal (e.g. a list entry that is no tensor at all): the
                # named checks say which parameter, else the operator's own error stands
                self.precise_checks(sub.params, grads, bufs, sub.names)
                raise
            self.stats["native"] += 1
        else:
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

"""``lars_npu.LARS``: MindSpore's ``nn.LARS`` as a torch optimizer wrapper (docs/semantics.md).

The class does validation, bookkeeping and the take-over of the inner optimizer's weight decay;
the math runs in one call of :func:`lars_npu.functional.lars_` per step, on the backend the
registry picks.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer

from ._backends import Hyper, MultiResult, get_backend, resolve, warn_reference_fallback
from ._engines import HANDLED, dtensor_type, is_dtensor, refusal, shard_kind
from ._fused import (
    FUSED_REQUIREMENTS,
    MOMENTUM,
    FusedDriver,
    MixedDevicesError,
    SparseGradientError,
    check_buffer,
    check_state_entry,
    check_storage,
    check_written,
    refuse_shard,
    unsupported_reason,
)
from ._sharing import check_disjoint
from .filters import ParamInfo, default_lars_filter, exclude_bias_and_norm
from .functional import (
    FP32_MAX,
    all_finite,
    check_hyper,
    check_pair,
    lars_,
    sparse_members,
    sparse_values,
    to_float,
)


def _migrate_group(group: Any) -> Any:
    """A saved group of an earlier version (decay under ``lars_weight_decay``, inner value 0) in
    today's form: ``weight_decay`` holds the decay, the old key is gone."""
    if not isinstance(group, dict) or WD_KEY not in group:
        return group
    group = dict(group)
    old = group.pop(WD_KEY)
    if not group.get("weight_decay"):
        group["weight_decay"] = old
    return group


def save_grads(
    grads: list[torch.Tensor], adapt: list[bool], scratch: list[torch.Tensor]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(gradient, copy) of every gradient LARS rewrites: what a failed inner step restores. The
    copies live in ``scratch``, allocated once and reused while shapes stay (no per-step
    allocation of gradient-sized buffers)."""
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


def restore_grads(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Put back the gradients :func:`save_grads` copied (a rewrite or inner step raised)."""
    for g, old in saved:
        g.copy_(old)


__all__ = ["LARS", "LARSSGD"]

LarsFilter = Callable[[ParamInfo], bool]
# Filters by name (lars_filter="exclude_bias_and_norm"): what ZeroRedundancyOptimizer stores in
# its param groups must load with torch.load(weights_only=True), so no function there.
FILTERS: dict[str, LarsFilter] = {
    "default": default_lars_filter,
    "exclude_bias_and_norm": exclude_bias_and_norm,
}

# Group keys LARS adds: the filter's result per parameter (and, in checkpoints of earlier
# versions, the weight decay it took over), and its own entry in the state dict.
WD_KEY = "lars_weight_decay"
MASK_KEY = "lars_mask"
STATE_KEY = "lars"
# The hyper-parameters are also written into every saved group, under these keys: checkpointing
# tools that keep only "state" and "param_groups" (torch.distributed.checkpoint's
# get_state_dict / set_state_dict) then carry them too.
HYPER_KEYS = ("epsilon", "coefficient", "use_clip", "guard_zero_norm")
GROUP_HYPER = {k: f"lars_{k}" for k in HYPER_KEYS}


def _refused_family(optimizer: Optimizer) -> str | None:
    for cls in type(optimizer).__mro__:
        if cls in (Optimizer, object):
            continue
        low = cls.__name__.lower()
        if "adam" in low or ("lamb" in low and "lambda" not in low):
            return cls.__name__
    return None


# Optimizers that evaluate the closure several times per step: LARS rescales one gradient per step.
_CLOSURE_REEVALUATING = ("LBFGS",)
# Scale-invariant (or nearly so) updates: λ largely cancels in them.
_SCALE_INVARIANT = ("RMSprop", "Adagrad", "Adadelta", "Rprop", "Adafactor")


def _check_inner_kind(optimizer: Optimizer) -> None:
    names = {cls.__name__ for cls in type(optimizer).__mro__}
    if "ZeroRedundancyOptimizer" in names:
        raise TypeError(
            "LARS can not wrap a ZeroRedundancyOptimizer: it steps only this rank's share of "
            "the parameters through an optimizer of its own. Put LARS inside it instead: "
            "ZeroRedundancyOptimizer(model.parameters(), optimizer_class=lars_npu.LARSSGD, "
            "lr=..., momentum=..., weight_decay=..., lars_filter=lars_npu.exclude_bias_and_norm) "
            "(ZeRO shards whole parameters, so every norm is a full tensor's)"
        )
    for name in _CLOSURE_REEVALUATING:
        if name in names:
            raise TypeError(
                f"LARS can not be used with {name} (optimizer): it re-evaluates the closure "
                "several times per step, while LARS rescales one gradient per step; use "
                "momentum SGD as the inner optimizer"
            )
    for i, g in enumerate(optimizer.param_groups):
        if g.get("differentiable", False):
            raise ValueError(
                f"param_groups[{i}] has differentiable=True: LARS computes the trust ratio "
                "outside autograd, so the step cannot be differentiated; use "
                "differentiable=False"
            )
    for name in _SCALE_INVARIANT:
        if name in names:
            warnings.warn(
                f"LARS around {name}: its update divides by a running scale of the gradient, "
                "so the layer-wise trust ratio λ largely cancels; LARS is meant for momentum "
                "SGD (torch.optim.SGD)",
                UserWarning,
                stacklevel=3,
            )
            return


def _refuse_duplicates(groups: list[dict[str, Any]]) -> None:
    """One Parameter listed twice (``named_parameters(remove_duplicate=False)``; torch's SGD
    only warns) would be stepped twice, differently on each path: refused, naming it."""
    seen: dict[int, tuple[int, int]] = {}
    for gi, group in enumerate(groups):
        names = group.get("param_names")
        for j, p in enumerate(group.get("params", [])):
            first = seen.setdefault(id(p), (gi, j))
            if first != (gi, j):
                name = names[j] if names and j < len(names) else f"param_groups[{gi}][{j}]"
                raise ValueError(
                    f"LARS: parameter {name!r} appears twice in the optimizer (param_groups"
                    f"[{first[0]}][{first[1]}] and param_groups[{gi}][{j}]; e.g. from "
                    "named_parameters(remove_duplicate=False)): it would be updated twice per "
                    "step. List each parameter once"
                )


@dataclass
class StepInputs:
    """What :meth:`LARS._gather` collects for a step (one entry per parameter with a dense
    gradient, in group order; ``slots``: its index among all parameters)."""

    plans: list[tuple[float, list[bool]]] = field(default_factory=list)
    params: list[torch.Tensor] = field(default_factory=list)
    weights: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)
    adapt: list[bool] = field(default_factory=list)
    wds: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    # (parameter, sparse gradient, name) of excluded parameters with a sparse gradient
    sparse: list[tuple[torch.Tensor, torch.Tensor, str]] = field(default_factory=list)

    def sparse_finite(self) -> bool:
        """No sparse gradient holds inf/nan."""
        return all_finite([sparse_values(g) for _, g, _ in self.sparse])


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


class _Skipped:
    """The result of a step every rank agreed to skip (what ``_finish`` reads)."""

    def __init__(self, found_inf: torch.Tensor, trust_ratio: torch.Tensor) -> None:
        self.found_inf = found_inf
        self.trust_ratio = trust_ratio


def _shapes_text(shapes: list[torch.Size]) -> str:
    shown = ", ".join(str(tuple(x)) for x in shapes[:4])
    more = f", ... ({len(shapes)} tensors)" if len(shapes) > 4 else ""
    return f"shapes [{shown}{more}]"


def _has_handled_shards(optimizer: Optimizer) -> bool:
    return any(
        shard_kind(p) in HANDLED
        for g in optimizer.param_groups
        for p in g.get("params", [])
        if isinstance(p, torch.Tensor)
    )


class LARS(Optimizer):
    """Layer-wise adaptive rate scaling around any torch optimizer (MindSpore ``nn.LARS``).

    Per parameter the filter adapts, the gradient becomes ``g' = λ·(g + wd·w)`` with
    ``λ = coefficient·‖w‖ / (‖g‖ + wd·‖w‖ + epsilon)`` (clipped to ``[0, 1]`` after dividing by
    the group's lr when ``use_clip``), then the inner optimizer steps; parameters the filter
    excludes get neither LARS nor decay.

    Weight decay, one rule: each group's ``weight_decay`` is the only source of truth. LARS reads
    it at every step (so a schedule that changes it, to 0 and back, takes effect) and applies it
    inside ``λ·(g + wd·w)``; the inner optimizer sees ``weight_decay = 0`` only while LARS steps
    it, and the value is put back right after, so decay is never applied twice. (Checkpoints of
    earlier versions, which kept it as ``lars_weight_decay`` with the inner value 0, load as the
    value they held.)

    A step is a transaction: every check (hyper-parameters, gradients, the inner optimizer's
    settings and state) runs before the first write; a non-finite gradient skips the whole step;
    and if the inner optimizer's step raises, each rewritten ``p.grad`` is put back exactly.

    Args:
        optimizer: the inner optimizer (momentum SGD is the intended partner). Adam/LAMB-family
            optimizers are refused: their update is invariant to the gradient's scale, so λ
            would cancel.
        epsilon: ε > 0 in the denominator of λ.
        coefficient: θ > 0, the trust coefficient.
        use_clip: clip λ/lr to [0, 1] (at lr = 0, its limit: 1 if λ > 0 else 0).
        lars_filter: ``f(ParamInfo) -> bool``; True adapts the parameter. Default: MindSpore's
            (no ``"LayerNorm"``, no ``"bias"`` in the name); see :func:`exclude_bias_and_norm`.
            Also by name: ``"default"`` or ``"exclude_bias_and_norm"`` (what optimizer
            factories that store their kwargs in checkpoints, like ZeroRedundancyOptimizer,
            should get).
        guard_zero_norm: λ = 1 (before clipping) for a tensor whose ‖w‖ or ‖g‖ is 0.
        backend: ``"auto"`` (``LARS_NPU_BACKEND`` if set, else by device) or a backend name.
        fused: ``None`` (default) runs LARS + momentum + weight update as one backend call when
            the inner optimizer is a plain ``torch.optim.SGD`` (dampening 0, maximize False),
            writing SGD's own ``momentum_buffer`` state; ``True`` requires that; ``False`` always
            rewrites the gradients and calls ``optimizer.step()``. On the fused path ``p.grad``
            keeps the raw gradient; on the unfused path it holds g' after the step.

    After each step, ``found_inf`` is a 0-dim bool tensor: True when a gradient held inf/nan and
    the step was skipped (nothing written).
    """

    # Whether this class takes sharded parameters (DTensor, marked flat shards): ShardedLARS.
    _takes_shards = False

    def __new__(cls, *args: Any, **kwargs: Any) -> LARS:
        """``LARS(inner)`` whose parameters are shards (DTensor, e.g. FSDP2 ``fully_shard``; flat
        shards marked with their global shape) is a :class:`lars_npu.distributed.ShardedLARS`:
        the same line works on one device and on sharded parameters."""
        inner = args[0] if args else kwargs.get("optimizer")
        unexpected = [k for k in ("lr", "params") if k in kwargs]
        if not issubclass(cls, LARSSGD) and unexpected and isinstance(inner, Optimizer):
            raise TypeError(
                f"{cls.__name__}() got an unexpected keyword argument {unexpected[0]!r}: the "
                "inner optimizer holds the parameters and their lr (torch.optim.SGD(params, "
                f"lr=...)); {cls.__name__}'s own arguments are epsilon, coefficient, use_clip, "
                "lars_filter, guard_zero_norm, backend and fused"
            )
        if not issubclass(cls, LARSSGD) and unexpected:
            raise TypeError(
                f"{cls.__name__} wraps an optimizer instance: LARS(torch.optim.SGD(params, "
                "lr=...)). To build it from parameters and keyword arguments (e.g. "
                "ZeroRedundancyOptimizer(params, optimizer_class=...), optimizer factories), "
                "use lars_npu.LARSSGD"
            )
        if cls is LARS and isinstance(inner, Optimizer) and _has_handled_shards(inner):
            from .distributed import ShardedLARS

            return super().__new__(ShardedLARS)
        return super().__new__(cls)

    def __init__(
        self,
        optimizer: Optimizer,
        epsilon: float = 1e-5,
        coefficient: float = 0.001,
        use_clip: bool = False,
        lars_filter: LarsFilter | str = default_lars_filter,
        *,
        guard_zero_norm: bool = False,
        backend: str = "auto",
        fused: bool | None = None,
    ) -> None:
        if isinstance(optimizer, LARS):
            raise TypeError("optimizer is already a LARS; wrap the inner optimizer once")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        refused = _refused_family(optimizer)
        if refused is not None:
            raise TypeError(
                f"LARS can not be used with {refused} (optimizer): Adam/LAMB-family updates are "
                "invariant to the gradient's scale, so the layer-wise trust ratio would cancel; "
                "use momentum SGD as the inner optimizer"
            )
        _check_inner_kind(optimizer)
        _refuse_duplicates(optimizer.param_groups)
        for gi, group in enumerate(optimizer.param_groups):
            self._refuse_shards(gi, group)
        self._hyper = check_hyper(epsilon, coefficient, use_clip, guard_zero_norm)
        if isinstance(lars_filter, str):  # by name: keeps functions out of checkpoints (ZeRO's)
            if lars_filter not in FILTERS:
                raise ValueError(
                    f"lars_filter {lars_filter!r} is not a known filter name; known: "
                    f"{sorted(FILTERS)} (or pass a callable)"
                )
            lars_filter = FILTERS[lars_filter]
        if not callable(lars_filter):
            raise TypeError(
                "lars_filter must be callable (ParamInfo -> bool) or a filter name, got "
                f"{type(lars_filter).__name__}"
            )
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        if backend != "auto":
            get_backend(backend)  # unknown or unavailable: a clear error now, not at step time
        if fused is not None and not isinstance(fused, bool):
            raise TypeError(f"fused must be None, True or False, got {type(fused).__name__}")
        if fused:
            why = unsupported_reason(optimizer)
            if why is not None:
                raise ValueError(f"fused=True needs {FUSED_REQUIREMENTS}, but {why}")
        self.fused = fused
        self._driver = FusedDriver()
        self._undo: list[torch.Tensor] = []  # the unfused step's copies of rewritten gradients
        self.optimizer = optimizer
        self.lars_filter = lars_filter
        self.backend = backend
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        self._warned_names = False
        self._warned_inf = False
        self._found_inf = torch.tensor(False)
        self._found_unread = False  # a device-side found_inf not read on the host yet
        self._given_found_inf: torch.Tensor | None = None  # set by GradScaler (sharded steps)
        # ZeroRedundancyOptimizer(optimizer_class=LARSSGD): the group over which every rank's
        # local optimizer must agree to skip a step (LARSSGD finds it; see _skip_agreed)
        self._agree_group: Any = None
        self._last_lam: torch.Tensor | None = None
        self._last_names: list[str] = []
        self._last_adapt: Any = []
        self._members: dict[int, tuple[dict[str, Any], list[torch.Tensor], list[torch.Size]]] = {}
        self._masks: dict[int, tuple[dict[str, Any], list[bool]]] = {}  # the masks LARS committed
        plans = [self._plan_group(i, g) for i, g in enumerate(self.param_groups)]
        for group, plan in zip(self.param_groups, plans, strict=True):
            self._commit_group(group, plan)
        if backend == "auto" and any(
            p.device.type == "cpu" for g in self.param_groups for p in g["params"]
        ):
            warn_reference_fallback()  # said here, once, not only at the first step
        self._agree_group = _zero_process_group()

    # -- found_inf: LARS's record of the last step; GradScaler may set it before a step --
    @property
    def found_inf(self) -> torch.Tensor:
        """0-dim bool tensor: True when the last step was skipped because a gradient held
        inf/nan (nothing was written). After a fused step on an NPU it is the kernels' own flag,
        on the device; reading it here is the first time the host looks at it."""
        if self._found_unread:
            self._found_unread = False
            if bool(self._found_inf):
                self._warn_skipped(stacklevel=3)
        return self._found_inf

    def _warn_skipped(self, stacklevel: int) -> None:
        if not self._warned_inf:
            self._warned_inf = True
            warnings.warn(
                "LARS: a gradient holds inf/nan; the step was skipped (weights, gradients and "
                "optimizer state untouched). opt.found_inf records it on every step.",
                RuntimeWarning,
                stacklevel=stacklevel,
            )

    @found_inf.setter
    def found_inf(self, value: torch.Tensor) -> None:
        # GradScaler's protocol for optimizers with _step_supports_amp_scaling: it sets
        # found_inf (and grad_scale) before step() and deletes them after. Kept apart from the
        # record above, which stays readable after the step.
        self._given_found_inf = value

    @found_inf.deleter
    def found_inf(self) -> None:
        self._given_found_inf = None

    # -- shared with the inner optimizer --
    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    @property
    def epsilon(self) -> float:
        return self._hyper.epsilon

    @property
    def coefficient(self) -> float:
        return self._hyper.coefficient

    @property
    def use_clip(self) -> bool:
        return self._hyper.use_clip

    @property
    def guard_zero_norm(self) -> bool:
        return self._hyper.guard_zero_norm

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_driver", None)  # native caches are rebuilt, never pickled
        state.pop("_undo", None)
        state.pop("_members", None)  # identities: meaningless in a copy; re-recorded on commit
        state.pop("_masks", None)
        state.pop("_agree_group", None)  # a process group: not picklable, and not the copy's
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "found_inf" in state:  # pickled by an earlier version
            state["_found_inf"] = state.pop("found_inf")
        state.setdefault("_given_found_inf", None)
        state.setdefault("_found_unread", False)
        state.setdefault("_agree_group", None)
        self.__dict__.update(state)
        self._driver = FusedDriver()
        self._undo = []
        self._members = {}
        self._masks = {}
        self._patch_step_function()

    def __repr__(self) -> str:
        h = self._hyper
        return (
            f"LARS(epsilon={h.epsilon}, coefficient={h.coefficient}, use_clip={h.use_clip}, "
            f"guard_zero_norm={h.guard_zero_norm}, backend={self.backend!r}, fused={self.fused}, "
            f"lars_filter={getattr(self.lars_filter, '__name__', repr(self.lars_filter))})\n"
            f"wrapping {self.optimizer!r}"
        )

    # -- weight-decay take-over and the filter --
    def _plan_group(self, index: int, group: dict[str, Any]) -> tuple[float, list[bool]]:
        """(weight decay LARS applies, filter result per parameter) for a group, read-only.

        The group's ``lars_mask`` is used when LARS put it there (a commit, or a checkpoint LARS
        loaded; in-place edits of it are followed); one that arrived another way (e.g.
        ZeroRedundancyOptimizer copies every group key between the ranks' optimizers, masks
        included, when it loads a checkpoint) is not trusted: the filter runs again."""
        self._check_members(index, group)
        committed = self._masks.get(id(group))
        foreign = (
            committed is not None
            and committed[0] is group
            and group.get(MASK_KEY) is not committed[1]
        )
        self._check_saved_group(index, group, check_mask=not foreign)
        wd = to_float(
            group.get("weight_decay", 0.0),
            f"param_groups[{index}]['weight_decay']",
            minimum=0.0,
            maximum=FP32_MAX,
        )
        params = group["params"]
        mask = None if foreign else group.get(MASK_KEY)
        if not isinstance(mask, list) or len(mask) != len(params):
            names = group.get("param_names")
            needs_names = self.lars_filter is not exclude_bias_and_norm
            if names is None and needs_names and not self._warned_names:
                self._warned_names = True
                warnings.warn(
                    "LARS: the inner optimizer has no parameter names, so lars_filter sees '' "
                    "for every parameter and the default filter adapts all of them (biases and "
                    "norm weights included). Build the inner optimizer from "
                    "model.named_parameters(), or pass lars_filter=lars_npu.exclude_bias_and_norm "
                    "(needs no names).",
                    UserWarning,
                    stacklevel=4,
                )
            mask = []
            for j, p in enumerate(params):
                keep = self.lars_filter(self._param_info(names[j] if names else "", p))
                mask.append(bool(keep))
        return wd, mask

    def _param_info(self, name: str, param: torch.Tensor) -> ParamInfo:
        """What ``lars_filter`` sees of a parameter (a hook: :mod:`lars_npu.distributed` shows
        the global shape of a flat shard)."""
        return ParamInfo(name, param)

    @staticmethod
    def _check_saved_group(index: int, group: dict[str, Any], check_mask: bool = True) -> None:
        """Checks that need no tensors (shared by steps and load_state_dict)."""
        if group.get("maximize", False):
            raise ValueError(
                f"param_groups[{index}] has maximize=True: LARS folds weight decay into the "
                "gradient (g' = λ(g + wd·w)), which the inner optimizer's negation would turn "
                "into weight growth; minimise the negated loss instead"
            )
        to_float(
            group.get("weight_decay", 0.0),
            f"param_groups[{index}]['weight_decay']",
            minimum=0.0,
            maximum=FP32_MAX,
        )
        if group.get("differentiable", False):
            raise ValueError(
                f"param_groups[{index}] has differentiable=True: LARS computes the trust ratio "
                "outside autograd; use differentiable=False"
            )
        for key in ("momentum", "dampening"):  # the inner SGD's, checked on every path
            if key in group:
                to_float(
                    group[key], f"param_groups[{index}]['{key}']", minimum=0.0, maximum=FP32_MAX
                )
        mask = group.get(MASK_KEY) if check_mask else None
        if mask is not None and (
            not isinstance(mask, list)
            or len(mask) != len(group["params"])
            or not set(map(type, mask)) <= {bool}  # bool has no subclasses; C-speed per step
        ):
            raise TypeError(
                f"param_groups[{index}]['{MASK_KEY}'] must be a list of bools, one per parameter"
            )

    def _commit_group(self, group: dict[str, Any], plan: tuple[float, list[bool]]) -> None:
        """Keep the filter's result (the weight decay stays where it is: see the class doc), and
        which tensors the group held when it was checked (:meth:`_check_members`)."""
        group[MASK_KEY] = plan[1]
        self._masks[id(group)] = (group, plan[1])
        params = group["params"]
        rec = self._members.get(id(group))
        if (
            rec is not None
            and rec[0] is group
            and len(rec[1]) == len(params)
            and all(map(operator.is_, params, rec[1]))
        ):
            return  # the same tensors: nothing to record (a shape read costs ~3 µs a Parameter)
        params = list(params)
        self._members[id(group)] = (group, params, [p.shape for p in params])
        live = {id(g) for g in self.param_groups}  # groups a load replaced: forget them
        for records in (self._members, self._masks):
            for key in [k for k in records if k not in live]:
                del records[key]

    def _refuse_shards(self, index: int, group: dict[str, Any]) -> None:
        """A parameter that is a shard LARS would take a slice's norm of: refused by engine, with
        the recipe (``lars_npu._engines``). Shards with a known global shape pass in the
        sharded optimizer only."""
        names = group.get("param_names")
        for j, p in enumerate(group.get("params", [])):
            kind = shard_kind(p) if isinstance(p, torch.Tensor) else None
            if kind is None or (kind in HANDLED and self._takes_shards):
                continue
            name = names[j] if names and j < len(names) else f"param_groups[{index}][{j}]"
            if kind in HANDLED:
                raise ValueError(
                    f"{type(self).__name__}: parameter {name!r} is a shard ({kind}), and this "
                    f"{type(self).__name__} was built for whole tensors (it is not lars_npu.LARS "
                    "itself, or the parameters became shards after it was built, as accelerate's "
                    "FSDP2 does to an optimizer prepared with the model): build "
                    "lars_npu.LARS(torch.optim.SGD(params, ...)) on the sharded parameters, after "
                    "sharding the model; it then sums the norms over the ranks"
                )
            raise ValueError(f"LARS: {refusal(kind, name)}")

    def _check_members(self, index: int, group: dict[str, Any]) -> None:
        """Refuse a group whose tensors were swapped, since LARS last checked it, for others of
        another number or shape: its filter results, and any norm, would belong to other
        tensors. (DeepSpeed ZeRO 1/2 swap a group's parameters for one flat partition.) A
        tensor swapped for one of the same shape is followed, as the filter result at its
        position."""
        rec = self._members.get(id(group))
        if rec is None or rec[0] is not group:
            return
        _, old, shapes = rec
        now = group["params"]
        if len(now) == len(old) and all(
            q is p or q.shape == s for q, p, s in zip(now, old, shapes, strict=True)
        ):
            return
        for p in old:
            if shard_kind(p) == "zero12":
                names = group.get("param_names")
                name = names[0] if names else f"param_groups[{index}][0]"
                raise ValueError(f"LARS: {refusal('zero12', name)}")
        raise ValueError(
            f"LARS: param_groups[{index}]'s tensors were replaced since LARS checked them "
            f"(it held {_shapes_text(shapes)}, now {_shapes_text([q.shape for q in now])}): its "
            "filter results and norms would belong to other tensors. Build the optimizer again "
            "for the new parameters (or add them with add_param_group)"
        )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer, taking over its weight decay (filter re-run)."""
        self.optimizer.add_param_group(param_group)
        self._driver.invalidate()
        group = self.param_groups[-1]
        try:
            _refuse_duplicates(self.param_groups)
            self._refuse_shards(len(self.param_groups) - 1, group)
            self._commit_group(group, self._plan_group(len(self.param_groups) - 1, group))
        except BaseException:  # whatever the filter raised: the group is not added
            self.param_groups.pop()
            raise

    # -- the step --
    def _fused_now(self) -> bool:
        """Whether this step takes the fused path (re-checked every step: groups can change)."""
        if self.fused is False:
            return False
        why = unsupported_reason(self.optimizer)
        if why is None:
            return True
        if self.fused:
            raise ValueError(f"fused=True needs {FUSED_REQUIREMENTS}, but {why}")
        return False

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One LARS step: fused (LARS + momentum + update in one call) when the inner optimizer
        allows it, else rewrite the adapted gradients and step the inner optimizer. Skips the
        whole step (writes nothing) if a gradient holds inf/nan."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._agree_group is not None and self._skip_agreed():
            return loss
        if self._fused_now():
            try:
                return self._fused_step(loss)
            except SparseGradientError:
                if self.fused:
                    raise ValueError(
                        "fused=True cannot take sparse gradients; use fused=False (the inner "
                        "SGD handles sparse gradients of parameters LARS does not adapt)"
                    ) from None
            except MixedDevicesError as exc:
                if self.fused:
                    raise ValueError(f"fused=True: {exc}") from None
        self._driver.invalidate()  # the inner step may create momentum buffers
        return self._unfused_step(loss)

    def _skip_agreed(self) -> bool:
        """Inside ``ZeroRedundancyOptimizer`` each rank steps only its share of the parameters,
        so a non-finite gradient would skip that share alone. The ranks agree first, with one
        all-reduce of a flag: any rank's non-finite gradient skips the step on every rank."""
        import torch.distributed as dist

        grads = [
            p.grad if p.grad.layout == torch.strided else sparse_values(p.grad)
            for g in self.param_groups
            for p in g["params"]
            if p.grad is not None
        ]
        device = grads[0].device if grads else torch.device("cpu")
        if dist.get_backend(self._agree_group) == "gloo":
            device = torch.device("cpu")
        flag = torch.tensor([0.0 if all_finite(grads) else 1.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._agree_group)
        if float(flag.item()) == 0.0:
            return False
        nan = torch.full((len(grads),), float("nan"), dtype=torch.float64)
        self._finish(_Skipped(torch.tensor(True, device=device), nan), [], [], [], None,
                     inner=False)  # fmt: skip
        return True

    def _fused_step(self, loss: Any) -> Any:
        plans = [self._plan_group(gi, g) for gi, g in enumerate(self.param_groups)]
        device = None
        for g in self.param_groups:
            for p in g["params"]:
                device = p.device
                break
            if device is not None:
                break
        backend = resolve(device or torch.device("cpu"), self.backend)
        result, names, adapt = self._driver.step(
            self, backend, self._hyper, [wd for wd, _ in plans], [m for _, m in plans]
        )
        return self._finish(result, names, adapt, plans, loss, inner=False)

    def _finish(
        self,
        result: Any,
        names: list[str],
        adapt: list[bool],
        plans: list[Any],
        loss: Any,
        *,
        inner: bool,
        saved: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> Any:
        self._last_lam = result.trust_ratio
        self._last_names = names
        self._last_adapt = adapt
        flag = result.found_inf
        if not inner and flag.device.type != "cpu":
            # A fused step on an accelerator (the AscendC kernels on an NPU): the kernels made
            # the skip decision on the device and skipped their own writes, so the host does
            # not wait for them here; found_inf is read when someone asks (the property).
            self._found_inf = flag
            self._found_unread = True
            for group, plan in zip(self.param_groups, plans, strict=True):
                self._commit_group(group, plan)
            return loss
        found = bool(flag)
        self._found_inf = torch.tensor(found, device=flag.device)
        self._found_unread = False
        if found:
            self._warn_skipped(stacklevel=5)
            return loss
        for group, plan in zip(self.param_groups, plans, strict=True):
            self._commit_group(group, plan)
        if inner:
            self._inner_step(saved or [])
        return loss

    def _inner_step(self, saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The inner optimizer's step, with its weight decay 0 for the duration (LARS applied it)
        and its own step hooks, but not the global ones (they fired for LARS.step). If it raises,
        every rewritten gradient is put back from ``saved`` (gradient, copy of its old value)."""
        inner = self.optimizer
        groups = inner.param_groups
        held = [(g, g["weight_decay"]) for g in groups if "weight_decay" in g]
        try:
            for g, _ in held:
                g["weight_decay"] = 0.0
            fn = type(inner).step
            raw = getattr(fn, "__wrapped__", None)
            if raw is None or not getattr(fn, "hooked", False):
                inner.step()  # not torch's hook wrapper: call it as it is
            else:
                args: tuple[Any, ...] = (inner,)
                kwargs: dict[str, Any] = {}
                for pre in inner._optimizer_step_pre_hooks.values():
                    out = pre(inner, args, kwargs)
                    if out is not None:
                        args, kwargs = out
                raw(*args, **kwargs)
                inner._optimizer_step_code()
                for post in inner._optimizer_step_post_hooks.values():
                    post(inner, args, kwargs)
        except BaseException:
            restore_grads(saved)
            raise
        finally:
            for g, wd in held:
                g["weight_decay"] = wd

    def _check_inner_state(
        self,
        params: list[torch.Tensor],
        names: list[str],
        local: Callable[[torch.Tensor], torch.Tensor] | None = None,
        dense: int | None = None,
    ) -> dict[str, list[torch.Tensor | None]]:
        """Before any write of the unfused step: each parameter can be written in place, and
        every entry of its state fits it (:func:`check_state_entry`: SGD's momentum buffer is
        None or a floating tensor of the parameter's shape, in its storage; any other tensor of
        one or more dimensions has the parameter's shape). Returns the state tensors the inner
        step may write, by key, aligned with ``params`` (None where absent), for the sharing
        check. ``local``: the tensor holding this rank's elements (a DTensor's local shard;
        None: the tensor itself). ``dense``: how many of ``params`` (the first ones) have a dense
        gradient (the others a sparse one, for which torch's SGD keeps a sparse buffer)."""
        if local is None:
            local = _same
        state = self.state
        written: dict[str, list[torch.Tensor | None]] = {}
        if dense is None:
            dense = len(params)
        for k, (p, name) in enumerate(zip(params, names, strict=True)):
            w = local(p)
            check_written(w, f"parameter {name!r}")
            st = state.get(p)
            if not st:
                continue
            for key, v in st.items():
                if (
                    key == MOMENTUM
                    and isinstance(v, torch.Tensor)
                    and (k < dense or v.layout == torch.strided)  # dense gradient: dense buffer
                ):
                    vl = local(v)
                    check_buffer(w, vl, name)  # tensor, floating, shape, device, storage
                else:
                    check_state_entry(key, v, p, name, finite=False)
                    if not (
                        isinstance(v, torch.Tensor) and v.dim() > 0 and v.layout == torch.strided
                    ):
                        continue  # counters, scalars, sparse buffers: torch's own to write
                    vl = local(v)
                    check_written(vl, f"state[{key!r}] of parameter {name!r}")
                slots = written.get(key)
                if slots is None:
                    slots = written[key] = [None] * len(params)
                slots[k] = vl
        return written

    def _gather(
        self,
        *,
        local: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> StepInputs:
        """Everything a rewrite + inner step reads, checked before anything is written: the
        groups' plans, and per parameter with a gradient its (local) weight and gradient, filter
        result, weight decay, lr and name; its state must fit it. Shared by the unfused step and
        :class:`lars_npu.distributed.ShardedLARS` (``local``: a DTensor's local shard)."""
        out = StepInputs()
        slot = 0
        sharded = local is not None  # plain tensors: lars_ checks the pairs itself, by name
        dtensors = dtensor_type() is not None  # none can exist before their module is loaded
        for gi, group in enumerate(self.param_groups):
            wd, mask = self._plan_group(gi, group)
            out.plans.append((wd, mask))
            lr = to_float(group["lr"], f"param_groups[{gi}]['lr']", minimum=0.0, maximum=FP32_MAX)
            pnames = group.get("param_names")
            for j, p in enumerate(group["params"]):
                here, slot = slot, slot + 1
                g = p.grad
                if g is None:
                    continue
                name = pnames[j] if pnames else f"param_groups[{gi}][{j}]"
                if not self._takes_shards:
                    refuse_shard(p, name)
                if g.is_sparse or g.layout != torch.strided:
                    if mask[j]:
                        raise ValueError(
                            f"parameter {name!r} has a sparse gradient; LARS cannot adapt it "
                            "(exclude it with lars_filter to let the inner optimizer handle it)"
                        )
                    # excluded: LARS leaves it to the inner optimizer, which writes the
                    # parameter (checked below) and reads the gradient (its inf/nan skips the
                    # step like any other's)
                    out.sparse.append((p, g, name))
                    continue
                if dtensors and is_dtensor(p) != is_dtensor(g):
                    raise TypeError(
                        f"parameter {name!r}: a DTensor parameter needs a DTensor gradient and a "
                        "plain one a plain gradient"
                    )
                if dtensors and is_dtensor(g) and tuple(g.placements) != tuple(p.placements):
                    raise ValueError(
                        f"gradient of parameter {name!r} has placements {tuple(g.placements)}, "
                        f"the parameter {tuple(p.placements)}; redistribute it first"
                    )
                if sharded:
                    w, gl = local(p), local(g)  # type: ignore[misc]
                    check_pair(w, gl, f"parameter {name!r}", f"gradient of parameter {name!r}")
                else:
                    w, gl = p, g
                if mask[j]:  # rewritten in place
                    check_written(gl, f"gradient of parameter {name!r}")
                else:  # read (the kernels' inf/nan check reads every gradient)
                    check_storage(gl, f"gradient of parameter {name!r}")
                out.params.append(p)
                out.weights.append(w)
                out.grads.append(gl)
                out.adapt.append(mask[j])
                out.wds.append(wd)
                out.lrs.append(lr)
                out.names.append(name)
                out.slots.append(here)
        self._check_sharing(out, local)
        return out

    def _check_sharing(
        self, out: StepInputs, local: Callable[[torch.Tensor], torch.Tensor] | None
    ) -> None:
        """The state checks of every parameter the inner step writes (sparse-gradient ones
        too), then one sharing check over everything the step writes or reads
        (:mod:`lars_npu._sharing`): parameters and state tensors are written, the gradients
        LARS rewrites are written, the others read."""
        sparse_params = [p for p, _, _ in out.sparse]
        names = out.names + [n for _, _, n in out.sparse]
        state = self._check_inner_state(
            out.params + sparse_params, names, local, dense=len(out.params)
        )
        to_local = local or _same
        parts: list[Any] = [
            ("parameter {}", out.weights + [to_local(p) for p in sparse_params], True),
            ("gradient of parameter {}", out.grads + [None] * len(out.sparse),
             out.adapt + [False] * len(out.sparse)),
        ]  # fmt: skip
        parts += [(f"state[{key!r}] of parameter {{}}", ts, True) for key, ts in state.items()]
        if out.sparse:  # the inner step reads a sparse gradient's values and indices
            members = [sparse_members(g) for _, g, _ in out.sparse]
            pad = [None] * len(out.params)
            for k in range(max(map(len, members))):
                ts = pad + [m[k] if k < len(m) else None for m in members]
                parts.append(("sparse gradient of parameter {}", ts, False))
        check_disjoint(parts, names)

    def _unfused_step(self, loss: Any) -> Any:
        inp = self._gather()
        if not inp.sparse_finite():  # the dense gradients are checked by lars_ below
            device = inp.sparse[0][1].device
            skipped = MultiResult(
                torch.tensor(True, device=device),
                torch.full((len(inp.grads),), math.nan, dtype=torch.float64),
            )
            return self._finish(skipped, inp.names, inp.adapt, inp.plans, loss, inner=True)
        saved = save_grads(inp.grads, inp.adapt, self._undo)
        try:
            result = lars_(
                inp.weights,
                inp.grads,
                adapt=inp.adapt,
                weight_decays=inp.wds,
                lrs=inp.lrs,
                hyper=self._hyper,
                backend=self.backend,
                names=inp.names,
            )
        except BaseException:  # whatever a backend raised after a write: gradients put back
            restore_grads(saved)
            raise
        if inp.grads:
            result.found_inf = result.found_inf.to(inp.grads[0].device)
        return self._finish(result, inp.names, inp.adapt, inp.plans, loss, inner=True,
                            saved=saved)  # fmt: skip

    def trust_ratios(self) -> dict[str, float]:
        """λ of every adapted parameter at the last step, by name (nan when it was skipped)."""
        if self._last_lam is None:
            return {}
        lam = self._last_lam.tolist()
        adapt = [bool(a) for a in self._last_adapt]
        return {n: lam[i] for i, n in enumerate(self._last_names) if adapt[i]}

    # -- checkpoints --
    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict (its groups carry ``lars_mask``) plus LARS's
        hyper-parameters under ``"lars"``, and again in every group as ``lars_epsilon``,
        ``lars_coefficient``, ``lars_use_clip``, ``lars_guard_zero_norm`` (so that tools keeping
        only ``state`` and ``param_groups``, like torch.distributed.checkpoint, carry them). No
        functions inside: loads with ``torch.load(weights_only=True)``."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        sd = self.optimizer.state_dict()
        h = self._hyper
        values = {k: getattr(h, k) for k in HYPER_KEYS}
        sd[STATE_KEY] = dict(values)
        sd["param_groups"] = [
            {**g, **{GROUP_HYPER[k]: v for k, v in values.items()}} for g in sd["param_groups"]
        ]
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            out = post_hook(self, sd)
            if out is not None:
                sd = out
        return sd

    def _read_checkpoint(self, state_dict: dict[str, Any]) -> tuple[dict[str, Any], Hyper]:
        """The load pre-hooks applied to a copy of ``state_dict``, LARS's entry taken out, and
        the hyper-parameters it holds (checked). Changes nothing."""
        sd = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            out = pre_hook(self, sd)
            if out is not None:
                sd = out
        saved = sd.pop(STATE_KEY, None)
        groups = sd.get("param_groups")
        in_groups = None
        if isinstance(groups, list):  # the copy in the groups: checked, then taken out
            found = [
                {k: g[GROUP_HYPER[k]] for k in HYPER_KEYS if GROUP_HYPER[k] in g}
                for g in groups
                if isinstance(g, dict)
            ]
            found = [f for f in found if f]
            if found:
                if any(f != found[0] for f in found):
                    raise ValueError(
                        "loaded state dict's param_groups disagree on LARS's hyper-parameters "
                        f"({found[0]} vs {next(f for f in found if f != found[0])})"
                    )
                in_groups = found[0]
            sd["param_groups"] = [
                {k: v for k, v in g.items() if k not in GROUP_HYPER.values()}
                if isinstance(g, dict)
                else g
                for g in groups
            ]
        if saved is None:
            saved = in_groups
        hyper = self._hyper
        if saved is not None:
            if not isinstance(saved, dict):
                raise TypeError(f"state_dict['{STATE_KEY}'] must be a dict")
            hyper = check_hyper(
                saved.get("epsilon", hyper.epsilon),
                saved.get("coefficient", hyper.coefficient),
                saved.get("use_clip", hyper.use_clip),
                saved.get("guard_zero_norm", hyper.guard_zero_norm),
            )
        groups = sd.get("param_groups")
        if isinstance(groups, list):  # earlier versions kept the decay as lars_weight_decay
            sd["param_groups"] = [_migrate_group(g) for g in groups]
        return sd, hyper

    def _check_loaded_state(self, sd: dict[str, Any]) -> None:
        """Refuse, before anything changes, state that does not fit the parameters it will be
        given to: every entry is checked as a step checks it (:func:`check_state_entry`), and
        must hold finite values."""
        saved_groups = sd.get("param_groups")
        state = sd.get("state")
        if not isinstance(saved_groups, list) or not isinstance(state, dict):
            return  # torch's own load reports a malformed state dict
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=False)):
            ids = saved.get("params", [])
            pnames = group.get("param_names")
            for j, (pid, p) in enumerate(zip(ids, group["params"], strict=False)):
                entry = state.get(pid)
                if entry is None:
                    continue
                name = pnames[j] if pnames else f"param_groups[{gi}][{j}]"
                if not isinstance(entry, dict):
                    raise TypeError(
                        f"loaded state of parameter {name!r} must be a dict, got "
                        f"{type(entry).__name__}"
                    )
                for key, v in entry.items():
                    check_state_entry(key, v, p, name, finite=True, loaded=True)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a LARS checkpoint, or one of the plain inner optimizer. Hyper-parameters and
        filter results in the checkpoint win over the constructor's. Everything is checked, and
        each group's plan made, before anything changes (:meth:`_preview_load`, shared with
        :class:`lars_npu.distributed.ShardedLARS`)."""
        sd, hyper, preview = self._preview_load(state_dict)
        plans = [self._plan_group(gi, g) for gi, g in enumerate(preview)]
        self.optimizer.load_state_dict(sd)
        self._driver.invalidate()
        self._hyper = hyper
        for group, plan in zip(self.param_groups, plans, strict=True):
            self._commit_group(group, plan)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _preview_load(
        self, state_dict: dict[str, Any]
    ) -> tuple[dict[str, Any], Hyper, list[dict[str, Any]]]:
        """``load_state_dict`` up to where it would change something: the pre-hooks, the
        hyper-parameters, torch's group-count and group-size checks, every saved group's
        settings and state. Returns the state dict to hand to the inner optimizer, the
        hyper-parameters, and the param groups as the load would leave them (checkpoint values,
        this optimizer's parameters), for the plans (and ShardedLARS's layout check)."""
        sd, hyper = self._read_checkpoint(state_dict)
        for entry in ("state", "param_groups"):
            if entry not in sd:
                raise ValueError(f"loaded state dict has no {entry!r} entry")
        saved_groups = sd["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                "loaded state dict has a different number of parameter groups "
                f"({len(saved_groups)}; the optimizer has {len(self.param_groups)})"
            )
        preview = []
        for gi, (group, saved_group) in enumerate(
            zip(self.param_groups, saved_groups, strict=True)
        ):
            if len(saved_group["params"]) != len(group["params"]):
                raise ValueError(
                    f"loaded state dict's param_groups[{gi}] has {len(saved_group['params'])} "
                    f"parameters, the optimizer's has {len(group['params'])}"
                )
            view = {**saved_group, "params": group["params"]}  # as torch's load sets it
            if "param_names" in group and "param_names" not in saved_group:
                view["param_names"] = group["param_names"]
            preview.append(view)
        for gi, g in enumerate(saved_groups):
            self._check_saved_group(gi, g)
        self._check_loaded_state(sd)
        return sd, hyper, preview


class LARSSGD(LARS):
    """``LARS(torch.optim.SGD(params, ...))`` built torch-style from ``params`` and keyword
    arguments, for code that makes optimizers from a class and kwargs
    (``ZeroRedundancyOptimizer(params, optimizer_class=LARSSGD, lr=...)``, timm's, Lightning's and
    Hugging Face's factories, Hydra configs). Same step, same ``state_dict`` as
    ``LARS(SGD(...))``; ``self.optimizer`` is the inner SGD.

    Args:
        params: parameters or param groups, as for ``torch.optim.SGD``; pass
            ``model.named_parameters()`` so that the default ``lars_filter`` sees names.
        lr, momentum, dampening, weight_decay, nesterov: the inner SGD's (``weight_decay`` is
            taken over by LARS: see :class:`LARS`).
        epsilon, coefficient, use_clip, lars_filter, guard_zero_norm, backend, fused: LARS's.
        foreach: the inner SGD's, for its unfused steps.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        epsilon: float = 1e-5,
        coefficient: float = 0.001,
        use_clip: bool = False,
        lars_filter: LarsFilter | str = default_lars_filter,
        guard_zero_norm: bool = False,
        backend: str = "auto",
        fused: bool | None = None,
        foreach: bool | None = None,
    ) -> None:
        inner = torch.optim.SGD(
            params,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            foreach=foreach,
        )
        super().__init__(
            inner,
            epsilon,
            coefficient,
            use_clip,
            lars_filter,
            guard_zero_norm=guard_zero_norm,
            backend=backend,
            fused=fused,
        )

    def __repr__(self) -> str:
        return "LARSSGD" + super().__repr__()[len("LARS") :]


def _zero_process_group() -> Any:
    """The process group of the ``ZeroRedundancyOptimizer`` constructing this optimizer as its
    local one (``optimizer_class=LARSSGD``, or any factory that builds a LARS), else None. ZeRO
    calls the class from its own method ``_init_local_optimizer``; a few frames up holds that
    ZeRO as ``self``. (Tested in CI
    against torch's ZeRO: if that ever stops holding, the ZeRO test of a non-finite gradient
    fails.)"""
    import sys

    mod = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")
    zero_type = getattr(mod, "ZeroRedundancyOptimizer", None)
    if zero_type is None:
        return None
    frame = sys._getframe(2)
    for _ in range(8):  # LARS.__init__ <- (LARSSGD.__init__ | a factory) <- ZeRO
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == "_init_local_optimizer" and isinstance(owner, zero_type):
            import torch.distributed as dist

            group = owner.process_group
            return group if group is not None else dist.group.WORLD
        frame = frame.f_back
    return None

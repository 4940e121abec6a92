"""``lars_npu.LARS``: MindSpore's ``nn.LARS`` as a torch optimizer wrapper (docs/semantics.md).

The class validates its arguments, keeps LARS's record of each step, and dispatches: the fused
step (:mod:`lars_npu._fused`), the unfused transaction (:mod:`lars_npu._transaction`), or, for
sharded parameters, the sharded step (:mod:`lars_npu.distributed.engine`). Param groups are
planned in :mod:`lars_npu._groups`, checkpoints read in :mod:`lars_npu._checkpoint`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import Optimizer

from ._backends import MultiResult, resolve, warn_reference_fallback
from ._checkpoint import LoadPreview, preview_load, state_dict_of
from ._compat import instance_hooks
from ._compiled import step as compiled_step
from ._compiled import traceable
from ._engines import HANDLED, shard_kind
from ._fused import (
    FUSED_REQUIREMENTS,
    FusedDriver,
    MixedDevicesError,
    SparseGradientError,
    unsupported_reason,
)
from ._groups import GroupPlan, GroupPlanner, LarsFilter, refuse_duplicates, refuse_shards
from ._policy import check_backend, check_filter, check_fused, check_inner
from ._record import StepRecord
from ._transaction import Saved, gather, inner_step, rewrite, skipped
from ._upstream import torch_floor_error
from ._zero import skip_agreed, watch_zero
from .filters import ParamInfo, default_lars_filter
from .functional import check_hyper

if TYPE_CHECKING:
    from .distributed.engine import ShardedEngine

__all__ = ["LARS", "LarsFilter"]


def _has_handled_shards(optimizer: Optimizer) -> bool:
    return any(
        shard_kind(p) in HANDLED
        for g in optimizer.param_groups
        for p in g.get("params", [])
        if isinstance(p, torch.Tensor)
    )


def _shared(key: str) -> Any:
    """An attribute LARS shares with its inner optimizer (``param_groups``, ``state``,
    ``defaults``). While torch's ``Optimizer.__init__`` runs, before there is an inner
    optimizer, LARS's own placeholder values are kept aside and then dropped."""

    def get(self: LARS) -> Any:
        inner = self.__dict__.get("optimizer")
        return getattr(inner, key) if inner is not None else self.__dict__[f"_own_{key}"]

    def put(self: LARS, value: Any) -> None:
        inner = self.__dict__.get("optimizer")
        if inner is None:
            self.__dict__[f"_own_{key}"] = value
        else:
            setattr(inner, key, value)

    return property(get, put, doc=f"The inner optimizer's ``{key}`` (shared).")


class LARS(Optimizer):
    """Layer-wise adaptive rate scaling around any torch optimizer (MindSpore ``nn.LARS``).

    Per parameter the filter adapts, the gradient becomes ``g' = λ·(g + wd·w)`` with
    ``λ = coefficient·‖w‖ / (‖g‖ + wd·‖w‖ + epsilon)`` (clipped to ``[0, 1]`` after dividing by
    the group's lr when ``use_clip``), then the inner optimizer steps; parameters the filter
    excludes get neither LARS nor weight decay.

    Weight decay: each group's ``weight_decay``, read every step and applied inside
    ``λ·(g + wd·w)``; the inner optimizer steps with 0, so decay is never applied twice.

    A step is a transaction: every check runs before the first write; a non-finite gradient
    skips the whole step (``found_inf``); if the inner optimizer's step raises, each rewritten
    ``p.grad`` is put back exactly.

    Sharded parameters (FSDP2 / HSDP / TP DTensors, marked flat shards, FSDP1 after
    :func:`lars_npu.distributed.mark_fsdp1`): the norms are summed over the ranks, one
    all-reduce per step (:class:`lars_npu.distributed.ShardedLARS`: the collective contract).

    Args:
        optimizer: the inner optimizer (momentum SGD is the intended partner). Adam/LAMB-family
            optimizers are refused: their update is invariant to the gradient's scale.
        epsilon: ε > 0 in the denominator of λ.
        coefficient: θ > 0, the trust coefficient.
        use_clip: clip λ/lr to [0, 1] (at lr = 0, its limit: 1 if λ > 0 else 0).
        lars_filter: ``f(ParamInfo) -> bool``; True adapts the parameter. Default: MindSpore's
            (no ``"LayerNorm"``, no ``"bias"`` in the name); for PyTorch models
            :func:`lars_npu.exclude_bias_and_norm`. Also by name: ``"default"`` or
            ``"exclude_bias_and_norm"`` (for factories that store their kwargs in checkpoints).
        guard_zero_norm: λ = 1 (before clipping) for a tensor whose ‖w‖ or ‖g‖ is 0.
        backend: ``"auto"`` (``LARS_NPU_BACKEND`` if set, else by device) or a backend name.
        fused: ``None`` runs LARS + momentum + weight update as one backend call when the inner
            optimizer is a plain ``torch.optim.SGD`` (dampening 0, maximize False), writing SGD's
            own ``momentum_buffer``; ``True`` requires that; ``False`` always rewrites the
            gradients and calls the inner step. On the fused path ``p.grad`` keeps the raw
            gradient; on the unfused path it holds g' after the step.
    """

    param_groups = _shared("param_groups")
    state = _shared("state")
    defaults = _shared("defaults")

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
        floor = torch_floor_error()
        if floor is not None:
            raise RuntimeError(floor)
        # torch's own set-up (hook registries, profiling wrapper) on an empty placeholder group:
        # LARS's groups and state are the inner optimizer's (the properties above)
        super().__init__([{"params": []}], {})
        for key in ("param_groups", "state", "defaults"):
            self.__dict__.pop(f"_own_{key}", None)
        sharded, group = self._sharding(optimizer)
        engine: ShardedEngine | None = None
        if sharded:
            from .distributed.engine import ShardedEngine

            engine = ShardedEngine(self, group)  # no process group: a local error, here
        try:
            inner = check_inner(optimizer, LARS)
            refuse_duplicates(inner.param_groups)
            self._hyper = check_hyper(epsilon, coefficient, use_clip, guard_zero_norm)
            filt = check_filter(lars_filter)
            self.backend = check_backend(backend)
            self.fused = check_fused(fused, inner, sharded)
            for gi, g in enumerate(inner.param_groups):
                refuse_shards(gi, g, type(self).__name__, sharded)
            info = engine.param_info if engine is not None else ParamInfo
            self._planner = GroupPlanner(filt, info, track_members=not sharded)
            plans = [self._planner.plan(gi, g) for gi, g in enumerate(inner.param_groups)]
        except Exception as exc:
            if engine is None:
                raise
            engine.refuse(exc)  # every rank raises the same error
        self._driver = FusedDriver()
        self._undo: list[torch.Tensor] = []  # the unfused step's copies of rewritten gradients
        self._record = StepRecord()
        self._given_found_inf: torch.Tensor | None = None  # set by GradScaler (sharded steps)
        self._zero_group: Any = None  # set when LARS is ZeroRedundancyOptimizer's local one
        self._engine = engine
        if engine is not None:
            engine.start(inner, plans)  # the ranks agree on the layout, or all raise
        self.optimizer = inner
        self._commit(plans)
        if self.backend == "auto" and any(
            p.device.type == "cpu" for g in self.param_groups for p in g["params"]
        ):
            warn_reference_fallback()  # said here, once, not only at the first step
        watch_zero()

    @property
    def lars_filter(self) -> LarsFilter:
        """The filter (True adapts a parameter); a new one applies to masks computed later."""
        return self._planner.lars_filter

    @lars_filter.setter
    def lars_filter(self, value: LarsFilter | str) -> None:
        self._planner.lars_filter = check_filter(value)

    def _sharding(self, optimizer: object) -> tuple[bool, Any]:
        """(whether this optimizer is sharded, its process group: None for the default)."""
        return isinstance(optimizer, Optimizer) and _has_handled_shards(optimizer), None

    def _commit(self, plans: list[GroupPlan]) -> None:
        groups = self.param_groups
        for group, plan in zip(groups, plans, strict=True):
            self._planner.commit(group, plan, groups)

    # -- the record of the last step (lars_npu._record); GradScaler may set found_inf --
    @property
    def found_inf(self) -> torch.Tensor:
        """0-dim bool tensor: True when the last step was skipped because a gradient held
        inf/nan (nothing was written). After a fused step on an NPU it is the kernels' own flag,
        on the device; reading it here is the first time the host looks at it."""
        return self._record.found_inf()

    @found_inf.setter
    def found_inf(self, value: torch.Tensor) -> None:
        # GradScaler's protocol for optimizers with _step_supports_amp_scaling: it sets
        # found_inf (and grad_scale) before step() and deletes them after. Kept apart from the
        # record, which stays readable after the step.
        self._given_found_inf = value

    @found_inf.deleter
    def found_inf(self) -> None:
        self._given_found_inf = None

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """GradScaler calls a sharded LARS's step on every rank, with ``found_inf`` set, so that
        the ranks' inf checks join the step's one all-reduce."""
        return self._engine is not None

    def trust_ratios(self) -> dict[str, float]:
        """λ of every adapted parameter at the last step, by name (nan when it was skipped)."""
        return self._record.trust_ratios()

    epsilon = property(lambda self: self._hyper.epsilon, doc="ε of λ's denominator.")
    coefficient = property(lambda self: self._hyper.coefficient, doc="θ, the trust coefficient.")
    use_clip = property(lambda self: self._hyper.use_clip, doc="Whether λ/lr is clipped.")
    guard_zero_norm = property(lambda self: self._hyper.guard_zero_norm, doc="λ = 1 at 0 norms.")

    def __getstate__(self) -> dict[str, Any]:
        if self._engine is not None:
            raise TypeError(
                "a sharded LARS holds a process group and cannot be pickled or deep-copied; "
                "checkpoint it with state_dict()"
            )
        state = dict(self.__dict__)
        for key in ("_driver", "_undo", "_zero_group"):  # caches and a process group
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._driver = FusedDriver()
        self._undo = []
        self._zero_group = None

    def __repr__(self) -> str:
        h = self._hyper
        text = (
            f"{type(self).__name__}(epsilon={h.epsilon}, coefficient={h.coefficient}, "
            f"use_clip={h.use_clip}, guard_zero_norm={h.guard_zero_norm}, "
            f"backend={self.backend!r}, fused={self.fused}, "
            f"lars_filter={getattr(self.lars_filter, '__name__', repr(self.lars_filter))})\n"
            f"wrapping {self.optimizer!r}"
        )
        if self._engine is not None:
            text += f"\n{self._engine.describe()}"
        return text

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer (filter run on it; sharded: on every rank)."""
        if "optimizer" not in self.__dict__:  # torch's __init__ adding LARS's placeholder
            super().add_param_group(param_group)
            return
        if self._engine is not None:
            self._engine.add_param_group(param_group)
            return
        self.optimizer.add_param_group(param_group)
        self._driver.invalidate()
        groups = self.param_groups
        try:
            refuse_duplicates(groups)
            refuse_shards(len(groups) - 1, groups[-1], type(self).__name__, False)
            self._planner.commit(groups[-1], self._planner.plan(len(groups) - 1, groups[-1]),
                                 groups)  # fmt: skip
        except BaseException:  # whatever the filter raised: the group is not added
            groups.pop()
            raise

    def verify_layout(self) -> None:
        """Sharded parameters: check, with one collective (call it on every rank), that all
        ranks hold the same parameters and that their shards fit together; raise the same error
        on every rank otherwise. The constructor, ``add_param_group`` and ``load_state_dict``
        run it; call it yourself after changing the parameters another way. Without sharded
        parameters there is nothing to agree on, and it returns."""
        if self._engine is not None:
            self._engine.verify_layout()

    # -- the step --
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One LARS step: fused (LARS + momentum + update in one call) when the inner optimizer
        allows it, else rewrite the adapted gradients and step the inner optimizer. Skips the
        whole step (writes nothing) if a gradient holds inf/nan."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.compiler.is_compiling():
            # torch.compile(opt.step): one operator node when the step allows it, else the
            # eager step outside the graph (lars_npu._compiled)
            if traceable(self):
                compiled_step(self)
                return loss
            return _eager(self, loss)
        return self._eager_step(loss)

    def _eager_step(self, loss: Any) -> Any:
        if self._engine is not None:
            return self._engine.step(loss)
        if self._zero_group is not None and skip_agreed(self, self._zero_group):
            n = sum(p.grad is not None for g in self.param_groups for p in g["params"])
            self._finish(skipped(n, torch.device("cpu")), [], [], [], loss, inner=False)
            return loss
        if self.fused is not False:
            why = unsupported_reason(self.optimizer)  # re-checked every step: groups change
            if why is None:
                try:
                    return self._fused_step(loss)
                except (SparseGradientError, MixedDevicesError) as exc:
                    if self.fused:
                        raise ValueError(f"fused=True: {exc}") from None
            elif self.fused:
                raise ValueError(f"fused=True needs {FUSED_REQUIREMENTS}, but {why}")
        self._driver.invalidate()  # the inner step may create momentum buffers
        inp = gather(self.param_groups, self.state, self._planner)
        result, saved = rewrite(inp, self._hyper, self.backend, self._undo)
        return self._finish(result, inp.names, inp.adapt, inp.plans, loss, inner=True,
                            saved=saved)  # fmt: skip

    def agree_skips_over(self, group: Any) -> None:
        """In a ZeroRedundancyOptimizer (:mod:`lars_npu._zero`): the ranks skip steps together."""
        self._zero_group = group

    def _fused_step(self, loss: Any) -> Any:
        plans = [self._planner.plan(gi, g) for gi, g in enumerate(self.param_groups)]
        device = next((p.device for g in self.param_groups for p in g["params"]), None)
        backend = resolve(device or torch.device("cpu"), self.backend)
        result, names, adapt = self._driver.step(self.optimizer, backend, self._hyper, plans)
        return self._finish(result, names, adapt, plans, loss, inner=False)

    def _finish(
        self,
        result: MultiResult,
        names: list[str],
        adapt: Any,
        plans: list[GroupPlan],
        loss: Any,
        *,
        inner: bool,
        saved: Saved | None = None,
    ) -> Any:
        """Record the step, commit the plans, run the inner step. A fused step on an NPU decided
        the skip on the device (and skipped its writes there): the host does not wait for it."""
        if self._record.record(result, names, adapt, wait=inner):
            return loss
        if plans:  # (a device-side skip: the kernels wrote nothing, the masks stand)
            self._commit(plans)
        if inner:
            inner_step(self.optimizer, saved or [])
        return loss

    # -- checkpoints (lars_npu._checkpoint) --
    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict (its groups carry ``lars_mask``) plus LARS's
        hyper-parameters, under ``"lars"`` and in every group (``lars_epsilon``, ...). No
        functions inside: loads with ``torch.load(weights_only=True)``."""
        return state_dict_of(self, self.optimizer, self._hyper)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a LARS checkpoint, or one of the plain inner optimizer. Hyper-parameters and
        filter results in the checkpoint win over the constructor's. Everything is checked,
        and each group's plan made, before anything changes (sharded: on every rank)."""
        if self._engine is not None:
            self._engine.load_state_dict(state_dict)
        else:
            preview = preview_load(self, self.optimizer, self._hyper, state_dict)
            plans = [self._planner.plan(gi, g) for gi, g in enumerate(preview.groups)]
            self._adopt_load(preview, plans)
        for post_hook in instance_hooks(self, "load_state_dict_post"):
            post_hook(self)

    def _adopt_load(self, preview: LoadPreview, plans: list[GroupPlan]) -> None:
        self.optimizer.load_state_dict(preview.state_dict)
        self._driver.invalidate()
        self._hyper = preview.hyper
        self._commit(plans)


def _eager(opt: LARS, loss: Any) -> Any:
    """The eager step, never traced (a graph break where torch.compile meets a configuration the
    single-operator step does not cover). Wrapped when it is needed: torch.compiler.disable
    imports dynamo, which ``import lars_npu`` does not."""
    return torch.compiler.disable(opt._eager_step)(loss)

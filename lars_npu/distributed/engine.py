"""What a :class:`lars_npu.LARS` on sharded parameters does differently, as one object the
optimizer holds (composition: the optimizer stays a ``LARS``): agree with the other ranks on
the layout before the constructor, ``add_param_group`` and ``load_state_dict`` change anything
(:mod:`.layout`), and step with one all-reduce of the norms (:mod:`.reduction`)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.optim import Optimizer

from .._checkpoint import preview_load
from .._engines import GLOBAL_SHAPE_ATTR, is_dtensor
from .._groups import GroupPlan, refuse_duplicates
from .._upstream import dtensor_defects
from ..filters import ParamInfo
from .layout import Agreement, Layout, Problem, problem
from .reduction import sharded_step
from .shards import ShardInfo

if TYPE_CHECKING:
    from ..optim import LARS


class _GroupsStandIn:
    """What ``torch.optim.Optimizer.add_param_group`` reads and appends to, with a copy of the
    group list: its checks and defaults run without adding anything."""

    def __init__(self, defaults: dict[str, Any], param_groups: list[dict[str, Any]]) -> None:
        self.defaults = defaults
        self.param_groups = param_groups


class ShardedEngine:
    """The sharded side of one LARS optimizer (``opt``) over ``process_group``."""

    def __init__(self, opt: LARS, process_group: Any) -> None:
        self.opt = opt
        self.agreement = Agreement(process_group)

    @property
    def process_group(self) -> Any:
        return self.agreement.process_group

    def describe(self) -> str:
        a = self.agreement
        return f"sharded over {a.world_size} ranks (this is {a.rank})"

    @staticmethod
    def param_info(name: str, param: torch.Tensor) -> ParamInfo:
        """What the filter sees: a flat shard shows its global shape."""
        shape = getattr(param, GLOBAL_SHAPE_ATTR, None)
        if shape is not None and not is_dtensor(param):
            return ShardInfo(name, param, shape)
        return ParamInfo(name, param)

    def _plan(self, index: int, group: dict[str, Any]) -> GroupPlan:
        return self.opt._planner.plan(index, group)

    # -- the changes every rank agrees to first --
    def refuse(self, exc: Exception) -> None:
        """This rank's constructor failed: join the layout check with the problem, so that
        every rank raises the same error (this rank's chained)."""
        self.agreement.agree(None, [problem(exc)], exc)

    def start(self, inner: Optimizer, plans: list[GroupPlan]) -> None:
        """The constructor's layout check (the plans are committed by the caller after it). A
        torch known to hand FSDP2's optimizers wrong gradients on these parameters' groups
        (:mod:`lars_npu._upstream`) is a warning on every rank, naming the fix."""
        params = [p for g in inner.param_groups for p in g["params"]]
        for message in dtensor_defects(params):
            warnings.warn(f"LARS: {message}", RuntimeWarning, stacklevel=4)
        layout, problems = self.agreement.structure(inner.param_groups, self._plan, plans)
        contrib = self.agreement.agree(layout, problems)
        assert layout is not None  # agree raised otherwise
        self.agreement.adopt(layout, contrib)

    def verify_layout(self) -> None:
        layout, problems = self.agreement.structure(self.opt.param_groups, self._plan)
        contrib = self.agreement.agree(layout, problems)
        assert layout is not None  # agree raised otherwise
        self.agreement.adopt(layout, contrib)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """The group is checked here first (torch's and LARS's checks, on a copy), then every
        rank joins the layout check, and only when all ranks agree is it added, on every rank;
        otherwise every rank raises the same error and none adds it."""
        opt = self.opt
        layout: Layout | None = None
        problems: list[Problem] = []
        cause: Exception | None = None
        try:
            trial = self._trial_group(param_group)
        except Exception as exc:  # joined below, so that every rank raises it
            problems, cause = [problem(exc)], exc
        else:
            layout, problems = self.agreement.structure([*opt.param_groups, trial], self._plan)
        contrib = self.agreement.agree(layout, problems, cause)
        assert layout is not None  # agree raised otherwise
        agreed = layout

        def add() -> None:
            opt.optimizer.add_param_group(param_group)
            opt._driver.invalidate()
            opt._planner.commit(opt.param_groups[-1], agreed.plans[-1], opt.param_groups)

        self.agreement.commit(layout, contrib, add)

    def _trial_group(self, param_group: dict[str, Any]) -> dict[str, Any]:
        """``param_group`` as the inner optimizer would add it (torch's checks and defaults),
        made on a copy: nothing is added. An iterator of parameters becomes a list in the
        caller's dict (read once here, kept for the real add; torch does the same)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group.get("params")
        if isinstance(params, Iterator):
            param_group["params"] = list(params)
        trial = dict(param_group)
        inner = self.opt.optimizer
        stand_in = _GroupsStandIn(inner.defaults, list(inner.param_groups))
        Optimizer.add_param_group(cast(Optimizer, stand_in), trial)  # its checks, on the copy
        refuse_duplicates([*inner.param_groups, trial])
        return trial

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The checkpoint is checked here first without changing anything, then every rank joins
        the layout check, and only when all ranks agree does any rank load."""
        opt = self.opt
        layout: Layout | None = None
        problems: list[Problem] = []
        cause: Exception | None = None
        try:
            preview = preview_load(opt, opt.optimizer, opt._hyper, state_dict)
        except Exception as exc:  # joined below, so that every rank raises it
            problems, cause = [problem(exc)], exc
        else:
            layout, problems = self.agreement.structure(preview.groups, self._plan)
        contrib = self.agreement.agree(layout, problems, cause)
        assert layout is not None  # agree raised otherwise
        agreed = layout
        self.agreement.commit(layout, contrib, lambda: opt._adopt_load(preview, agreed.plans))

    def step(self, loss: Any) -> Any:
        return sharded_step(self, loss)

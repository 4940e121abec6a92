"""``ShardedLARS``: :class:`lars_npu.LARS` for sharded parameters (the optimizer glue: the
constructor, param groups and checkpoints under the ranks' agreement; the step's reduction is in
:mod:`.reduction`, the agreement in :mod:`.layout`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.optim import Optimizer

from .._engines import GLOBAL_SHAPE_ATTR
from .._engines import is_dtensor as _is_dtensor
from ..filters import ParamInfo, default_lars_filter
from ..optim import LARS, _refuse_duplicates
from .layout import Layout, LayoutMixin, Problem, problem
from .reduction import ReductionMixin
from .shards import ShardInfo, rank_world

LarsFilter = Callable[[ParamInfo], bool]


class _GroupsStandIn:
    """What ``torch.optim.Optimizer.add_param_group`` reads and appends to, with a copy of the
    group list: its checks and defaults run without adding anything."""

    def __init__(self, defaults: dict[str, Any], param_groups: list[dict[str, Any]]) -> None:
        self.defaults = defaults
        self.param_groups = param_groups


class ShardedLARS(LayoutMixin, ReductionMixin, LARS):
    """:class:`lars_npu.LARS` for parameters sharded across the ranks of a process group.

    Each parameter is this rank's piece of a larger tensor: a flat shard made by
    :func:`flat_shard` (or marked with :func:`mark_flat_shard`, or by :func:`mark_fsdp1`), or a
    DTensor on a device mesh whose ranks are the group's (``Shard`` and ``Replicate`` placements
    on any number of mesh dimensions: FSDP2 ``fully_shard``, HSDP's (replicate, shard) mesh, TP
    x FSDP); only the ranks at coordinate 0 of every Replicate dimension count a piece in the
    sums. Per step: the local Σw², Σg² of every parameter, ONE ``all_reduce`` (SUM) of a flat
    fp32 buffer of 2·N values over ``process_group``, then λ per parameter from the global sums
    (as :func:`lars_npu.reference.trust_ratio`), the in-place rewrite of the local gradient
    ``g' = λ·(g + wd·w)``, and the inner optimizer's step on the local shards. The result equals
    single-process LARS on the full tensors (to fp32 rounding of the sums).

    Cost of the local work: on the ``cpu`` backend the sums of all parameters are one native call
    and the rewrite of all adapted gradients another; on the AscendC kernels (``npu``, ``emu``)
    one square-sums launch and one update launch with the all-reduced sums given, each with one
    host round trip (workspace to the device, partials back). Other backends, and the kernels
    when the tensors are not all fp32 or all fp16, are called once per tensor:
    ``square_sum_all`` for each parameter with a gradient, then ``lars_update`` for each adapted
    one, 2·N calls per step. Independently of the backend, the host reads the 2·N reduced sums
    once per step (to compute λ and decide whether to skip).

    Everything else is :class:`lars_npu.LARS`: the constructor (less ``fused``: the update always
    runs as rewrite + ``optimizer.step()``), the weight-decay take-over, the filter (it sees the
    global shape), param groups, LR schedulers, ``found_inf`` and ``state_dict`` (per rank: it
    holds this rank's momentum shards).

    Collective contract (SPMD): every rank constructs, steps, calls ``add_param_group`` and
    ``load_state_dict`` together. Construction, ``add_param_group``, ``load_state_dict`` and
    :meth:`verify_layout` first check locally, changing nothing; then every rank joins one
    ``all_gather_object`` carrying its problems (if any) and its parameter layout (names, groups,
    global shapes, dtypes, filter results, shard sizes). If any rank found a problem, or the
    layouts do not fit together, every rank raises the same error, naming the rank (a
    ``ValueError`` for layout problems; a local ``TypeError`` or ``ValueError`` keeps its class,
    any other local exception becomes a ``RuntimeError`` naming it), and nothing changes on any
    rank: the inner optimizer is left as given, no group is added, no state is loaded. Only after
    the ranks agree does each commit the change. A step uses exactly one collective. When a
    gradient on any rank holds inf/nan, every rank sees a non-finite global sum and skips the
    step (nothing written, ``found_inf`` set). A step that fails its local checks on one rank
    still joins the all-reduce with NaN sums, so the other ranks skip that step instead of
    hanging, and then raises.

    Note: the sums travel in fp32, so a square sum beyond the fp32 range (‖g‖ ≳ 1.8e19) counts as
    non-finite and skips the step.
    """

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
        process_group: Any = None,
    ) -> None:
        if fused is not None and not isinstance(fused, bool):
            raise TypeError(f"fused must be None, True or False, got {type(fused).__name__}")
        if fused:  # accepted as None/False, so that LARS(...) with shards can become this class
            raise ValueError(
                "fused=True: sharded parameters always take the rewrite + inner step path "
                "(the norms need the all-reduce first); use fused=None or False"
            )
        # Without an initialised group (or with a bad one) there is no collective to join.
        rank, world = rank_world(process_group, "ShardedLARS")
        self.process_group = process_group
        self.rank = rank
        self.world_size = world
        self._group_ranks = dist.get_process_group_ranks(
            process_group if process_group is not None else dist.group.WORLD
        )
        self._n = 0
        self._contrib = np.zeros(0)
        self._layout_key: tuple[Any, ...] | None = None
        self._device = torch.device("cpu")
        # LARS.__init__ checks its arguments, plans every group (weight decay, filter) and then
        # commits the plans into the inner optimizer's groups: hold the commits back until every
        # rank has agreed, so that a failure anywhere leaves every inner optimizer as given.
        self._held_plans: list[tuple[float, list[bool]]] | None = []
        layout: Layout | None = None
        problems: list[Problem] = []
        cause: Exception | None = None
        try:
            super().__init__(
                optimizer,
                epsilon,
                coefficient,
                use_clip,
                lars_filter,
                guard_zero_norm=guard_zero_norm,
                backend=backend,
                fused=False,
            )
        except Exception as exc:  # joined below, so that every rank raises it
            problems, cause = [problem(exc)], exc
        else:
            layout, problems = self._structure(self.param_groups, self._held_plans)
        finally:
            self._held_plans = None
        contrib = self._agree(layout, problems, cause)
        assert layout is not None  # _agree raised otherwise
        for group, plan in zip(self.param_groups, layout.plans, strict=True):
            LARS._commit_group(self, group, plan)
        self._adopt(layout, contrib)

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            "ShardedLARS holds a process group and cannot be pickled or deep-copied; "
            "checkpoint it with state_dict()"
        )

    def __repr__(self) -> str:
        return f"Sharded{super().__repr__()}\nover {self.world_size} ranks (this is {self.rank})"

    def _param_info(self, name: str, param: torch.Tensor) -> ParamInfo:
        shape = getattr(param, GLOBAL_SHAPE_ATTR, None)
        if shape is not None and not _is_dtensor(param):
            return ShardInfo(name, param, shape)
        return ParamInfo(name, param)

    _takes_shards = True
    # GradScaler calls step() on every rank, with grad_scale and found_inf set (see step)
    _step_supports_amp_scaling = True

    def _check_members(self, index: int, group: dict[str, Any]) -> None:
        """Not needed here: every step compares the parameters with the layout the ranks
        verified, and refuses a change until :meth:`verify_layout` (on every rank)."""

    def _commit_group(self, group: dict[str, Any], plan: tuple[float, list[bool]]) -> None:
        """LARS's commit of a group's plan, held back while the constructor has not yet agreed
        on the layout with the other ranks."""
        held = getattr(self, "_held_plans", None)
        if held is not None:
            held.append(plan)
            return
        LARS._commit_group(self, group, plan)

    # -- layout --

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """LARS's ``add_param_group`` (call it on every rank): the group is checked here first
        (torch's and LARS's checks, on a copy), then every rank joins the layout check, and only
        when all ranks agree is it added, on every rank; otherwise every rank raises the same
        error and none adds it."""
        layout: Layout | None = None
        problems: list[Problem] = []
        cause: Exception | None = None
        try:
            trial = self._trial_group(param_group)
        except Exception as exc:  # joined below, so that every rank raises it
            problems, cause = [problem(exc)], exc
        else:
            layout, problems = self._structure([*self.param_groups, trial])
        contrib = self._agree(layout, problems, cause)
        assert layout is not None  # _agree raised otherwise
        agreed = layout

        def add() -> None:
            self.optimizer.add_param_group(param_group)
            self._driver.invalidate()
            LARS._commit_group(self, self.param_groups[-1], agreed.plans[-1])

        self._commit(layout, contrib, add)

    def _trial_group(self, param_group: dict[str, Any]) -> dict[str, Any]:
        """``param_group`` as the inner optimizer would add it (torch's checks and defaults), made
        on a copy: nothing is added. The caller's dict is left alone, except that an iterator of
        parameters becomes a list (read once here, kept for the real add; torch does the same)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group.get("params")
        if isinstance(params, Iterator):
            param_group["params"] = list(params)
        trial = dict(param_group)
        stand_in = _GroupsStandIn(self.optimizer.defaults, list(self.param_groups))
        Optimizer.add_param_group(stand_in, trial)  # type: ignore[arg-type]
        _refuse_duplicates([*self.param_groups, trial])
        return trial

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """LARS's ``load_state_dict`` (this rank's checkpoint; call it on every rank). The
        checkpoint is checked here first without changing anything (LARS's and torch's checks,
        and the layout the load would give), then every rank joins the layout check, and only
        when all ranks agree does any rank load; otherwise every rank raises the same error and
        keeps its state."""
        layout: Layout | None = None
        problems: list[Problem] = []
        cause: Exception | None = None
        try:
            sd, hyper, preview = self._preview_load(state_dict)
        except Exception as exc:  # joined below, so that every rank raises it
            problems, cause = [problem(exc)], exc
        else:
            layout, problems = self._structure(preview)
        contrib = self._agree(layout, problems, cause)
        assert layout is not None  # _agree raised otherwise
        agreed = layout

        def load() -> None:
            self.optimizer.load_state_dict(sd)
            self._driver.invalidate()
            self._hyper = hyper
            for group, plan in zip(self.param_groups, agreed.plans, strict=True):
                LARS._commit_group(self, group, plan)

        self._commit(layout, contrib, load)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    # -- the step --
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One sharded LARS step (one all-reduce); skipped on every rank when a gradient on any
        rank holds inf/nan, or when a check fails on any rank (that rank raises; nothing is
        written anywhere).

        The inner optimizer's step runs after the collective. If it raises, this rank puts back
        every gradient LARS rewrote and re-raises; when it raises on some ranks only, the others
        have already stepped and the ranks are out of step: stop the run or reload a checkpoint
        on every rank (finding out would cost a second collective per step)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        return self._sharded_step(loss)

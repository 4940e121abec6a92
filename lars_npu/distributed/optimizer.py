"""``ShardedLARS``: :class:`lars_npu.LARS` on sharded parameters over a chosen process group.
The work is in :mod:`.engine` (the layout agreement of :mod:`.layout`, the step of
:mod:`.reduction`)."""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer

from ..filters import default_lars_filter
from ..optim import LARS, LarsFilter


class ShardedLARS(LARS):
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

    ``lars_npu.LARS(inner)`` on sharded parameters is this same optimizer over the default
    process group (a ``LARS``, sharded by composition: :mod:`lars_npu.distributed.engine`);
    this class adds ``process_group`` and requires sharded parameters. Everything else is
    :class:`lars_npu.LARS`: the arguments (``fused`` only None or False: the update always runs
    as rewrite + inner step), the weight decay, the filter (it sees the global shape), param
    groups, LR schedulers, ``found_inf`` and ``state_dict`` (per rank: it holds this rank's
    momentum shards).

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
        self._requested_group = process_group
        super().__init__(
            optimizer,
            epsilon,
            coefficient,
            use_clip,
            lars_filter,
            guard_zero_norm=guard_zero_norm,
            backend=backend,
            fused=fused,
        )

    def _sharding(self, optimizer: object) -> tuple[bool, Any]:
        return True, self._requested_group

    @property
    def process_group(self) -> Any:
        """The process group the norms are summed over (None: the default group)."""
        return self._requested_group

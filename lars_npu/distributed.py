"""LARS across processes (DESIGN.md §5): data parallel as is; sharded parameters, one all-reduce.

Data parallel (``DistributedDataParallel``): use :class:`lars_npu.LARS` unchanged. DDP averages the
gradients before ``step``, so every rank holds the full gradient and computes the same λ.

Sharded parameters (ZeRO-style flat shards, DTensor, FSDP2 ``fully_shard``): each rank holds a
piece of every parameter, so a rank alone cannot compute the per-layer norms. :class:`ShardedLARS`
computes the local Σw² and Σg² of every parameter, packs them into ONE flat fp32 tensor of 2·N
values (N parameters), sums it over the process group with ONE ``all_reduce``, and then applies
LARS to the local shards with the global sums: the same λ as single-process LARS on the full
tensors, the same ``g' = λ·(g + wd·w)`` and the same inner-optimizer step. On the ``cpu`` backend
the local sums and the gradient rewrite are one native call each over all parameters, on the
AscendC kernels (``npu``, ``emu``) one launch each; other backends (and the kernels with mixed
dtypes) are called once per tensor (see :class:`ShardedLARS`).

A plain tensor must say which part of which parameter it is: make flat shards with
:func:`flat_shard`, or record the global shape of shards made elsewhere with
:func:`mark_flat_shard`. DTensor parameters (what ``fully_shard`` creates) describe themselves.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.optim import Optimizer

from . import reference
from ._backends import Hyper, MultiResult, resolve
from ._backends._native import kernel_threads, native
from ._backends._staging import contig, ptrs, unstage_grads
from ._backends.cpu import DTYPE_CODES
from ._engines import GLOBAL_SHAPE_ATTR
from ._engines import is_dtensor as _is_dtensor
from ._fused import check_buffer, check_written
from .filters import ParamInfo, default_lars_filter
from .functional import SUPPORTED_DTYPES, check_pair, to_float
from .optim import LARS, save_grads

__all__ = [
    "ShardInfo",
    "ShardedLARS",
    "flat_shard",
    "global_shape",
    "mark_flat_shard",
    "mark_fsdp1",
]

LarsFilter = Callable[[ParamInfo], bool]

_FLAT = "flat"
_DTENSOR = "dtensor"


# -- flat shards -------------------------------------------------------------------------------


def _rank_world(process_group: Any, what: str) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{what} needs torch.distributed initialised: call "
            "torch.distributed.init_process_group(...) first (or launch with torchrun)"
        )
    if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(
            "process_group must be None or a torch.distributed.ProcessGroup, got "
            f"{type(process_group).__name__}"
        )
    rank = dist.get_rank(process_group)
    if rank < 0:
        raise ValueError("process_group: this process is not a member of the group")
    return rank, dist.get_world_size(process_group)


def _as_shape(shape: object, name: str) -> torch.Size:
    if isinstance(shape, torch.Size):
        return shape
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {type(shape).__name__}")
    out = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"{name} must be a sequence of ints, got an element {d!r}")
        if d < 0:
            raise ValueError(f"{name} must not have negative sizes, got {tuple(shape)}")
        out.append(d)
    return torch.Size(out)


def mark_flat_shard(tensor: torch.Tensor, global_shape: Sequence[int]) -> torch.Tensor:
    """Record that ``tensor`` (this rank's piece of a parameter) is a shard of a parameter of
    shape ``global_shape``, and return it.

    The ranks' pieces must partition the parameter: their element counts sum to the global
    element count (any contiguous split of the flattened tensor, the order is irrelevant for the
    norms). A tensor whose element count equals the global one on EVERY rank is a full replica;
    its sums are taken from one rank. Mark the ``nn.Parameter`` the optimizer holds.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if _is_dtensor(tensor):
        raise TypeError("tensor is a DTensor, which knows its global shape: do not mark it")
    setattr(tensor, GLOBAL_SHAPE_ATTR, _as_shape(global_shape, "global_shape"))
    return tensor


def flat_shard(tensor: torch.Tensor, process_group: Any = None) -> torch.Tensor:
    """This rank's contiguous piece of ``tensor.flatten()``, a new tensor marked with the global
    shape (:func:`mark_flat_shard`).

    The split is ``torch.tensor_split(flat, world_size)[rank]``: the first ``numel % world_size``
    ranks get one element more; a rank may get an empty piece. An ``nn.Parameter`` gives an
    ``nn.Parameter`` (same ``requires_grad``); any other tensor (e.g. a full gradient) gives a
    plain tensor, so ``p.grad = flat_shard(full_grad)`` shards a gradient the same way.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if _is_dtensor(tensor):
        raise TypeError("tensor is a DTensor; flat_shard takes a full (plain) tensor")
    rank, world = _rank_world(process_group, "flat_shard")
    piece = torch.tensor_split(tensor.detach().reshape(-1), world)[rank].clone()
    if isinstance(tensor, torch.nn.Parameter):
        piece = torch.nn.Parameter(piece, requires_grad=tensor.requires_grad)
    return mark_flat_shard(piece, tensor.shape)


def global_shape(tensor: torch.Tensor) -> torch.Size | None:
    """The shape of the whole parameter a shard belongs to: a DTensor's shape, the shape recorded
    by :func:`mark_flat_shard` / :func:`flat_shard`, else None."""
    if _is_dtensor(tensor):
        return tensor.shape
    return getattr(tensor, GLOBAL_SHAPE_ATTR, None)


def mark_fsdp1(module: torch.nn.Module) -> int:
    """Record the full shape on every parameter that FSDP1 (``FullyShardedDataParallel`` with
    ``use_orig_params=True``) manages in ``module`` (the FSDP-wrapped model), so that
    ``lars_npu.LARS`` takes them as flat shards: each rank's view is a contiguous piece of the
    flattened parameter (possibly empty), and the norms are summed over the ranks with one
    all-reduce per step. Call it after wrapping and before building the optimizer, on every rank.
    Returns the number of parameters marked.

    FSDP1 with ``use_orig_params=False`` hands the optimizer one ``FlatParameter`` per unit (a
    slice of many layers): no per-layer norm can be taken from it, so that is refused."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    marked = 0
    for m in module.modules():
        if not isinstance(m, FullyShardedDataParallel):
            continue
        handle = getattr(m, "_handle", None)
        if handle is None:  # a unit without parameters of its own
            continue
        flat = handle.flat_param
        if not getattr(handle, "_use_orig_params", False) or flat._params is None:
            raise ValueError(
                "mark_fsdp1: this FSDP1 module has use_orig_params=False, which gives the "
                "optimizer one FlatParameter per unit; wrap with use_orig_params=True"
            )
        for p, shape in zip(flat._params, flat._shapes, strict=True):
            mark_flat_shard(p, shape)
            marked += 1
    if marked == 0:
        raise ValueError(
            "mark_fsdp1: no FullyShardedDataParallel unit with parameters in this module (pass "
            "the FSDP-wrapped model)"
        )
    return marked


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor holding this rank's elements (shares storage: in-place writes reach ``t``)."""
    return t.to_local() if _is_dtensor(t) else t.detach()


@dataclass(frozen=True)
class ShardInfo(ParamInfo):
    """What ``lars_filter`` sees of a flat shard: ``shape`` and ``ndim`` are the parameter's global
    ones (so :func:`lars_npu.exclude_bias_and_norm` works); ``tensor`` is the local shard."""

    global_shape: torch.Size

    @property
    def shape(self) -> torch.Size:
        return self.global_shape

    @property
    def ndim(self) -> int:
        return len(self.global_shape)


# -- the layout every rank must agree on ---------------------------------------------------------


@dataclass(frozen=True)
class _Desc:
    """One parameter as one rank sees it (small and picklable, for all_gather_object)."""

    group: int
    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    numel: int  # local
    adapt: bool
    placements: str
    counted: bool = True  # DTensor: this rank's piece counts in the sums (local, not compared)


_COMPARED = (
    ("group", "param group"),
    ("kind", "kind"),
    ("shape", "global shape"),
    ("dtype", "dtype"),
    ("adapt", "lars_filter result"),
    ("placements", "DTensor placements"),
)


def _placement_problem(p: torch.Tensor, group_ranks: list[int]) -> str | None:
    """Why the sums of a DTensor cannot be reduced over ``group_ranks`` (None: they can). Any
    mesh dimension count works (FSDP2 1-D; HSDP's (replicate, shard); TP x FSDP), with Shard
    and Replicate placements, as long as the process group spans exactly the mesh's ranks."""
    from torch.distributed.tensor import Replicate, Shard

    mesh = p.device_mesh
    mesh_ranks = sorted(int(r) for r in mesh.mesh.flatten().tolist())
    if mesh_ranks != sorted(group_ranks):
        return (
            f"is a DTensor on a device mesh of ranks {mesh_ranks}, but ShardedLARS reduces over "
            f"ranks {sorted(group_ranks)}; pass a process group of exactly the mesh's ranks"
        )
    for pl in p.placements:
        if not isinstance(pl, (Shard, Replicate)):
            return f"has DTensor placement {pl}; only Shard and Replicate are supported"
    return None


def _counted(p: torch.Tensor) -> bool:
    """Whether this rank's local piece of DTensor ``p`` counts in the global sums: it does on
    the ranks whose mesh coordinate is 0 along every Replicate dimension (those ranks' pieces
    partition the tensor exactly once; the replicas add 0·x, which keeps inf/nan visible)."""
    from torch.distributed.tensor import Replicate

    coord = p.device_mesh.get_coordinate()
    if coord is None:  # not in the mesh: refused by _placement_problem
        return False
    return all(
        c == 0 for c, pl in zip(coord, p.placements, strict=True) if isinstance(pl, Replicate)
    )


# A problem one rank found, sent to every rank: (exception class name, message).
_Problem = tuple[str, str]
_RAISES: dict[str, type[Exception]] = {
    "TypeError": TypeError,
    "ValueError": ValueError,
    "RuntimeError": RuntimeError,
}


def _problem(exc: Exception) -> _Problem:
    """What every rank raises for one rank's exception: a TypeError or ValueError keeps its
    class, anything else becomes a RuntimeError; the message names a subclass."""
    if isinstance(exc, ValueError):
        kind = "ValueError"
    elif isinstance(exc, TypeError):
        kind = "TypeError"
    else:
        kind = "RuntimeError"
    text = str(exc) if type(exc).__name__ == kind else f"{type(exc).__name__}: {exc}"
    return kind, text


@dataclass(frozen=True)
class _Layout:
    """One rank's view of the param groups: the descriptors to gather, the groups' (weight
    decay, filter result) plans to commit, the key a step compares against, and the device of
    the step's buffer."""

    descs: list[_Desc]
    plans: list[tuple[float, list[bool]]]
    key: tuple[Any, ...]
    device: torch.device


def _collective_device(process_group: Any) -> torch.device:
    """Where the group's collectives take tensors, for a layout without parameters: the CPU for
    gloo, else the current accelerator of nccl / hccl."""
    name = str(dist.get_backend(process_group)).lower()
    if "gloo" not in name:
        if "nccl" in name and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        npu = getattr(torch, "npu", None)
        if "hccl" in name and npu is not None:
            return torch.device("npu", npu.current_device())
    return torch.device("cpu")


class _GroupsStandIn:
    """What ``torch.optim.Optimizer.add_param_group`` reads and appends to, with a copy of the
    group list: its checks and defaults run without adding anything."""

    def __init__(self, defaults: dict[str, Any], param_groups: list[dict[str, Any]]) -> None:
        self.defaults = defaults
        self.param_groups = param_groups


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
        lars_filter: LarsFilter = default_lars_filter,
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
        rank, world = _rank_world(process_group, "ShardedLARS")
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
        layout: _Layout | None = None
        problems: list[_Problem] = []
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
            problems, cause = [_problem(exc)], exc
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
    def _structure(
        self,
        groups: list[dict[str, Any]],
        plans: list[tuple[float, list[bool]]] | None = None,
    ) -> tuple[_Layout | None, list[_Problem]]:
        """This rank's view of ``groups`` (the param groups as they are, or as they would be after
        an ``add_param_group`` / ``load_state_dict``): the layout, and the problems found
        locally. Reads only, and never raises: every rank must reach the all_gather first, so
        that all of them raise together. ``plans`` are the groups' (weight decay, filter result)
        when already computed; else :meth:`_plan_group` computes them."""
        try:
            return self._describe(groups, plans)
        except Exception as exc:  # a group LARS refuses, the user's lars_filter raising, ...
            return None, [_problem(exc)]

    def _describe(
        self,
        groups: list[dict[str, Any]],
        plans: list[tuple[float, list[bool]]] | None,
    ) -> tuple[_Layout, list[_Problem]]:
        descs: list[_Desc] = []
        problems: list[_Problem] = []
        key: list[Any] = []
        done: list[tuple[float, list[bool]]] = []
        devices: list[torch.device] = []

        def refuse(text: str) -> None:  # a layout problem
            problems.append(("ValueError", text))

        for gi, group in enumerate(groups):
            plan = plans[gi] if plans is not None else self._plan_group(gi, group)
            done.append(plan)
            mask = plan[1]
            names = group.get("param_names")
            key.append((len(group["params"]), tuple(mask)))
            for j, p in enumerate(group["params"]):
                name = names[j] if names else f"param_groups[{gi}][{j}]"
                placements = ""
                counted = True
                if _is_dtensor(p):
                    kind, shape = _DTENSOR, tuple(p.shape)
                    placements = str(tuple(p.placements))
                    why = _placement_problem(p, self._group_ranks)
                    if why is not None:
                        refuse(f"parameter {name!r} {why}")
                    else:
                        counted = _counted(p)
                else:
                    kind = _FLAT
                    marked = getattr(p, GLOBAL_SHAPE_ATTR, None)
                    shape = tuple(marked) if marked is not None else ()
                    if marked is None:
                        refuse(
                            f"parameter {name!r} is a plain tensor with no recorded global "
                            "shape; make it with lars_npu.distributed.flat_shard, mark it with "
                            "mark_flat_shard(param, global_shape), or use DTensor parameters"
                        )
                local = _local(p)
                if p.dtype not in SUPPORTED_DTYPES:
                    refuse(f"parameter {name!r} has unsupported dtype {p.dtype}")
                if local.device not in devices:
                    devices.append(local.device)
                key.append((id(p), local.numel(), shape))
                descs.append(
                    _Desc(
                        gi,
                        name,
                        kind,
                        shape,
                        str(p.dtype),
                        local.numel(),
                        mask[j],
                        placements,
                        counted,
                    )
                )
        if len(devices) > 1:
            refuse(
                f"parameters are on several devices ({sorted(map(str, devices))}); "
                "ShardedLARS needs every local shard on one device"
            )
        device = devices[0] if devices else _collective_device(self.process_group)
        return _Layout(descs, done, tuple(key), device), problems

    def _agree(
        self,
        layout: _Layout | None,
        problems: list[_Problem],
        cause: Exception | None = None,
    ) -> np.ndarray:
        """The layout check's one collective: send this rank's (descriptors or None, problems)
        to every rank, and raise the same error on every rank when any rank found a problem or
        the layouts do not fit; else return this rank's contribution per parameter. ``cause``
        (this rank's own exception) is chained to the error raised here."""
        mine = (layout.descs if layout is not None and not problems else None, problems)
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, mine, group=self.process_group)
        return self._check_gathered(gathered, cause)

    def _adopt(self, layout: _Layout, contrib: np.ndarray) -> None:
        self._n = len(layout.descs)
        self._contrib = contrib
        self._layout_key = layout.key
        self._device = layout.device

    def _commit(self, layout: _Layout, contrib: np.ndarray, change: Callable[[], None]) -> None:
        """Apply a change every rank has agreed to. Should it still fail here (it was checked
        beforehand), the other ranks have applied theirs: keep the agreed buffer size, so that
        this rank's steps still join the all-reduce (with NaN sums), but refuse them until
        :meth:`verify_layout`."""
        try:
            change()
        except BaseException:
            self._n, self._contrib, self._layout_key = len(layout.descs), contrib, None
            raise
        self._adopt(layout, contrib)

    def verify_layout(self) -> None:
        """Check, with one ``all_gather_object`` (call it on every rank), that all ranks hold the
        same parameters and that their shards fit together; raise the same error on every rank
        otherwise (a ``ValueError`` for a layout mismatch, or for a group LARS refuses on some
        rank). Run by the constructor, ``add_param_group`` and ``load_state_dict``; call it
        yourself after changing the parameters in another way (on every rank)."""
        layout, problems = self._structure(self.param_groups)
        contrib = self._agree(layout, problems)
        assert layout is not None  # _agree raised otherwise
        self._adopt(layout, contrib)

    def _check_gathered(self, gathered: list[Any], cause: Exception | None = None) -> np.ndarray:
        """Compare every rank's descriptors (identical input on every rank, so an identical
        verdict); return per parameter 1.0 where this rank's sums count, else 0.0."""
        for r, (_, problems) in enumerate(gathered):
            if problems:
                kind, text = problems[0]
                err = _RAISES.get(kind, ValueError)(f"ShardedLARS: rank {r}: {text}")
                raise err from (cause if r == self.rank else None)
        all_descs = [d for d, _ in gathered]
        ref = all_descs[0]

        def counts(ds: list[_Desc]) -> str:
            groups = max(d.group for d in ds) + 1 if ds else 0
            per = [sum(1 for d in ds if d.group == gi) for gi in range(groups)]
            return f"{len(ds)} parameters (per group: {per})"

        for r, ds in enumerate(all_descs):
            if len(ds) != len(ref):
                raise ValueError(
                    f"ShardedLARS: shard layouts differ across ranks: rank 0 has {counts(ref)}, "
                    f"rank {r} has {counts(ds)}"
                )
            for a, b in zip(ref, ds, strict=True):
                if a.name != b.name:
                    raise ValueError(
                        f"ShardedLARS: shard layouts differ across ranks: parameter {a.name!r} "
                        f"on rank 0 is {b.name!r} on rank {r} (same position)"
                    )
                for field, label in _COMPARED:
                    va, vb = getattr(a, field), getattr(b, field)
                    if va != vb:
                        raise ValueError(
                            f"ShardedLARS: shard layouts differ across ranks: parameter "
                            f"{a.name!r} has {label} {va} on rank 0 but {vb} on rank {r}"
                        )
        contrib = np.ones(len(ref))
        for i, d in enumerate(ref):
            if d.kind == _DTENSOR:
                if not all_descs[self.rank][i].counted:
                    contrib[i] = 0.0
                continue
            total = math.prod(d.shape)
            sizes = [ds[i].numel for ds in all_descs]
            if sum(sizes) == total:
                continue
            if all(s == total for s in sizes):  # a full replica on every rank: count it once
                contrib[i] = 1.0 if self.rank == 0 else 0.0
                continue
            raise ValueError(
                f"ShardedLARS: parameter {d.name!r} has global shape {d.shape} ({total} "
                f"elements), but the ranks' shards hold {sizes} elements (sum {sum(sizes)}): "
                "they neither partition it nor replicate it"
            )
        return contrib

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """LARS's ``add_param_group`` (call it on every rank): the group is checked here first
        (torch's and LARS's checks, on a copy), then every rank joins the layout check, and only
        when all ranks agree is it added, on every rank; otherwise every rank raises the same
        error and none adds it."""
        layout: _Layout | None = None
        problems: list[_Problem] = []
        cause: Exception | None = None
        try:
            trial = self._trial_group(param_group)
        except Exception as exc:  # joined below, so that every rank raises it
            problems, cause = [_problem(exc)], exc
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
        return trial

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """LARS's ``load_state_dict`` (this rank's checkpoint; call it on every rank). The
        checkpoint is checked here first without changing anything (LARS's and torch's checks,
        and the layout the load would give), then every rank joins the layout check, and only
        when all ranks agree does any rank load; otherwise every rank raises the same error and
        keeps its state."""
        layout: _Layout | None = None
        problems: list[_Problem] = []
        cause: Exception | None = None
        try:
            sd, hyper, preview = self._preview_load(state_dict)
        except Exception as exc:  # joined below, so that every rank raises it
            problems, cause = [_problem(exc)], exc
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

    def _preview_load(
        self, state_dict: dict[str, Any]
    ) -> tuple[dict[str, Any], Hyper, list[dict[str, Any]]]:
        """LARS's ``load_state_dict`` up to where it would change something: the pre-hooks, the
        hyper-parameters, torch's group-count and group-size checks. Returns the state dict to
        hand to the inner optimizer, the hyper-parameters, and the param groups as the load
        would leave them (checkpoint values, this optimizer's parameters) for the layout check."""
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
        self._check_loaded_state(sd)
        return sd, hyper, preview

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

    def _step_device(self) -> torch.device:
        """The device of the step's buffer: the first parameter's, in any group (the layout check
        made sure they share one; read each step, in case the parameters were moved since), else
        the one the last layout check recorded (the collective's, for a layout without
        parameters). Never raises: the error path's NaN all-reduce depends on it."""
        with contextlib.suppress(Exception):
            for group in self.param_groups:
                for p in group["params"]:
                    return _local(p).device
        return self._device

    def _sharded_step(self, loss: Any) -> Any:
        # GradScaler (this class has _step_supports_amp_scaling): it sets grad_scale (None when
        # the user already unscaled) and found_inf before calling step() on EVERY rank, so that
        # a rank whose scaled gradients overflowed still joins the all-reduce, poisoned, and
        # every rank skips the step together (instead of that rank skipping alone and the
        # others waiting in the collective). Each rank unscales its own sums and gradients.
        scale = self.__dict__.get("grad_scale")
        inv = None if scale is None else 1.0 / float(scale)
        overflowed = self._given_found_inf is not None and bool(self._given_found_inf)
        try:
            prep = self._prepare(g_factor=1.0 if inv is None else inv * inv, unscale=inv)
        except Exception:
            # Join the step's one collective with NaN sums, so the other ranks skip this step
            # instead of waiting for us; then report (the original error, not a later one).
            device = self._step_device()
            poison = torch.full((2 * self._n,), math.nan, dtype=torch.float32, device=device)
            with contextlib.suppress(Exception):
                dist.all_reduce(poison, group=self.process_group)
            raise
        buf, plans, slots, ws, gs, adapt, wds, lrs, names, backend, device = prep
        if overflowed:
            buf[self._n :] = math.nan  # this rank's share says: skip, on every rank
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.process_group)
        total = buf.to(device="cpu", dtype=torch.float64).numpy()
        n = self._n
        w_tot, g_tot = total[:n], total[n:]
        found = not bool(np.isfinite(g_tot).all())
        k = len(gs)
        if found:
            nan = torch.full((k,), math.nan, dtype=torch.float64)
            result = MultiResult(torch.tensor(True, device=device), nan)
            return self._finish(result, names, adapt, plans, loss, inner=True)
        h = self._hyper
        lam = np.ones(k)
        for i in range(k):
            if adapt[i]:
                s = slots[i]
                lam[i] = reference.trust_ratio(
                    w_tot[s],
                    g_tot[s],
                    wds[i],
                    lrs[i],
                    epsilon=h.epsilon,
                    coefficient=h.coefficient,
                    use_clip=h.use_clip,
                    guard_zero_norm=h.guard_zero_norm,
                )
        todo = [i for i in range(k) if adapt[i] and gs[i].numel() > 0]
        # put back if the inner step raises (every gradient, when unscaling writes them all)
        saved = save_grads(gs, adapt if inv is None else [True] * k, self._undo)
        if inv is not None:
            for g in gs:
                g.mul_(inv)
        if todo and backend.name == "cpu":
            C = native()
            wc = [contig(ws[i]) for i in todo]
            gc = [contig(gs[i]) for i in todo]
            g_ptr = ptrs(gc)
            C.lars_rewrite(
                ptrs(wc),
                g_ptr,
                g_ptr,  # in place, as the single-process kernel does
                np.fromiter((g.numel() for g in gc), dtype=np.int64, count=len(gc)),
                np.fromiter((DTYPE_CODES[g.dtype] for g in gc), dtype=np.int64, count=len(gc)),
                lam[todo],
                np.asarray([wds[i] for i in todo], dtype=np.float64),
                kernel_threads(),
            )
            unstage_grads([gs[i] for i in todo], gc)
        elif todo and self._rewrite_in_one_launch(backend, todo, slots, ws, gs, w_tot, g_tot,
                                                  wds, lrs, lam):  # fmt: skip
            pass  # the AscendC kernels (npu, emu): one update launch for every tensor
        else:  # one lars_update per tensor
            for i in todo:
                s = slots[i]
                out = backend.lars_update(ws[i], gs[i], w_tot[s], g_tot[s], wds[i], lrs[i], h)
                gs[i].copy_(out)
        result = MultiResult(torch.tensor(False, device=device), torch.from_numpy(lam))
        return self._finish(result, names, adapt, plans, loss, inner=True, saved=saved)

    def _rewrite_in_one_launch(
        self,
        backend: Any,
        todo: list[int],
        slots: list[int],
        ws: list[torch.Tensor],
        gs: list[torch.Tensor],
        w_tot: np.ndarray,
        g_tot: np.ndarray,
        wds: list[float],
        lrs: list[float],
        lam: np.ndarray,
    ) -> bool:
        """The rewrite with the global sums in one call of a backend that has it (the AscendC
        kernels' lars_rewrite_given_); λ as the kernel applied it goes into ``lam``. False when
        the backend cannot (the caller goes tensor by tensor)."""
        rewrite = getattr(backend, "lars_rewrite_given_", None)
        if rewrite is None:
            return False
        sl = [slots[i] for i in todo]
        out = rewrite(
            [ws[i] for i in todo],
            [gs[i] for i in todo],
            [True] * len(todo),
            w_tot[sl],
            g_tot[sl],
            [wds[i] for i in todo],
            [lrs[i] for i in todo],
            self._hyper,
        )
        if out is None:
            return False
        found, applied = out
        if found:  # cannot happen: the sums were checked finite before
            raise RuntimeError("ShardedLARS: the kernels found a non-finite sum the host did not")
        lam[todo] = applied
        return True

    def _prepare(self, g_factor: float = 1.0, unscale: float | None = None) -> tuple[Any, ...]:
        """Validate, and compute the local sums into the buffer to all-reduce (Σg² times
        ``g_factor``: 1/scale² under a GradScaler). Writes nothing. ``unscale``: the gradients
        will be multiplied by it, so each must be writable (sparse ones are refused)."""
        plans = []
        slots: list[int] = []
        ws: list[torch.Tensor] = []
        gs: list[torch.Tensor] = []
        adapt: list[bool] = []
        wds: list[float] = []
        lrs: list[float] = []
        names: list[str] = []
        key: list[Any] = []
        slot = 0
        for gi, group in enumerate(self.param_groups):
            wd, mask = self._plan_group(gi, group)
            plans.append((wd, mask))
            lr = to_float(group["lr"], f"param_groups[{gi}]['lr']", minimum=0.0)
            pnames = group.get("param_names")
            key.append((len(group["params"]), tuple(mask)))
            for j, p in enumerate(group["params"]):
                name = pnames[j] if pnames else f"param_groups[{gi}][{j}]"
                w = _local(p)
                key.append((id(p), w.numel(), tuple(global_shape(p) or ())))
                g = p.grad
                here, slot = slot, slot + 1
                if g is None:
                    continue
                if g.is_sparse or g.layout != torch.strided:
                    if unscale is not None:
                        raise ValueError(
                            f"parameter {name!r} has a sparse gradient, which ShardedLARS "
                            "cannot unscale for GradScaler; exclude it from GradScaler's "
                            "optimizer or use dense gradients"
                        )
                    if mask[j]:
                        raise ValueError(
                            f"parameter {name!r} has a sparse gradient; LARS cannot adapt it "
                            "(exclude it with lars_filter to let the inner optimizer handle it)"
                        )
                    continue
                if _is_dtensor(p) != _is_dtensor(g):
                    raise TypeError(
                        f"parameter {name!r}: a DTensor parameter needs a DTensor gradient and a "
                        "plain one a plain gradient"
                    )
                if _is_dtensor(g) and tuple(g.placements) != tuple(p.placements):
                    raise ValueError(
                        f"gradient of parameter {name!r} has placements {tuple(g.placements)}, "
                        f"the parameter {tuple(p.placements)}; redistribute it first"
                    )
                gl = _local(g)
                check_pair(w, gl, f"parameter {name!r}", f"gradient of parameter {name!r}")
                if mask[j] or unscale is not None:  # rewritten (or unscaled) in place
                    check_written(gl, f"gradient of parameter {name!r}")
                st = self.state.get(p)
                buf = st.get("momentum_buffer") if st else None
                if buf is not None:  # the inner step writes it: it must fit (checked first)
                    check_buffer(w, _local(buf), name)
                slots.append(here)
                ws.append(w)
                gs.append(gl)
                adapt.append(mask[j])
                wds.append(wd)
                lrs.append(lr)
                names.append(name)
        if tuple(key) != self._layout_key:
            raise ValueError(
                "ShardedLARS: the parameters changed since their layout was verified (another "
                "parameter, a new shape or filter result); call opt.verify_layout() on every "
                "rank after changing them"
            )
        device = self._step_device()  # one device: verified
        backend = resolve(device, self.backend)
        sums = self._local_sums(backend, device, slots, ws, gs, adapt, g_factor)
        return (sums, plans, slots, ws, gs,
                adapt, wds, lrs, names, backend, device)  # fmt: skip

    def _local_sums(
        self,
        backend: Any,
        device: torch.device,
        slots: list[int],
        ws: list[torch.Tensor],
        gs: list[torch.Tensor],
        adapt: list[bool],
        g_factor: float = 1.0,
    ) -> torch.Tensor:
        """The buffer to all-reduce: fp32 ``[Σw² of every parameter | Σg² of every parameter]``
        over this rank's elements (Σg² times ``g_factor``, this rank's 1/scale² under a
        GradScaler), on ``device``; 0 where this rank has no gradient or (Σw²) the
        filter excludes the parameter. A rank whose copy does not count (replicas) adds 0·x: 0
        when x is finite, nan when not, so a non-finite gradient anywhere reaches every rank."""
        n = self._n
        if not gs:
            return torch.zeros(2 * n, dtype=torch.float32, device=device)
        idx = np.asarray(slots, dtype=np.int64)
        c = self._contrib[idx]
        if backend.name == "cpu":  # one native call for every tensor (fp64 accumulation)
            wc = [contig(w) if a else None for w, a in zip(ws, adapt, strict=True)]
            gc = [contig(g) for g in gs]
            w_s, g_s = native().square_sums(
                ptrs(wc),
                ptrs(gc),
                np.fromiter((g.numel() for g in gc), dtype=np.int64, count=len(gc)),
                np.fromiter((DTYPE_CODES[g.dtype] for g in gc), dtype=np.int64, count=len(gc)),
                kernel_threads(),
            )
            vals = np.zeros(2 * n)
            vals[idx] = w_s * c
            vals[n + idx] = g_s * c * g_factor
            with np.errstate(over="ignore"):  # beyond the fp32 range: inf, the step is skipped
                buf = torch.from_numpy(vals.astype(np.float32))
            return buf if device.type == "cpu" else buf.to(device)
        multi = getattr(backend, "square_sums", None)
        sums = multi(ws, gs, adapt) if multi is not None else None
        if sums is not None:  # the AscendC kernels (npu, emu): one square-sums launch
            vals = np.zeros(2 * n)
            vals[idx] = sums[0] * c
            vals[n + idx] = sums[1] * c * g_factor
            with np.errstate(over="ignore"):
                buf = torch.from_numpy(vals.astype(np.float32))
            return buf if device.type == "cpu" else buf.to(device)
        # Other backends (torch ops on an accelerator, the NumPy reference; the kernels with
        # mixed dtypes): their own SquareSumAll once per tensor, the buffer assembled where the
        # tensors are.
        pairs = [backend.square_sum_all(w, g) for w, g in zip(ws, gs, strict=True)]
        keep = torch.tensor([float(a) for a in adapt], dtype=torch.float32)
        ct = torch.from_numpy(c.astype(np.float32))
        w_s = torch.stack([x.float().to(device) for x, _ in pairs])
        g_s = torch.stack([y.float().to(device) for _, y in pairs])
        w_s = torch.where(keep.to(device) > 0, w_s, torch.zeros_like(w_s))
        buf = torch.zeros(2 * n, dtype=torch.float32, device=device)
        it = torch.from_numpy(idx).to(device)
        buf[it] = w_s * ct.to(device)
        buf[it + n] = g_s * (ct * g_factor).to(device)
        return buf

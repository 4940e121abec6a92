"""Which piece of which parameter a rank holds: flat shards (made here, marked here, or by
FSDP1 via :func:`mark_fsdp1`) and DTensors (their mesh and placements)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist

from .._compat import fsdp1_units
from .._engines import GLOBAL_SHAPE_ATTR
from .._engines import is_dtensor as _is_dtensor
from ..filters import ParamInfo


def rank_world(process_group: Any, what: str) -> tuple[int, int]:
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
    rank, world = rank_world(process_group, "flat_shard")
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
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    marked = 0
    for orig, params, shapes in fsdp1_units(module):
        if not orig:
            raise ValueError(
                "mark_fsdp1: this FSDP1 module has use_orig_params=False, which gives the "
                "optimizer one FlatParameter per unit; wrap with use_orig_params=True"
            )
        for p, shape in zip(params, shapes, strict=True):
            mark_flat_shard(p, shape)
            marked += 1
    if marked == 0:
        raise ValueError(
            "mark_fsdp1: no FullyShardedDataParallel unit with parameters in this module (pass "
            "the FSDP-wrapped model)"
        )
    return marked


def local_of(t: torch.Tensor) -> torch.Tensor:
    """The tensor holding this rank's elements (shares storage: in-place writes reach ``t``)."""
    return cast(Any, t).to_local() if _is_dtensor(t) else t.detach()


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


def placement_problem(p: Any, group_ranks: list[int]) -> str | None:
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


def counted(p: Any) -> bool:
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


def collective_device(process_group: Any) -> torch.device:
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

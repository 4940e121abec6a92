"""The layout every rank must agree on: each rank describes its parameters (names, groups,
global shapes, dtypes, filter results, shard sizes), one ``all_gather_object`` brings every
rank's description (or its problem) to every rank, and every rank reaches the same verdict."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .._engines import GLOBAL_SHAPE_ATTR
from .._engines import is_dtensor as _is_dtensor
from .._groups import GroupPlan
from ..functional import SUPPORTED_DTYPES
from .shards import collective_device, local_of, placement_problem, rank_world
from .shards import counted as dtensor_counted

_FLAT = "flat"
_DTENSOR = "dtensor"

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


# A problem one rank found, sent to every rank: (exception class name, message).
Problem = tuple[str, str]
_RAISES: dict[str, type[Exception]] = {
    "TypeError": TypeError,
    "ValueError": ValueError,
    "RuntimeError": RuntimeError,
}


def problem(exc: Exception) -> Problem:
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
class Layout:
    """One rank's view of the param groups: the descriptors to gather, the groups' (weight
    decay, filter result) plans to commit, the key a step compares against, and the device of
    the step's buffer."""

    descs: list[_Desc]
    plans: list[GroupPlan]
    key: tuple[Any, ...]
    device: torch.device


class Agreement:
    """The layout check of a sharded LARS (its constructor, ``add_param_group``,
    ``load_state_dict`` and ``verify_layout`` go through it), and the layout the ranks last
    agreed on: ``n`` parameters, this rank's contribution to each one's sums, the key a step
    compares the parameters against, and the device of the step's buffer."""

    def __init__(self, process_group: Any) -> None:
        # Without an initialised group (or with a bad one) there is no collective to join.
        self.process_group = process_group
        self.rank, self.world_size = rank_world(process_group, "LARS on sharded parameters")
        self.group_ranks: list[int] = dist.get_process_group_ranks(
            process_group if process_group is not None else dist.group.WORLD
        )
        self.n = 0
        self.contrib = np.zeros(0)
        self.key: tuple[Any, ...] | None = None
        self.device = torch.device("cpu")

    def structure(
        self,
        groups: list[dict[str, Any]],
        plan: Callable[[int, dict[str, Any]], GroupPlan],
        plans: list[GroupPlan] | None = None,
    ) -> tuple[Layout | None, list[Problem]]:
        """This rank's view of ``groups`` (the param groups as they are, or as they would be after
        an ``add_param_group`` / ``load_state_dict``): the layout, and the problems found
        locally. Reads only, and never raises: every rank must reach the all_gather first, so
        that all of them raise together. ``plans`` are the groups' (weight decay, filter result)
        when already computed; else ``plan`` computes them."""
        try:
            return self._describe(groups, plan, plans)
        except Exception as exc:  # a group LARS refuses, the user's lars_filter raising, ...
            return None, [problem(exc)]

    def _describe(
        self,
        groups: list[dict[str, Any]],
        plan_of: Callable[[int, dict[str, Any]], GroupPlan],
        plans: list[GroupPlan] | None,
    ) -> tuple[Layout, list[Problem]]:
        descs: list[_Desc] = []
        problems: list[Problem] = []
        key: list[Any] = []
        done: list[GroupPlan] = []
        devices: list[torch.device] = []

        def refuse(text: str) -> None:  # a layout problem
            problems.append(("ValueError", text))

        for gi, group in enumerate(groups):
            plan = plans[gi] if plans is not None else plan_of(gi, group)
            done.append(plan)
            mask = plan.mask
            names = group.get("param_names")
            key.append((len(group["params"]), tuple(mask)))
            for j, p in enumerate(group["params"]):
                name = names[j] if names else f"param_groups[{gi}][{j}]"
                placements = ""
                counted = True
                if _is_dtensor(p):
                    kind, shape = _DTENSOR, tuple(p.shape)
                    placements = str(tuple(p.placements))
                    why = placement_problem(p, self.group_ranks)
                    if why is not None:
                        refuse(f"parameter {name!r} {why}")
                    else:
                        counted = dtensor_counted(p)
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
                local = local_of(p)
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
        device = devices[0] if devices else collective_device(self.process_group)
        return Layout(descs, done, tuple(key), device), problems

    def agree(
        self,
        layout: Layout | None,
        problems: list[Problem],
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

    def adopt(self, layout: Layout, contrib: np.ndarray) -> None:
        self.n = len(layout.descs)
        self.contrib = contrib
        self.key = layout.key
        self.device = layout.device

    def commit(self, layout: Layout, contrib: np.ndarray, change: Callable[[], None]) -> None:
        """Apply a change every rank has agreed to. Should it still fail here (it was checked
        beforehand), the other ranks have applied theirs: keep the agreed buffer size, so that
        this rank's steps still join the all-reduce (with NaN sums), but refuse them until
        :meth:`verify_layout`."""
        try:
            change()
        except BaseException:
            self.n, self.contrib, self.key = len(layout.descs), contrib, None
            raise
        self.adopt(layout, contrib)

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

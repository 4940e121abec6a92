"""Param groups as LARS reads them: each group's settings checked once per step, the filter's
result per parameter (``lars_mask``), and the records that notice a group whose tensors were
swapped since LARS last checked it.

A group's :class:`GroupPlan` is computed, read-only, before a step (or a load, or an
``add_param_group``) writes anything, and committed (the mask stored in the group, the group's
tensors recorded) only when that change goes through."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._backends.base import FP32_MAX
from ._engines import HANDLED, refusal, shard_kind
from .filters import ParamInfo, default_lars_filter, exclude_bias_and_norm
from .functional import to_float

LarsFilter = Callable[[ParamInfo], bool]

# Filters by name (lars_filter="exclude_bias_and_norm"): what ZeroRedundancyOptimizer stores in
# its param groups must load with torch.load(weights_only=True), so no function there.
FILTERS: dict[str, LarsFilter] = {
    "default": default_lars_filter,
    "exclude_bias_and_norm": exclude_bias_and_norm,
}

MASK_KEY = "lars_mask"  # the group key holding the filter's result per parameter


@dataclass(frozen=True)
class GroupPlan:
    """One group as a step uses it: the settings (checked) and the filter's result."""

    weight_decay: float
    lr: float
    momentum: float
    nesterov: bool
    mask: list[bool]


def param_name(group: dict[str, Any], index: int, j: int) -> str:
    """The name of parameter ``j`` of group ``index``: its ``param_names`` entry, else its
    position."""
    names = group.get("param_names")
    return names[j] if names and j < len(names) else f"param_groups[{index}][{j}]"


def check_settings(index: int, group: dict[str, Any], check_mask: bool = True) -> GroupPlan:
    """The group's settings, each rule checked here and nowhere else (steps, loads and
    ``add_param_group`` all come through): no ``maximize``, no ``differentiable``, a finite
    weight decay, lr, momentum and dampening in range, and ``lars_mask`` (unless
    ``check_mask`` is False) a list of bools, one per parameter. The plan's mask is empty."""
    where = f"param_groups[{index}]"
    if group.get("maximize", False):
        raise ValueError(
            f"{where} has maximize=True: LARS folds weight decay into the gradient "
            "(g' = λ(g + wd·w)), which the inner optimizer's negation would turn into weight "
            "growth; minimise the negated loss instead"
        )
    if group.get("differentiable", False):
        raise ValueError(
            f"{where} has differentiable=True: LARS computes the trust ratio outside autograd, "
            "so the step cannot be differentiated; use differentiable=False"
        )
    if "lr" not in group:
        raise ValueError(f"{where} has no 'lr': LARS needs the inner optimizer's learning rate")

    def number(key: str, default: float = 0.0) -> float:
        return to_float(group.get(key, default), f"{where}['{key}']", minimum=0.0, maximum=FP32_MAX)

    wd, lr, mu = number("weight_decay"), number("lr"), number("momentum")
    if "dampening" in group:
        number("dampening")
    mask = group.get(MASK_KEY) if check_mask else None
    if mask is not None and (
        not isinstance(mask, list)
        or len(mask) != len(group["params"])
        or not set(map(type, mask)) <= {bool}  # bool has no subclasses; C-speed per step
    ):
        raise TypeError(f"{where}['{MASK_KEY}'] must be a list of bools, one per parameter")
    return GroupPlan(wd, lr, mu, bool(group.get("nesterov", False)), [])


def _shapes_text(shapes: list[torch.Size]) -> str:
    shown = ", ".join(str(tuple(x)) for x in shapes[:4])
    more = f", ... ({len(shapes)} tensors)" if len(shapes) > 4 else ""
    return f"shapes [{shown}{more}]"


class GroupPlanner:
    """Plans and commits param groups for one LARS optimizer.

    ``param_info`` makes what the filter sees of a parameter (the sharded path shows a flat
    shard's global shape); ``track_members``: refuse a group whose tensors were swapped for
    others of another number or shape (the sharded path compares against the layout the ranks
    agreed on instead)."""

    def __init__(
        self,
        lars_filter: LarsFilter,
        param_info: Callable[[str, torch.Tensor], ParamInfo] = ParamInfo,
        *,
        track_members: bool = True,
    ) -> None:
        self.lars_filter = lars_filter
        self.param_info = param_info
        self.track_members = track_members
        self.warned_names = False
        # by id(group): (group, its tensors, their shapes) and (group, the mask committed)
        self._members: dict[int, tuple[dict[str, Any], list[torch.Tensor], list[torch.Size]]] = {}
        self._masks: dict[int, tuple[dict[str, Any], list[bool]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # identities mean nothing in a copy: re-recorded at the next commit
        return {**self.__dict__, "_members": {}, "_masks": {}}

    def plan(self, index: int, group: dict[str, Any]) -> GroupPlan:
        """The group's plan, read-only. Its ``lars_mask`` is used when LARS put it there (a
        commit, or a checkpoint LARS loaded; in-place edits of it are followed); one that
        arrived another way (ZeroRedundancyOptimizer copies every group key between the ranks'
        optimizers when it loads a checkpoint) is not trusted: the filter runs again."""
        if self.track_members:
            self._check_members(index, group)
        committed = self._masks.get(id(group))
        foreign = (
            committed is not None
            and committed[0] is group
            and group.get(MASK_KEY) is not committed[1]
        )
        settings = check_settings(index, group, check_mask=not foreign)
        params = group["params"]
        mask = None if foreign else group.get(MASK_KEY)
        if not isinstance(mask, list) or len(mask) != len(params):
            mask = self._run_filter(group)
        return GroupPlan(
            settings.weight_decay, settings.lr, settings.momentum, settings.nesterov, mask
        )

    def _run_filter(self, group: dict[str, Any]) -> list[bool]:
        names = group.get("param_names")
        needs_names = self.lars_filter is not exclude_bias_and_norm
        if names is None and needs_names and not self.warned_names:
            self.warned_names = True
            warnings.warn(
                "LARS: the inner optimizer has no parameter names, so lars_filter sees '' for "
                "every parameter and the default filter adapts all of them (biases and norm "
                "weights included). Build the inner optimizer from model.named_parameters(), or "
                "pass lars_filter=lars_npu.exclude_bias_and_norm (needs no names).",
                UserWarning,
                stacklevel=5,
            )
        return [
            bool(self.lars_filter(self.param_info(names[j] if names else "", p)))
            for j, p in enumerate(group["params"])
        ]

    def commit(self, group: dict[str, Any], plan: GroupPlan, live: list[dict[str, Any]]) -> None:
        """Store the filter's result in the group and record which tensors it held (``live``:
        the optimizer's groups now; records of others are forgotten)."""
        group[MASK_KEY] = plan.mask
        self._masks[id(group)] = (group, plan.mask)
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
        ids = {id(g) for g in live}  # groups a load replaced: forget them
        for records in (self._members, self._masks):
            for key in [k for k in records if k not in ids]:
                del records[key]

    def _check_members(self, index: int, group: dict[str, Any]) -> None:
        """Refuse a group whose tensors were swapped, since LARS last checked it, for others of
        another number or shape: its filter results, and any norm, would belong to other
        tensors (DeepSpeed ZeRO 1/2 swap a group's parameters for one flat partition). A tensor
        swapped for one of the same shape is followed, as the filter result at its position."""
        rec = self._members.get(id(group))
        if rec is None or rec[0] is not group:
            return
        _, old, shapes = rec
        now = group["params"]
        if len(now) == len(old) and (
            all(map(operator.is_, now, old))  # the same tensors (C-level: every step)
            or all(q is p or q.shape == s for q, p, s in zip(now, old, shapes, strict=True))
        ):
            return
        if any(shard_kind(p) == "zero12" for p in old):
            raise ValueError(f"LARS: {refusal('zero12', param_name(group, index, 0))}")
        raise ValueError(
            f"LARS: param_groups[{index}]'s tensors were replaced since LARS checked them "
            f"(it held {_shapes_text(shapes)}, now {_shapes_text([q.shape for q in now])}): its "
            "filter results and norms would belong to other tensors. Build the optimizer again "
            "for the new parameters (or add them with add_param_group)"
        )


def refuse_shards(index: int, group: dict[str, Any], owner: str, takes_shards: bool) -> None:
    """A parameter that is a shard LARS would take a slice's norm of: refused by engine, with
    the recipe (``lars_npu._engines``). Shards with a known global shape pass when the
    optimizer is sharded (``takes_shards``)."""
    for j, p in enumerate(group.get("params", [])):
        kind = shard_kind(p) if isinstance(p, torch.Tensor) else None
        if kind is None or (kind in HANDLED and takes_shards):
            continue
        name = param_name(group, index, j)
        if kind in HANDLED:
            raise ValueError(
                f"{owner}: parameter {name!r} is a shard ({kind}), and this {owner} was built "
                "for whole tensors (the parameters became shards after it was built, as "
                "accelerate's FSDP2 does to an optimizer prepared with the model): build "
                "lars_npu.LARS(torch.optim.SGD(params, ...)) on the sharded parameters, after "
                "sharding the model; it then sums the norms over the ranks"
            )
        raise ValueError(f"LARS: {refusal(kind, name)}")


def refuse_duplicates(groups: list[dict[str, Any]]) -> None:
    """One Parameter listed twice (``named_parameters(remove_duplicate=False)``; torch's SGD
    only warns) would be stepped twice, differently on each path: refused, naming it."""
    seen: dict[int, tuple[int, int]] = {}
    for gi, group in enumerate(groups):
        for j, p in enumerate(group.get("params", [])):
            first = seen.setdefault(id(p), (gi, j))
            if first != (gi, j):
                raise ValueError(
                    f"LARS: parameter {param_name(group, gi, j)!r} appears twice in the "
                    f"optimizer (param_groups[{first[0]}][{first[1]}] and param_groups[{gi}]"
                    f"[{j}]; e.g. from named_parameters(remove_duplicate=False)): it would be "
                    "updated twice per step. List each parameter once"
                )

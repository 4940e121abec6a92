"""LARS checkpoints: the inner optimizer's state dict plus LARS's hyper-parameters, and a load
that checks everything before anything changes.

Layout of a LARS state dict: the inner optimizer's (its groups carry ``lars_mask``), with the
hyper-parameters under ``"lars"`` and again in every group as ``lars_epsilon``,
``lars_coefficient``, ``lars_use_clip``, ``lars_guard_zero_norm`` (tools that keep only
``state`` and ``param_groups``, like torch.distributed.checkpoint's get/set_state_dict, then
carry them too). No functions inside: it loads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer

from ._backends import Hyper
from ._checks import check_state_entry
from ._compat import instance_hooks
from ._groups import check_settings, param_name
from .functional import check_hyper

STATE_KEY = "lars"
HYPER_KEYS = ("epsilon", "coefficient", "use_clip", "guard_zero_norm")
GROUP_HYPER = {k: f"lars_{k}" for k in HYPER_KEYS}


def state_dict_of(owner: Optimizer, inner: Optimizer, hyper: Hyper) -> dict[str, Any]:
    """The state dict of ``owner`` (a LARS around ``inner``): the inner optimizer's with LARS's
    hyper-parameters added, through the owner's state-dict hooks."""
    for pre_hook in instance_hooks(owner, "state_dict_pre"):
        pre_hook(owner)
    sd = inner.state_dict()
    values = {k: getattr(hyper, k) for k in HYPER_KEYS}
    sd[STATE_KEY] = dict(values)
    sd["param_groups"] = [
        {**g, **{GROUP_HYPER[k]: v for k, v in values.items()}} for g in sd["param_groups"]
    ]
    for post_hook in instance_hooks(owner, "state_dict_post"):
        out = post_hook(owner, sd)
        if out is not None:
            sd = out
    return sd


@dataclass
class LoadPreview:
    """``load_state_dict`` up to where it would change something: the state dict to hand to the
    inner optimizer, the hyper-parameters to adopt, and the param groups as the load would
    leave them (checkpoint settings, this optimizer's parameters), for the plans."""

    state_dict: dict[str, Any]
    hyper: Hyper
    groups: list[dict[str, Any]]


def _split_hyper(sd: dict[str, Any], hyper: Hyper) -> Hyper:
    """Take LARS's entries out of ``sd`` (a copy) and return the hyper-parameters they hold."""
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
    if saved is None:
        return hyper
    if not isinstance(saved, dict):
        raise TypeError(f"state_dict['{STATE_KEY}'] must be a dict")
    return check_hyper(
        saved.get("epsilon", hyper.epsilon),
        saved.get("coefficient", hyper.coefficient),
        saved.get("use_clip", hyper.use_clip),
        saved.get("guard_zero_norm", hyper.guard_zero_norm),
    )


def _check_state(sd: dict[str, Any], groups: list[dict[str, Any]]) -> None:
    """Every state entry is checked as a step checks it (:func:`check_state_entry`) against the
    parameter it will be given to, and must hold finite values."""
    state = sd["state"]
    if not isinstance(state, dict):
        return  # torch's own load reports a malformed state dict
    for gi, (saved, group) in enumerate(zip(sd["param_groups"], groups, strict=True)):
        for j, (pid, p) in enumerate(zip(saved["params"], group["params"], strict=True)):
            entry = state.get(pid)
            if entry is None:
                continue
            name = param_name(group, gi, j)
            if not isinstance(entry, dict):
                raise TypeError(
                    f"loaded state of parameter {name!r} must be a dict, got {type(entry).__name__}"
                )
            for key, v in entry.items():
                check_state_entry(key, v, p, name, finite=True, loaded=True)


def preview_load(
    owner: Optimizer, inner: Optimizer, hyper: Hyper, state_dict: dict[str, Any]
) -> LoadPreview:
    """Check a checkpoint for ``owner`` (a LARS around ``inner``) without changing anything:
    the owner's load pre-hooks (applied to a copy), the hyper-parameters, torch's group-count
    and group-size checks, every saved group's settings and state."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    sd = dict(state_dict)
    for pre_hook in instance_hooks(owner, "load_state_dict_pre"):
        out = pre_hook(owner, sd)
        if out is not None:
            sd = out
    hyper = _split_hyper(sd, hyper)
    for entry in ("state", "param_groups"):
        if entry not in sd:
            raise ValueError(f"loaded state dict has no {entry!r} entry")
    saved_groups = sd["param_groups"]
    groups = inner.param_groups
    if not isinstance(saved_groups, list) or len(saved_groups) != len(groups):
        raise ValueError(
            "loaded state dict has a different number of parameter groups "
            f"({len(saved_groups)}; the optimizer has {len(groups)})"
        )
    preview = []
    for gi, (group, saved) in enumerate(zip(groups, saved_groups, strict=True)):
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
            raise TypeError(f"loaded state dict's param_groups[{gi}] must be a dict with 'params'")
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"loaded state dict's param_groups[{gi}] has {len(saved['params'])} "
                f"parameters, the optimizer's has {len(group['params'])}"
            )
        check_settings(gi, saved)
        view = {**saved, "params": group["params"]}  # as torch's load sets it
        if "param_names" in group and "param_names" not in saved:
            view["param_names"] = group["param_names"]
        preview.append(view)
    _check_state(sd, groups)
    return LoadPreview(sd, hyper, preview)

"""Memory shared between the tensors of one step.

A step writes some tensors (parameters, momentum buffers, and on the unfused path the gradients it
rewrites) and reads others (gradients). When a tensor it writes shares bytes with any other tensor
of the step, the result depends on the order of the writes: two parameters that are views of one
storage lose one update, a gradient that is its own parameter is rewritten before the inner step
reads the weight, one gradient shared by two parameters is rewritten twice. Every path refuses such
a step before any write, naming both tensors. Tensors that are only read may share memory (one
gradient read for two parameters by the fused step, say).

Overlap is judged on byte ranges ``[first byte, last byte]`` of each tensor, so two interleaved
strided views of one buffer (``x[0::2]``, ``x[1::2]``) count as overlapping: a refusal, never a
wrong result. The check sorts the ranges once, O(n log n) per step, n the number of tensors.
(The fused C++ step makes the same check natively: ``csrc/cpu/overlap.h``.)
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import cast

import numpy as np
import torch

__all__ = ["byte_ranges", "check_disjoint", "find_conflict"]

_DATA_PTR = torch.Tensor.data_ptr
_NBYTES = operator.attrgetter("nbytes")  # numel · element size: the extent of a contiguous one
_IS_CONTIGUOUS = torch.Tensor.is_contiguous
_DEVICE = operator.attrgetter("device")


def _extent(t: torch.Tensor) -> int:
    """Bytes from the first element's address to one past the last element's."""
    if t.numel() == 0:
        return 0
    last = sum((d - 1) * st for d, st in zip(t.shape, t.stride(), strict=True))
    return (last + 1) * t.element_size()


def byte_ranges(tensors: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """int64 arrays (first byte address, one past the last) per tensor; empty tensors give an
    empty range. (Per tensor three C-level reads; a Python loop only for non-contiguous ones.)"""
    n = len(tensors)
    begin = np.fromiter(map(_DATA_PTR, tensors), dtype=np.int64, count=n)
    size = np.fromiter(map(_NBYTES, tensors), dtype=np.int64, count=n)
    contiguous = np.fromiter(map(_IS_CONTIGUOUS, tensors), dtype=bool, count=n)
    for i in np.flatnonzero(~contiguous).tolist():
        size[i] = _extent(tensors[i])
    size[begin == 0] = 0  # no memory (meta tensors): nothing to share
    return begin, begin + size


def find_conflict(
    begin: np.ndarray, end: np.ndarray, written: np.ndarray
) -> tuple[int, int] | None:
    """Indices ``(i, j)`` of two ranges that overlap while at least one of them is written, or
    None. O(n log n): sorted by start, a range conflicts with an earlier one exactly when it
    starts before the furthest end of the earlier ranges (any of them when it is written, the
    written ones when it is only read)."""
    keep = np.flatnonzero(end > begin)  # empty ranges share nothing
    if keep.size < 2:
        return None
    order = keep[np.argsort(begin[keep], kind="stable")]
    b, e, w = begin[order], end[order], written[order].astype(bool)
    low = np.iinfo(np.int64).min
    reach_all = np.empty_like(e)
    reach_all[0] = low
    reach_all[1:] = np.maximum.accumulate(e)[:-1]
    reach_w = np.empty_like(e)
    reach_w[0] = low
    reach_w[1:] = np.maximum.accumulate(np.where(w, e, low))[:-1]
    bad = np.flatnonzero(np.where(w, b < reach_all, b < reach_w))
    if bad.size == 0:
        return None
    k = int(bad[0])
    for m in range(k - 1, -1, -1):  # its partner: an earlier range reaching past its start
        if e[m] > b[k] and (w[k] or w[m]):
            return int(order[m]), int(order[k])
    raise AssertionError("unreachable: a conflict without a partner")


Part = tuple[str, Sequence[torch.Tensor | None], Sequence[bool] | bool]


def check_disjoint(parts: Sequence[Part], names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming both tensors when a written tensor of the step shares memory
    with another of its tensors. ``parts``: (role, tensors aligned with ``names`` — None where
    absent —, written: one flag per tensor or one for all); the role is a template such as
    ``"gradient of parameter {}"``. The first part holds the parameters (no None): the tensors at
    position j are on parameter j's device (the pair checks refuse them otherwise), and
    addresses are compared within a device only."""
    tensors: list[torch.Tensor] = []
    flag_parts: list[np.ndarray] = []
    where_parts: list[np.ndarray] = []  # per tensor: part index, position
    for pi, (_, ts, written) in enumerate(parts):
        if any(t is None for t in ts):
            pos = np.asarray([j for j, t in enumerate(ts) if t is not None], dtype=np.int64)
            tensors.extend(ts[j] for j in pos.tolist())
        else:
            pos = np.arange(len(ts), dtype=np.int64)
            tensors.extend(cast("list[torch.Tensor]", ts))
        if isinstance(written, bool):
            flag_parts.append(np.full(len(pos), written, dtype=bool))
        else:
            flag_parts.append(np.asarray(written, dtype=bool)[pos])
        where_parts.append(np.stack([np.full(len(pos), pi, dtype=np.int64), pos], axis=1))
    if len(tensors) < 2:
        return
    begin, end = byte_ranges(tensors)
    flags = np.concatenate(flag_parts)
    where = np.concatenate(where_parts)
    devices = list(map(_DEVICE, parts[0][1]))
    groups: list[np.ndarray]
    if len(set(devices)) <= 1:
        groups = [np.arange(len(tensors))]
    else:  # addresses are compared within a device only
        by: dict[torch.device, list[int]] = {}
        for i, j in enumerate(where[:, 1].tolist()):
            by.setdefault(devices[j], []).append(i)
        groups = [np.asarray(v, dtype=np.int64) for v in by.values()]
    for idx in groups:
        hit = find_conflict(begin[idx], end[idx], flags[idx])
        if hit is not None:
            i, j = int(idx[hit[0]]), int(idx[hit[1]])
            a, b = (int(where[i, 0]), int(where[i, 1])), (int(where[j, 0]), int(where[j, 1]))
            raise ValueError(_message(parts, names, a, b, bool(flags[i]), bool(flags[j])))


def _label(parts: Sequence[Part], names: Sequence[str], at: tuple[int, int]) -> str:
    return parts[at[0]][0].format(repr(names[at[1]]))


def _message(
    parts: Sequence[Part],
    names: Sequence[str],
    a: tuple[int, int],
    b: tuple[int, int],
    a_written: bool,
    b_written: bool,
) -> str:
    first, second = _label(parts, names, a), _label(parts, names, b)
    same = a == b or first == second
    return sharing_message(first, second, same, a_written and b_written)


def sharing_message(first: str, second: str, same: bool, both_written: bool) -> str:
    """The refusal of a step in which ``first`` and ``second`` (labels) share memory; also the
    text of the native operators' refusal (lars_npu._ops)."""
    if same:
        what = f"{first} appears twice in this step"
    else:  # byte ranges: interleaved strided views intersect without sharing an element
        what = f"{first} and {second} share memory (their byte ranges overlap)"
    verb = "writes both" if both_written else "writes one while reading the other"
    return (
        f"LARS: {what}: the step {verb}, so the result would depend on the order of the "
        "writes; the step is refused (nothing written). Give each parameter its own storage "
        "(tie weights by using one Parameter object), and each gradient and momentum buffer "
        "memory of its own (e.g. p.grad = g.clone())"
    )

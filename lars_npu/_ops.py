"""The operators ``lars_npu._C`` registers in torch's dispatcher, ``torch.ops.lars_npu.*``
(csrc/ops/ops.cpp; docs/operators.md), and the errors they raise, turned into
:class:`TensorError` naming the parameter.

An operator checks every tensor it is given before it writes anything. A failure is a
``ValueError`` (``TypeError`` for a dtype) whose message starts ``lars_npu[<role> <index>]: ``;
:func:`named` makes it a :class:`TensorError` (or :class:`TensorTypeError`) with ``role``,
``index`` and the parameter's ``name``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from ._backends._native import native
from ._sharing import sharing_message

# bits of the per-tensor ``flags`` (csrc/ops/checks.h)
ADAPT, MOMENTUM, FIRST = 1, 2, 4

_PREFIX = re.compile(r"^lars_npu\[(\w+) (\d+)\]: (.*)$", re.S)
_SHARED = re.compile(r"^shares memory with (\w+) (\d+); the step writes (both|one)$")
_LABEL = {
    "parameter": "parameter {!r}",
    "weight": "parameter {!r}",
    "gradient": "gradient of parameter {!r}",
    "momentum_buffer": "momentum_buffer of parameter {!r}",
}


def ops() -> Any:
    """``torch.ops.lars_npu`` once ``lars_npu._C`` has registered it, else None."""
    if native() is None:
        return None
    return torch.ops.lars_npu


class TensorRefusal(Exception):
    """A tensor an operator refused, before anything was written: ``role`` ("parameter",
    "gradient", "momentum_buffer", "weight"), ``index`` in the operator's lists, ``name``, the
    parameter's (when the caller knew it), and ``raw``, the operator's own message. Raised as
    :class:`TensorError` (a ``ValueError``) or :class:`TensorTypeError` (a ``TypeError``)."""

    def __init__(
        self, message: str, role: str, index: int, name: str | None = None, raw: str = ""
    ) -> None:
        super().__init__(message)
        self.role = role
        self.index = index
        self.name = name
        self.raw = raw


class TensorError(TensorRefusal, ValueError):
    """:class:`TensorRefusal` of a tensor's shape, layout, memory or device."""


class TensorTypeError(TensorRefusal, TypeError):
    """:class:`TensorRefusal` of a tensor's dtype."""


def label(role: str, index: int, names: Sequence[str] | None) -> str:
    if names is None or not 0 <= index < len(names):
        return f"{role} {index}"
    return _LABEL.get(role, role + " of parameter {!r}").format(names[index])


def named(exc: BaseException, names: Sequence[str] | None) -> BaseException | None:
    """The operator's error ``exc`` as a :class:`TensorError`/:class:`TensorTypeError` naming
    the parameter (``names[index]``), or None when ``exc`` is not a per-tensor refusal."""
    if not isinstance(exc, (ValueError, TypeError)):
        return None
    m = _PREFIX.match(str(exc).strip())
    if m is None:
        return None
    role, index, why = m.group(1), int(m.group(2)), m.group(3).strip()
    shared = _SHARED.match(why)
    if shared is not None:
        first, second = label(shared[1], int(shared[2]), names), label(role, index, names)
        text = sharing_message(first, second, first == second, shared[3] == "both")
    else:  # "parameter 'w' has shape ...", "parameter 'w': its storage holds ..."
        text = f"{label(role, index, names)}{': ' if why.startswith('its ') else ' '}{why}"
    name = names[index] if names is not None and 0 <= index < len(names) else None
    cls = TensorTypeError if isinstance(exc, TypeError) else TensorError
    return cls(text, role, index, name, str(exc).strip())


def renamed(exc: TensorRefusal, names: Sequence[str]) -> TensorRefusal:
    """``exc`` again, naming the parameter by ``names`` (a caller that knows the names of the
    tensors it gave a backend)."""
    source: Exception = TypeError(exc.raw) if isinstance(exc, TypeError) else ValueError(exc.raw)
    out = named(source, names)
    assert isinstance(out, TensorRefusal)
    return out


def group_table(
    lr: ArrayLike, weight_decay: ArrayLike, momentum: ArrayLike, nesterov: ArrayLike
) -> torch.Tensor:
    """The operators' ``hyper`` argument: float64 (groups, 4) rows of lr, weight decay, momentum,
    nesterov."""
    return torch.from_numpy(
        np.asarray([lr, weight_decay, momentum, nesterov], dtype=np.float64).T.copy()
    )


def flags_of(adapt: np.ndarray, has_m: np.ndarray, first: np.ndarray) -> torch.Tensor:
    """The operators' ``flags`` argument from per-tensor uint8 arrays."""
    f = adapt.astype(np.uint8) * ADAPT | has_m.astype(np.uint8) * MOMENTUM
    return torch.from_numpy(f | first.astype(np.uint8) * FIRST)

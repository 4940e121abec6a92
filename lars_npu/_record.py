"""LARS's record of its last step: whether it was skipped (``found_inf``) and the trust ratio
λ of each parameter, for logging (``trust_ratios``)."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ._backends import MultiResult


class StepRecord:
    """What the last step did. After a fused step on an accelerator the skip flag stays on the
    device until someone reads it (:meth:`found_inf`): the kernels decided the skip there."""

    def __init__(self) -> None:
        self._found_inf = torch.tensor(False)
        self._unread = False  # a device-side flag not read on the host yet
        self._warned = False
        self._last: tuple[torch.Tensor | None, list[str], Any] = (None, [], [])

    def found_inf(self) -> torch.Tensor:
        """0-dim bool tensor: True when the last step was skipped (nothing written)."""
        if self._unread:
            self._unread = False
            if bool(self._found_inf):
                self.warn_skipped(stacklevel=4)
        return self._found_inf

    def record(
        self, result: MultiResult, names: list[str], adapt: Any, *, wait: bool
    ) -> bool | None:
        """Keep a step's outcome. Returns whether it was skipped, or None when the flag is on an
        accelerator and the host need not wait for it (``wait`` False: it warns when read)."""
        self._last = (result.trust_ratio, names, adapt)
        flag = result.found_inf
        if not wait and flag.device.type != "cpu":
            self._found_inf, self._unread = flag, True
            return None
        found = bool(flag)
        self._found_inf, self._unread = torch.tensor(found, device=flag.device), False
        if found:
            self.warn_skipped(stacklevel=5)
        return found

    def traced(
        self, found_inf: torch.Tensor, lam: torch.Tensor, names: list[str], adapt: Any
    ) -> None:
        """Keep the outcome of a step traced by torch.compile (lars_npu._compiled): the flag is
        not read on the host (no data-dependent branch in the graph); reading it warns."""
        self._last = (lam, names, adapt)
        self._found_inf, self._unread = found_inf, True

    def warn_skipped(self, stacklevel: int) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(
                "LARS: a gradient holds inf/nan; the step was skipped (weights, gradients and "
                "optimizer state untouched). opt.found_inf records it on every step.",
                RuntimeWarning,
                stacklevel=stacklevel,
            )

    def trust_ratios(self) -> dict[str, float]:
        """λ of every adapted parameter at the last step, by name (nan when it was skipped)."""
        lam_t, names, adapt = self._last
        if lam_t is None:
            return {}
        lam = lam_t.tolist()
        return {n: lam[i] for i, n in enumerate(names) if bool(adapt[i])}

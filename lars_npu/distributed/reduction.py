"""The step's reduction: the local Σw², Σg² of every parameter into one fp32 buffer, ONE
all-reduce of it, λ per parameter from the global sums, the in-place rewrite of the local
gradients, and the inner optimizer's step."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .._backends import MultiResult, resolve
from .._backends.base import lambdas_from_sums
from ..optim import restore_grads, save_grads
from .shards import global_shape, local_of

_SCALER_RECIPE = (
    "ShardedLARS under a GradScaler: {}. With sharded parameters the ranks must agree on every "
    "step's inf check and keep one loss scale: use "
    "torch.distributed.fsdp.sharded_grad_scaler.ShardedGradScaler (its unscale_ all-reduces the "
    "check) and call scaler.unscale_(opt) before scaler.step(opt)"
)


class ReductionMixin:
    """ShardedLARS's step. Needs, on the optimizer: the layout the ranks agreed on (``_n``,
    ``_contrib``, ``_layout_key``, ``_device``), ``process_group``, ``backend``, ``_hyper``,
    ``_undo``, ``_given_found_inf`` and LARS's ``_plan_group`` / ``_finish``."""

    process_group: Any
    backend: str
    _n: int
    _contrib: np.ndarray
    _layout_key: tuple[Any, ...] | None
    _device: torch.device
    _undo: list[torch.Tensor]
    _given_found_inf: torch.Tensor | None
    param_groups: list[dict[str, Any]]
    state: Any
    _gather: Any  # LARS._gather

    def _step_device(self) -> torch.device:
        """The device of the step's buffer: the first parameter's, in any group (the layout check
        made sure they share one; read each step, in case the parameters were moved since), else
        the one the last layout check recorded (the collective's, for a layout without
        parameters). Never raises: the error path's NaN all-reduce depends on it."""
        with contextlib.suppress(Exception):
            for group in self.param_groups:
                for p in group["params"]:
                    return local_of(p).device
        return self._device

    def _sharded_step(self, loss: Any) -> Any:
        try:
            return self._sharded_step_checked(loss)
        except BaseException:
            # GradScaler deletes what it set (grad_scale, found_inf) only after a step returns:
            # a refused step must not leave them for the next one.
            self.__dict__.pop("grad_scale", None)
            self._given_found_inf = None
            raise

    def _sharded_step_checked(self, loss: Any) -> Any:
        # GradScaler (this class has _step_supports_amp_scaling) calls step() on EVERY rank,
        # with found_inf set (and grad_scale: None when the user already unscaled). Each rank's
        # flag joins the step's one all-reduce, so every rank skips together, and scalers that
        # disagree (their scales would diverge) are a clear error on every rank.
        scaled = self._given_found_inf is not None
        local_inf = scaled and bool(self._given_found_inf)
        extra = 1 if scaled else 0
        try:
            if scaled and self.__dict__.get("grad_scale") is not None:
                raise ValueError(_SCALER_RECIPE.format(
                    "the gradients are still scaled: GradScaler.step without unscale_"
                ))  # fmt: skip
            prep = self._prepare()
        except Exception:
            # Join the step's one collective with NaN sums, so the other ranks skip this step
            # instead of waiting for us; then report (the original error, not a later one).
            device = self._step_device()
            poison = torch.full(
                (2 * self._n + extra,), math.nan, dtype=torch.float32, device=device
            )
            with contextlib.suppress(Exception):
                dist.all_reduce(poison, group=self.process_group)
            raise
        buf, plans, slots, ws, gs, adapt, wds, lrs, names, backend, device = prep
        if scaled:
            flag = torch.tensor([1.0 if local_inf else 0.0], dtype=buf.dtype, device=buf.device)
            buf = torch.cat([buf, flag])
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.process_group)
        total = buf.to(device="cpu", dtype=torch.float64).numpy()
        n = self._n
        w_tot, g_tot = total[:n], total[n : 2 * n]
        found = not bool(np.isfinite(total).all())  # a NaN flag: a rank's checks failed
        if scaled and math.isfinite(total[-1]):
            flags = round(total[-1])
            if 0 < flags < self.world_size:  # whatever the sums say: the scales would diverge
                raise ValueError(_SCALER_RECIPE.format(
                    f"the ranks' GradScalers disagree ({flags} of {self.world_size} found inf; "
                    "every rank skipped this step)"
                ))  # fmt: skip
            found = found or flags > 0
        k = len(gs)
        if found:
            nan = torch.full((k,), math.nan, dtype=torch.float64)
            result = MultiResult(torch.tensor(True, device=device), nan)
            return self._finish(result, names, adapt, plans, loss, inner=True)
        h = self._hyper
        lam = np.ones(k)
        todo = [i for i in range(k) if adapt[i] and gs[i].numel() > 0]
        # λ of adapted parameters with no elements here (the backend reports the rest)
        empty = [i for i in range(k) if adapt[i] and gs[i].numel() == 0]
        if empty:
            se = [slots[i] for i in empty]
            lam[empty] = lambdas_from_sums(w_tot[se], g_tot[se], [wds[i] for i in empty],
                                           [lrs[i] for i in empty], h)  # fmt: skip
        saved = save_grads(gs, adapt, self._undo)  # put back if the inner step raises
        if todo:  # one backend call for every tensor (natively where the backend can)
            sl = [slots[i] for i in todo]
            try:
                lam[todo] = backend.rewrite_given_sums_(
                    [ws[i] for i in todo], [gs[i] for i in todo], w_tot[sl], g_tot[sl],
                    [wds[i] for i in todo], [lrs[i] for i in todo], h,
                )  # fmt: skip
            except BaseException:
                restore_grads(saved)
                raise
        result = MultiResult(torch.tensor(False, device=device), torch.from_numpy(lam))
        return self._finish(result, names, adapt, plans, loss, inner=True, saved=saved)

    def _prepare(self) -> tuple[Any, ...]:
        """Validate (LARS's shared gathering, on the local shards), check the parameters against
        the layout the ranks agreed on, and compute the local sums into the buffer to all-reduce.
        Writes nothing."""
        inp = self._gather(local=local_of)
        key: list[Any] = []
        for group, (_, mask) in zip(self.param_groups, inp.plans, strict=True):
            key.append((len(group["params"]), tuple(mask)))
            key.extend((id(p), local_of(p).numel(), tuple(global_shape(p) or ()))
                       for p in group["params"])  # fmt: skip
        if tuple(key) != self._layout_key:
            raise ValueError(
                "ShardedLARS: the parameters changed since their layout was verified (another "
                "parameter, a new shape or filter result); call opt.verify_layout() on every "
                "rank after changing them"
            )
        device = self._step_device()  # one device: verified
        backend = resolve(device, self.backend)
        ws, gs, adapt = inp.weights, inp.grads, inp.adapt
        sums = self._local_sums(backend, device, inp.slots, ws, gs, adapt)
        if not inp.sparse_finite() and sums.numel():  # every rank skips, as for a dense one
            sums[0] = math.nan
        return (sums, inp.plans, inp.slots, ws, gs,
                adapt, inp.wds, inp.lrs, inp.names, backend, device)  # fmt: skip

    def _local_sums(
        self,
        backend: Any,
        device: torch.device,
        slots: list[int],
        ws: list[torch.Tensor],
        gs: list[torch.Tensor],
        adapt: list[bool],
    ) -> torch.Tensor:
        """The buffer to all-reduce: fp32 ``[Σw² of every parameter | Σg² of every parameter]``
        over this rank's elements, on ``device``; 0 where this rank has no gradient or (Σw²) the
        filter excludes the parameter. A rank whose copy does not count (replicas) adds 0·x: 0
        when x is finite, nan when not, so a non-finite gradient anywhere reaches every rank.
        The sums come from the backend's ``square_sums`` (one native call on ``cpu``, one
        launch per dtype on the AscendC kernels, else once per tensor)."""
        n = self._n
        if not gs:
            return torch.zeros(2 * n, dtype=torch.float32, device=device)
        w_s, g_s = backend.square_sums(ws, gs, adapt)
        at = w_s.device
        acc = torch.float64 if at.type == "cpu" else torch.float32
        idx = torch.as_tensor(slots, dtype=torch.int64, device=at)
        c = torch.from_numpy(self._contrib[np.asarray(slots, dtype=np.int64)]).to(at, acc)
        vals = torch.zeros(2 * n, dtype=acc, device=at)
        vals[idx] = w_s.to(acc) * c
        vals[idx + n] = g_s.to(acc) * c
        buf = vals.to(torch.float32)  # beyond the fp32 range: inf, and the step is skipped
        return buf if buf.device == device else buf.to(device)
